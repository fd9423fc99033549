"""Data preparation: documents -> dedup -> train/val split -> token shards + manifest.

What it owns: the prepared-directory format (docs/ARCHITECTURE.md, "Prepared data directory"):

    DIR/manifest.json      written last, atomically: a directory without it is incomplete
    DIR/tokenizer.json     the tokenizer used
    DIR/train_000000.npy   np.save'd 1-D uint16 (vocab_size <= 65536) or uint32 arrays
    DIR/val_000000.npy

Every document is stored as [bos_id] + encode(text); documents run on across shard boundaries.

Splitting (manifest "split.method"):
  builtin    the built-in corpus: its held-out plays are validation (data/builtin.py)
  explicit   validation documents come from `val_inputs`
  documents  a keyed hash of each document's text (key = seed) sends it to validation with
             probability val_fraction: deterministic, independent of input order, streamable.
             If that leaves validation empty, the last training document moves there.
  tail       the last val_fraction of each document (cut at a newline) is validation: the
             "auto" choice when the whole input is one document (a single text file).

Exact duplicates (same normalised text) are dropped and counted; explicit validation documents
are read first, so a training copy of a validation document is the one dropped.

Streaming: memory holds one shard buffer per split, one encode batch and a 16-byte hash per
document seen. Crash safety: shards are written to a temp name and renamed; the manifest is
written last; on any error the shards of this run are removed. Re-preparing a directory that
holds a complete manifest writes new shards under fresh names, then the manifest, and only then
removes the old shards, so the directory is complete (old or new) at every moment.

What it leaves to others: reading documents (corpus.py), reading shards for training (shards.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.data.corpus import BUILTIN_PREFIX, BUILTIN_SHAKESPEARE, Corpus, Document
from twofiles.errors import BadInputError, TwofilesError

if TYPE_CHECKING:
    import numpy as np

    from twofiles.tokenizer import Tokenizer

FORMAT = "twofiles-shards"
VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")
SPLIT_CHOICES = ("auto", "documents", "tail")
ENCODE_BATCH_CHARS = 1 << 20  # text per encode_batch call: big enough to keep Rust threads busy
MAX_LISTED_SOURCES = 1000  # per split, in the manifest
# Files this module writes (and may clean up): shards, with an optional generation tag, and temps.
_SHARD_RE = re.compile(r"^(train|val)_(?:[0-9a-f]{8}_)?\d{6}\.npy$")
_TEMP_RE = re.compile(r"^\.(?:train|val|tokenizer|manifest)[^/]*\.tmp$")


@dataclass(frozen=True)
class Piece:
    split: str  # "train" or "val"
    text: str  # a whole document, or the head/tail of one (tail split)
    source: str  # the file (or builtin id) it came from


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _is_val(text: str, seed: int, val_fraction: float) -> bool:
    key = seed.to_bytes(8, "little", signed=True)
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(h, "little") / 2.0**64 < val_fraction


def tail_cut(text: str, val_fraction: float) -> int:
    """Index where the validation tail starts: the line start nearest to the last val_fraction."""
    target = len(text) - round(len(text) * val_fraction)
    before = text.rfind("\n", 0, target)
    after = text.find("\n", target)
    candidates = [i + 1 for i in (before, after) if 0 <= i < len(text) - 1]
    if not candidates:
        return target
    return min(candidates, key=lambda c: abs(c - target))


def _resolve_method(inputs: list[str], val_inputs: list[str] | None, split: str) -> str:
    if split not in SPLIT_CHOICES:
        raise TwofilesError(f"split must be one of {', '.join(SPLIT_CHOICES)}, not {split!r}")
    if val_inputs:
        if split == "tail":
            raise TwofilesError("--split tail and explicit validation inputs exclude each other")
        return "explicit"
    if split == "auto" and any(i.startswith(BUILTIN_PREFIX) for i in inputs):
        return "builtin"
    return split  # "auto" is decided on the data: see split_documents


def split_documents(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    val_inputs: Iterable[str | os.PathLike[str]] | None = None,
    val_fraction: float = 0.1,
    split: str = "auto",
    seed: int = 1337,
    text_field: str = "text",
    skip_bad: bool = False,
    stats: dict[str, Any] | None = None,
) -> Iterator[Piece]:
    """Deduplicated documents tagged with their split: the single source of truth for which text
    is validation (tokenizer training uses it too, so it never sees validation text).
    `stats` (if given) is filled with the split method and counts as the stream is consumed."""
    sources = [str(i) for i in inputs]
    val_list = [str(i) for i in val_inputs] if val_inputs else None
    if not 0.0 <= val_fraction < 1.0:
        raise TwofilesError(f"val fraction must be in [0, 1), not {val_fraction}")
    method = _resolve_method(sources, val_list, split)
    st = stats if stats is not None else {}
    st.update(method=method, documents_read=0, duplicates=0, skipped=0, skipped_by_reason={})
    seen: set[bytes] = set()
    corpora: list[Corpus] = []
    skipped: Counter = Counter()

    def read(corpus: Corpus) -> Iterator[Document]:
        corpora.append(corpus)
        for doc in corpus:
            st["documents_read"] += 1
            d = _digest(doc.text)
            if d in seen:
                st["duplicates"] += 1
                continue
            seen.add(d)
            yield doc

    def finish() -> None:
        for c in corpora:
            skipped.update(c.stats.skipped)
        st["skipped"] = sum(skipped.values())
        st["skipped_by_reason"] = dict(sorted(skipped.items()))

    train_docs = read(Corpus(sources, text_field=text_field, skip_bad=skip_bad))
    if method == "explicit" and val_list:
        for doc in read(Corpus(val_list, text_field=text_field, skip_bad=skip_bad)):
            yield Piece("val", doc.text, doc.source)
    if method == "auto":
        head = list(itertools.islice(train_docs, 2))
        method = st["method"] = "tail" if len(head) == 1 else "documents"
        train_docs = itertools.chain(head, train_docs)

    if method == "tail":
        for doc in train_docs:
            cut = tail_cut(doc.text, val_fraction) if val_fraction > 0 else len(doc.text)
            if doc.text[:cut].strip():
                yield Piece("train", doc.text[:cut], doc.source)
            if doc.text[cut:].strip():
                yield Piece("val", doc.text[cut:], doc.source)
    elif method == "documents":
        pending: Document | None = None  # held back so an empty validation split can take it
        n_train = n_val = 0
        for doc in train_docs:
            if _is_val(doc.text, seed, val_fraction):
                n_val += 1
                yield Piece("val", doc.text, doc.source)
                continue
            if pending is not None:
                n_train += 1
                yield Piece("train", pending.text, pending.source)
            pending = doc
        if pending is not None:
            to_val = n_val == 0 and n_train > 0 and val_fraction > 0
            yield Piece("val" if to_val else "train", pending.text, pending.source)
    else:  # explicit, builtin
        from twofiles.data.builtin import is_validation

        prefix = BUILTIN_SHAKESPEARE + "/"
        for doc in train_docs:
            is_val = (
                method == "builtin"
                and doc.source.startswith(prefix)
                and is_validation(doc.source[len(prefix) :])
            )
            if method == "builtin" and not doc.source.startswith(prefix):
                is_val = _is_val(
                    doc.text, seed, val_fraction
                )  # other sources mixed with the builtin one
            yield Piece("val" if is_val else "train", doc.text, doc.source)
    finish()


def train_texts(inputs: Iterable[str | os.PathLike[str]], **split_options: Any) -> Iterator[str]:
    """The training-split texts of `inputs` under the same options as `prepare` (for training a
    tokenizer that never sees validation text)."""
    return (p.text for p in split_documents(inputs, **split_options) if p.split == "train")


# ---------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_shard(path: Path, arr: np.ndarray) -> None:
    import numpy as np

    _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


class _ShardWriter:
    """Fills fixed-size buffers for one split and writes each full one as a shard."""

    def __init__(
        self, out: Path, split: str, dtype: str, shard_tokens: int, tag: str, written: list[Path]
    ) -> None:
        import numpy as np

        self.out, self.split, self.tag, self.written = out, split, tag, written
        self.buf = np.empty(shard_tokens, dtype=dtype)
        self.fill = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = self.documents = self.bytes = 0
        self.sources: dict[str, None] = {}

    def add(self, ids: list[int], bos_id: int, n_bytes: int, source: str) -> None:
        import numpy as np

        self.documents += 1
        self.bytes += n_bytes
        if len(self.sources) <= MAX_LISTED_SOURCES:
            self.sources.setdefault(source, None)
        self._put(np.array([bos_id], dtype=self.buf.dtype))
        self._put(np.asarray(ids, dtype=self.buf.dtype))

    def _put(self, arr: np.ndarray) -> None:
        while len(arr):
            n = min(len(arr), len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + n] = arr[:n]
            self.fill += n
            arr = arr[n:]
            if self.fill == len(self.buf):
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.split}_{self.tag}{len(self.shards):06d}.npy"
        path = self.out / name
        self.written.append(path)
        _write_shard(path, self.buf[: self.fill])
        self.shards.append({"file": name, "tokens": int(self.fill)})
        self.tokens += self.fill
        self.fill = 0

    def summary(self) -> dict[str, Any]:
        sources = list(self.sources)
        out = {
            "shards": self.shards,
            "tokens": int(self.tokens),
            "documents": self.documents,
            "bytes": self.bytes,
        }
        out["sources"] = sources[:MAX_LISTED_SOURCES]
        if len(sources) > MAX_LISTED_SOURCES:
            out["sources_truncated"] = True
        return out


def _read_complete_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return load_manifest(out, check_files=False)
    except TwofilesError:
        return None


def _manifest_files(manifest: dict[str, Any] | None) -> set[str]:
    if not manifest:
        return set()
    return {s["file"] for sp in manifest.get("splits", {}).values() for s in sp.get("shards", [])}


def _remove_leftovers(out: Path, keep: set[str]) -> None:
    """Shards and temp files of an interrupted earlier run (not in the complete manifest)."""
    for p in out.iterdir():
        if (
            (_SHARD_RE.match(p.name) or _TEMP_RE.match(p.name))
            and p.name not in keep
            and p.is_file()
        ):
            p.unlink(missing_ok=True)


def prepare(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    tokenizer: Tokenizer,
    *,
    val_inputs: Iterable[str | os.PathLike[str]] | None = None,
    val_fraction: float = 0.1,
    split: str = "auto",
    seed: int = 1337,
    text_field: str = "text",
    skip_bad: bool = False,
    shard_tokens: int = 2**24,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `inputs` into `out_dir` (see the module docstring). Returns the manifest."""
    from tqdm import tqdm

    sources = [str(i) for i in inputs]
    val_list = [str(i) for i in val_inputs] if val_inputs else []
    if shard_tokens < 1:
        raise TwofilesError(f"shard tokens must be positive, not {shard_tokens}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TwofilesError(f"{out}: exists and is not a directory")
    created_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    old = _read_complete_manifest(out)
    old_files = _manifest_files(old)
    _remove_leftovers(out, keep=old_files)
    # Fresh shard names when a complete old manifest exists, so it stays valid until replaced.
    tag = ""
    if old_files:
        while any(f.startswith(("train_" + tag, "val_" + tag)) for f in old_files):
            tag = secrets.token_hex(4) + "_"
    dtype = "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"
    bos = tokenizer.bos_id
    written: list[Path] = []
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens, tag, written) for s in SPLITS}
    stats: dict[str, Any] = {}
    total = _total_bytes(sources + val_list)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="prepare",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        pieces = split_documents(
            sources, val_inputs=val_list or None, val_fraction=val_fraction, split=split, seed=seed,
            text_field=text_field, skip_bad=skip_bad, stats=stats,
        )  # fmt: skip
        batch: list[Piece] = []
        chars = 0

        def flush_batch() -> None:
            for piece, ids in zip(batch, tokenizer.encode_batch([p.text for p in batch])):
                n_bytes = len(piece.text.encode("utf-8"))
                writers[piece.split].add(ids, bos, n_bytes, piece.source)
                bar.update(n_bytes)
            bar.set_postfix(
                tokens=f"{writers['train'].tokens + writers['train'].fill:,}", refresh=False
            )
            batch.clear()

        for piece in pieces:
            batch.append(piece)
            chars += len(piece.text)
            if chars >= ENCODE_BATCH_CHARS:
                flush_batch()
                chars = 0
        flush_batch()
        for w in writers.values():
            w.flush()
        if writers["train"].documents == 0:
            raise BadInputError(
                f"no training documents in {', '.join(sources)} (read {stats.get('documents_read', 0)}, "
                f"{stats.get('duplicates', 0)} duplicates, {stats.get('skipped', 0)} skipped)"
            )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": TOKENIZER,
            "dtype": dtype,
            "vocab_size": tokenizer.vocab_size,
            "bos_id": bos,
            "splits": {s: w.summary() for s, w in writers.items()},
            "sources": sources,
            "val_sources": val_list,
            "split": {"method": stats["method"], "seed": seed, "val_fraction": val_fraction},
            "stats": {
                k: stats[k]
                for k in ("documents_read", "duplicates", "skipped", "skipped_by_reason")
            },
            "text_field": text_field,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if stats["method"] == "builtin":
            from twofiles.data.builtin import SHAKESPEARE_VALIDATION

            manifest["split"]["held_out"] = list(SHAKESPEARE_VALIDATION)
        tok_json = tokenizer.to_json().encode("utf-8")
        _atomic_write(out / TOKENIZER, lambda f: f.write(tok_json))
        _atomic_write(
            out / MANIFEST,
            lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode("utf-8")),
        )
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        _remove_leftovers(out, keep=old_files)
        if created_dir and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        bar.close()
    # The new manifest is in place: the old run's shards are now unreferenced.
    new_files = _manifest_files(manifest)
    for name in old_files - new_files:
        (out / name).unlink(missing_ok=True)
    return manifest


