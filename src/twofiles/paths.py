"""Files on disk: where twofiles keeps them, how it writes them, and the header it reads first.

What it owns: the cache directory (`cache_dir`: pulled models, the web UI's databases), the
default databases the web UI writes and the `arena` / `feedback` verbs read (`default_db`: one
function decides each, so a vote cast in the browser is what `twofiles arena leaderboard` shows
with no --db), the one atomic write (`atomic_write_bytes`: temp file, fsync, rename, so a reader
or a crash never sees half a file), and the safetensors header every model and adapters file
starts with (`read_metadata`, validated enough to give clear errors before any tensor is read).
It sits at the bottom of the package so that anything that writes a file or sniffs a model file
(the tokenizer, plots, the parameters file) can use it without importing upward. What it leaves
to others: what the files hold (artifact.py, lora.py, formats/), opening and creating the
databases (the stores open them on first use).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from twofiles.errors import BadInputError

DbKind = Literal["arena", "feedback"]

# The most header a safetensors file may declare before we call it damaged: the metadata of a
# twofiles model (config, tokenizer JSON, chat template) is a few MB; 100 MB is far beyond it.
MAX_HEADER_BYTES = 100 * 2**20


def cache_dir() -> Path:
    """Pulled models and the default databases: $TWOFILES_CACHE, else ~/.cache/twofiles (not
    created here)."""
    env = os.environ.get("TWOFILES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twofiles"


def default_db(kind: DbKind) -> Path:
    """The database the web UI and the verbs share when none is named: $TWOFILES_<KIND>_DB,
    else <cache_dir>/<kind>.sqlite."""
    if kind not in ("arena", "feedback"):
        raise ValueError(f"unknown database kind {kind!r}: arena or feedback")
    env = os.environ.get(f"TWOFILES_{kind.upper()}_DB")
    return Path(env).expanduser() if env else cache_dir() / f"{kind}.sqlite"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a refused rename leaves no temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks: a model file can be GBs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike[str], what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a JSONL file: a missing file, bytes
    that are not UTF-8 and invalid JSON are BadInputErrors naming the file (and line). `what`
    names the file in the missing-file error ("conversations file")."""
    path = str(path)
    if not os.path.isfile(path):
        raise BadInputError(f"no such {what}", path=path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInputError("not UTF-8 text", path=path, line=lineno) from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(
                    f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=lineno
                ) from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors header metadata, validated enough to give clear errors."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInputError("file too short to be safetensors", path=path)
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, MAX_HEADER_BYTES):
                raise BadInputError(f"bad safetensors header length {n}", path=path)
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise BadInputError("no such model file", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"safetensors header is not valid JSON ({e})", path=path) from None
    if not isinstance(header, dict):
        raise BadInputError("safetensors header is not a JSON object", path=path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise BadInputError("safetensors __metadata__ is not an object", path=path)
    return meta


__all__ = ["DbKind", "atomic_write_bytes", "cache_dir", "default_db", "read_jsonl", "read_metadata"]