def _total_bytes(inputs: list[str]) -> int | None:
    """Input size for the progress bar, when file sizes approximate text bytes (not Parquet)."""
    total = 0
    try:
        for inp in inputs:
            for f in Corpus([inp]).files():
                if f.startswith(BUILTIN_PREFIX) or f.endswith(".parquet") or not os.path.isfile(f):
                    return None
                total += os.path.getsize(f)
    except TwofilesError:
        return None
    return total


def load_manifest(directory: str | os.PathLike[str], *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of a prepared directory, with clear errors when it is missing or incomplete."""
    d = Path(directory)
    if not d.is_dir():
        raise TwofilesError(f"{d}: no such directory (prepare one with `twofiles data prepare`)")
    path = d / MANIFEST
    if not path.is_file():
        raise BadInputError(
            "no manifest.json: not a prepared directory, or its `twofiles data prepare` was interrupted (run it again)",
            path=str(d),
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"manifest is not valid JSON ({e})", path=str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInputError(f"not a {FORMAT} manifest", path=str(path))
    if manifest.get("version") != VERSION:
        raise BadInputError(
            f"manifest version {manifest.get('version')} is not supported (expected {VERSION})",
            path=str(path),
        )
    for key in ("dtype", "vocab_size", "bos_id", "splits", "tokenizer"):
        if key not in manifest:
            raise BadInputError(f"manifest lacks '{key}'", path=str(path))
    if check_files:
        for name in [manifest["tokenizer"]] + sorted(_manifest_files(manifest)):
            if not (d / name).is_file():
                raise BadInputError(
                    f"file {name} listed in the manifest is missing", path=str(path)
                )
    return manifest
