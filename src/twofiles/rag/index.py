"""The retrieval index on disk, its (re)building and its search.

Store. The DB path is one SQLite file (tables meta, files, chunks: every chunk's text, file and
position) and beside it one float32 matrix, `DB.vectors-GEN.npy`, one unit-length row per chunk in
ascending chunk id; meta names the generation GEN it pairs with. Why not a vector extension
(sqlite-vec, sqlite-vss): it is a native library to build and load per platform, and at the scale
an embedded index serves (up to ~10^5-10^6 chunks) one matrix product is exact and fast enough
(a few milliseconds per 10^5 x 384 rows); the matrix loads with np.load(allow_pickle=False).

Updates are atomic. A (re)index reads, chunks and embeds first, touching nothing; then, in one
SQLite transaction, it rewrites the rows of the files that changed, writes the new matrix under a
new generation name (temp file + rename) and switches meta's generation; the commit is the switch.
A run killed at any moment (kill -9 included) leaves the previous index whole: SQLite rolls an
unfinished transaction back and the old matrix is only deleted after the commit. A first index is
built in a temp file renamed to DB at the end.

Re-indexing is incremental: a file whose mtime and size are unchanged is skipped, else its sha256
decides; files that vanished from disk (or from a folder being indexed) lose their chunks. Chunks
of unchanged files keep their ids and vectors. A new embedder or chunk size re-embeds everything.

Search. BM25 (bm25.py) and dense cosine (embed.py) each score every chunk; hybrid fuses the two
rankings by reciprocal rank (Cormack, Clarke & Büttcher 2009): each method's top HYBRID_TOP_N
chunks get 1 / (HYBRID_RRF_K + rank) from it, summed over the two, which needs no calibration
between BM25's unbounded scores and cosines. The constants were chosen on the dev split of the
built-in questions (collection.py), 78 variants compared by recall@5 then MRR@10: RRF with k in
{1, 5, 10, 20, 60}, the dense list weighted 0.5, 1 or 2, each list cut to 20, 50, 100 or not at
all, and a convex combination of per-query min-max or z-scored scores, alpha 0.1-0.9. k = 1 won:
a chunk first in either list stays near the top, so BM25's exact hits on numbers and names and
dense's paraphrase hits both survive, where k = 60 flattens ranks until a chunk middling in both
lists outranks one that a single method puts first. The cut to 50 left recall@5 as it was and
raised MRR@10 (0.833 -> 0.848): a 51st place is no evidence for a chunk. On the held-out test
split, recall@5 0.920 against dense 0.844, BM25 0.787 and k = 60's 0.807; it keeps BM25's
keyed questions and stays 0.1 below dense on paraphrased ones (BENCHMARKS.md, "Retrieval"). The
cut also keeps fusion cheap on a large index: only 50 rows per list are sorted. Queries use the
embedder the index was built with, by the name meta records.

Beyond one machine. RagIndex is the interface (search, passage, info); a server-backed index keeps
it: chunks and their metadata become rows (pgvector) or points with payloads (Qdrant), the matrix
product becomes the server's (approximate) nearest-neighbour query, BM25 becomes its full-text
index (Postgres tsvector, Qdrant sparse vectors), and reciprocal-rank fusion stays here on the two
ranked lists; build_index's file bookkeeping and atomic switch map to upserts and deletes by file
inside one transaction (pgvector) or by a collection alias swap (Qdrant).
"""

from __future__ import annotations

import glob
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twofiles.errors import BadInputError

if TYPE_CHECKING:
    from twofiles.rag.bm25 import BM25
    from twofiles.rag.embed import Embedder

FORMAT = "twofiles-rag"
VERSION = "1"
RRF_K = 60  # reciprocal-rank fusion's constant as Cormack et al. 2009 tuned it on TREC
HYBRID_RRF_K = 1  # hybrid's constant, chosen on the built-in dev split (module docstring)
HYBRID_TOP_N = 50  # each method's candidates that hybrid fuses (module docstring)
FUSION_METHODS = ("rrf", "convex")
NORMS = ("minmax", "z")
MODES = ("hybrid", "bm25", "dense")
EMBED_BATCH = 64  # chunks per progress step while embedding
BUILTIN = "builtin"  # the PATH that names the shipped collection

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    path TEXT PRIMARY KEY,      -- absolute path: what identifies a file between runs
    source TEXT NOT NULL,       -- the name citations show (as the user named it)
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    chunks INTEGER NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- stable: never reused, kept while its file is unchanged
    file TEXT NOT NULL REFERENCES files(path),
    source TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    location TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX chunks_by_file ON chunks(file);
"""


@dataclass(frozen=True)
class Passage:
    chunk_id: int  # stable id of the chunk in its index
    source: str  # the indexed file as the user named it, or "file.jsonl:LINE" for JSONL records
    start: int  # character offsets of the chunk in the source's extracted text
    end: int
    text: str  # the chunk's text
    score: float  # the fused (or single-method) score used for ranking, higher is better
    # each method's score: "bm25" and/or "dense"; hybrid adds its fusion's, "rrf" (or "convex")
    scores: dict[str, float] = field(default_factory=dict)
    location: str = ""  # human-readable position: "lines 12-30", "page 3", "record 7"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fusion:
    """How hybrid search turns BM25's and dense's scores of every chunk into one score."""

    method: str = "rrf"  # "rrf": sum of weight / (k + rank); "convex": weighted normalised scores
    k: int = RRF_K  # rrf: the rank offset; small k lets the top ranks dominate
    bm25_weight: float = 1.0  # rrf: each method's weight
    dense_weight: float = 1.0
    top_n: int | None = None  # rrf: each method contributes only its top N (None: its whole list)
    alpha: float = 0.5  # convex: dense's share, 1 - alpha is BM25's
    norm: str = "minmax"  # convex: per query, "minmax" to [0, 1] or "z" (zero mean, unit std)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS or self.norm not in NORMS:
            raise BadInputError(f"unknown fusion {self.method!r}/{self.norm!r}")
        if self.k < 0 or (self.top_n is not None and self.top_n < 1):
            raise BadInputError(f"fusion needs k >= 0 and top_n >= 1, not {self.k}/{self.top_n}")
        if min(self.bm25_weight, self.dense_weight) < 0:
            raise BadInputError("fusion's weights cannot be negative")
        if not 0.0 <= self.alpha <= 1.0:
            raise BadInputError(f"fusion's alpha is in [0, 1], not {self.alpha}")

    def describe(self) -> str:
        if self.method == "convex":
            return f"convex {self.norm} alpha={self.alpha:g}"
        w = (
            ""
            if self.bm25_weight == self.dense_weight == 1.0
            else f" w={self.bm25_weight:g}:{self.dense_weight:g}"
        )
        n = "" if self.top_n is None else f" top{self.top_n}"
        return f"rrf k={self.k}{w}{n}"


DEFAULT_FUSION = Fusion("rrf", k=HYBRID_RRF_K, top_n=HYBRID_TOP_N)


def _normalise(s: np.ndarray, norm: str) -> np.ndarray:
    s = s.astype(np.float64)
    if norm == "minmax":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)
    std = s.std()
    return (s - s.mean()) / std if std > 0 else np.zeros_like(s)


def _ranked(s: np.ndarray, n: int | None, positive_only: bool) -> np.ndarray:
    """Rows best first, ties in row order, the first n of them if n is given; positive_only keeps
    only rows scoring above 0. Equal to a stable argsort cut at n, without sorting every row when
    n is small (a partition finds the n-th score, and only the rows reaching it are sorted)."""
    rows = np.flatnonzero(s > 0) if positive_only else np.arange(len(s))
    if n is not None and n < len(rows):
        nth = np.partition(-s[rows], n - 1)[n - 1]
        rows = rows[-s[rows] <= nth]  # the n best and every row tied with the n-th
    order = rows[np.argsort(-s[rows], kind="stable")]
    return order if n is None else order[:n]


def fuse(bm25: np.ndarray, dense: np.ndarray, fusion: Fusion = DEFAULT_FUSION) -> np.ndarray:
    """One hybrid score per chunk from BM25's and dense's scores of every chunk, higher is better.
    A chunk without any query word is not in BM25's list: it gets no BM25 share under rrf."""
    if fusion.method == "convex":
        return fusion.alpha * _normalise(dense, fusion.norm) + (1 - fusion.alpha) * _normalise(
            bm25, fusion.norm
        )
    fused = np.zeros(len(bm25), dtype=np.float64)
    for s, weight, positive_only in (
        (bm25, fusion.bm25_weight, True),
        (dense, fusion.dense_weight, False),
    ):
        order = _ranked(s, fusion.top_n, positive_only)
        fused[order] += weight / (fusion.k + np.arange(1, len(order) + 1))
    return fused


_EMBEDDERS: dict[tuple[str, str | None], Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()  # a server's threads share one copy of the weights


def get_embedder(name: str, device: str | None = None) -> Embedder:
    """One loaded embedder per (name, device) per process: an index opened twice, or built and
    then queried, loads the weights once."""
    from twofiles.rag.embed import load_embedder

    key = (name, device)
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = load_embedder(name, device=device)
        return _EMBEDDERS[key]


def _vectors_path(db: Path, gen: str) -> Path:
    return db.with_name(f"{db.name}.vectors-{gen}.npy")


def _connect_existing(db: Path) -> sqlite3.Connection:
    """A connection to an existing database, never creating one. Read-write where allowed: a
    build killed mid-transaction leaves a hot journal that only a writer can roll back."""
    try:
        return sqlite3.connect(f"file:{db}?mode=rw", uri=True)
    except sqlite3.OperationalError:  # a read-only file or folder
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _read_meta(db: Path) -> dict[str, str]:
    """meta of an existing index; BadInputError naming the path for anything else."""
    if not db.is_file():
        raise BadInputError(
            "no such index (build one with `twofiles rag index PATH... --db DB`)", path=str(db)
        )
    try:
        con = _connect_existing(db)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError:
        raise BadInputError("not a twofiles index (not an index database)", path=str(db)) from None
    if meta.get("format") != FORMAT:
        raise BadInputError("not a twofiles index (no twofiles-rag metadata)", path=str(db))
    if meta.get("version") != VERSION:
        raise BadInputError(
            f"index format version {meta.get('version')} (this twofiles reads {VERSION}): index again",
            path=str(db),
        )
    return meta


class RagIndex:
    """An index loaded for search: every chunk's text and position and the matrix, in memory.
    Opened by open_index; a context manager."""

    def __init__(self, db: Path, *, device: str | None = None) -> None:
        self.db = db
        self.meta = _read_meta(db)
        self.device = device
        con = _connect_existing(db)
        try:
            rows = con.execute(
                "SELECT id, source, start_char, end_char, location, text FROM chunks ORDER BY id"
            ).fetchall()
            self.n_files = con.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        finally:
            con.close()
        self.ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.rows = rows
        self.row_of = {r[0]: i for i, r in enumerate(rows)}
        vec = _vectors_path(db, self.meta["generation"])
        try:
            self.vectors = np.load(vec, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(
                f"the index's vectors are unreadable ({e}): index again", path=str(vec)
            ) from None
        dim = int(self.meta["dim"])
        if self.vectors.dtype != np.float32 or self.vectors.shape != (len(rows), dim):
            raise BadInputError(
                f"vectors {self.vectors.shape} {self.vectors.dtype} do not match {len(rows)} chunks x {dim}: index again",
                path=str(vec),
            )
        self._bm25: BM25 | None = None

    def __enter__(self) -> RagIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing stays open: the database is read whole at open."""
        self._bm25 = None

    @property
    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "db": str(self.db),
            "files": self.n_files,
            "chunks": len(self.rows),
            "embedder": m["embedder"],
            "dim": int(m["dim"]),
            "chunk_tokens": int(m["chunk_tokens"]),
            "overlap": int(m["overlap"]),
            "created": m["created"],
            "updated": m["updated"],
        }

    def _passage(self, i: int, score: float, scores: dict[str, float]) -> Passage:
        cid, source, start, end, location, text = self.rows[i]
        return Passage(cid, source, start, end, text, score, scores, location)

    def passage(self, chunk_id: int) -> Passage:
        if chunk_id not in self.row_of:
            raise KeyError(chunk_id)
        return self._passage(self.row_of[chunk_id], 0.0, {})

    def bm25_scores(self, query: str) -> np.ndarray:
        bm25 = self._bm25  # built on first use; two threads racing here build equal copies
        if bm25 is None:
            from twofiles.rag.bm25 import BM25

            bm25 = self._bm25 = BM25([r[5] for r in self.rows])
        return bm25.scores(query)

    def dense_scores(self, query: str) -> np.ndarray:
        q = get_embedder(self.meta["embedder"], self.device).embed([query])[0]
        return self.vectors @ q

    def search(
        self, query: str, k: int = 5, mode: str = "hybrid", fusion: Fusion = DEFAULT_FUSION
    ) -> list[Passage]:
        """The k best chunks for the query, best first; `fusion` is how hybrid combines the two
        methods (the measured default unless told)."""
        if mode not in MODES:
            raise BadInputError(f"unknown search mode {mode!r}: one of {', '.join(MODES)}")
        if k < 1:
            raise BadInputError(f"k must be at least 1, not {k}")
        if not self.rows or not query.strip():
            return []
        per: dict[str, np.ndarray] = {}
        if mode in ("bm25", "hybrid"):
            per["bm25"] = self.bm25_scores(query)
        if mode in ("dense", "hybrid"):
            per["dense"] = self.dense_scores(query)
        if mode != "hybrid":
            s = per[mode]
            # ties in chunk order; BM25 returns only chunks with a matching word
            top = _ranked(s, k, positive_only=mode == "bm25")
            return [self._passage(int(i), float(s[i]), {mode: float(s[i])}) for i in top]
        fused = fuse(per["bm25"], per["dense"], fusion)
        top = _ranked(fused, k, positive_only=False)
        return [
            self._passage(
                int(i),
                float(fused[i]),
                {
                    "bm25": float(per["bm25"][i]),
                    "dense": float(per["dense"][i]),
                    fusion.method: float(fused[i]),
                },
            )
            for i in top
        ]


def open_index(db: str | os.PathLike[str], *, device: str | None = None) -> RagIndex:
    """The index at `db`, loaded for search; BadInputError naming the path if it is not one."""
    return RagIndex(Path(db), device=device)


def _sha256(path: Path) -> str:
    from twofiles.rag.embed import sha256_file

    return sha256_file(path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _embedder_name(embedder: str) -> str:
    from twofiles.rag.embed import MINILM

    if embedder != MINILM and os.path.exists(embedder):
        return os.path.abspath(embedder)  # queries may run from another directory
    return embedder


def _input_tokens(emb: Embedder) -> int | None:
    """The most tokens of text the embedder reads: a longer chunk would be embedded cut short."""
    from twofiles.rag.embed import MINILM, MINILM_MAX_TOKENS

    if emb.name == MINILM:
        return MINILM_MAX_TOKENS - 2  # its 256 include [CLS] and [SEP]
    return getattr(emb, "max_tokens", None)


def _check_writable(db: Path) -> None:
    """BadInputError naming `db` if its folder cannot be made or written to."""
    folder = db.parent.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise BadInputError(f"cannot make the index's folder: {folder} is a file", path=str(db))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"the index's folder {folder} is not writable", path=str(db))


def build_index(
    paths: Sequence[str],
    db: str | os.PathLike[str],
    *,
    embedder: str = "minilm",
    chunk_tokens: int = 256,
    overlap: int = 32,
    progress: bool = True,
    field: str = "text",
    device: str | None = None,
) -> dict[str, Any]:
    """Index the files `paths` name (files, folders, or "builtin") into `db`, incrementally.
    A file inside a folder that cannot be read (not UTF-8, a broken PDF or JSONL) is skipped and
    listed under "unreadable"; a file named directly stops the build with a BadInputError.
    Returns the summary: added/updated/removed/unchanged files, skipped (hidden, binary, unreadable), chunks
    (total, new), embedder, seconds (all of it), chunks_per_s (new chunks over the time spent
    reading, chunking, embedding and writing: the embedder's loading left out)."""
    from twofiles.rag.chunk import chunk_spans
    from twofiles.rag.collection import builtin_collection_dir
    from twofiles.rag.extract import documents, walk

    t0 = time.perf_counter()
    if not paths:
        raise BadInputError("nothing to index: name files or folders (or builtin)")
    if chunk_tokens < 8 or overlap < 0 or overlap >= chunk_tokens:
        raise BadInputError(
            f"--chunk-tokens must be at least 8 and --overlap in [0, chunk tokens), not {chunk_tokens}/{overlap}"
        )
    db = Path(db)
    _check_writable(db)  # before any reading or embedding, which can take minutes
    old_meta = _read_meta(db) if db.exists() else None
    named = [(p, builtin_collection_dir()) if p == BUILTIN else (p, Path(p)) for p in paths]
    found = walk(named)
    folders = [p.resolve() for _, p in named if p.is_dir()]
    name = _embedder_name(embedder)
    settings = {
        "embedder": name,
        "chunk_tokens": str(chunk_tokens),
        "overlap": str(overlap),
        "field": field,
    }
    rebuild = old_meta is not None and any(old_meta.get(k) != v for k, v in settings.items())

    old_files: dict[str, tuple[int, int, str]] = {}
    if old_meta is not None and not rebuild:
        con = _connect_existing(db)
        try:
            for path, mtime_ns, size, sha in con.execute(
                "SELECT path, mtime_ns, size, sha256 FROM files"
            ):
                old_files[path] = (mtime_ns, size, sha)
        finally:
            con.close()

    # what changed: (mtime, size) first, the content hash when they differ
    walked = {str(p): (p, source) for p, source in found.files}
    unchanged: list[str] = []
    touched: dict[str, tuple[int, int]] = {}  # same content, new stat
    changed: list[tuple[str, str, int, int, str]] = []  # path, source, mtime_ns, size, sha256
    for key, (p, source) in walked.items():
        st = p.stat()
        old = old_files.get(key)
        if old is not None and (old[0], old[1]) == (st.st_mtime_ns, st.st_size):
            unchanged.append(key)
            continue
        sha = _sha256(p)
        if old is not None and old[2] == sha:
            unchanged.append(key)
            touched[key] = (st.st_mtime_ns, st.st_size)
            continue
        changed.append((key, source, st.st_mtime_ns, st.st_size, sha))
    removed = [
        f
        for f in old_files
        if f not in walked
        and (not os.path.exists(f) or any(Path(f).is_relative_to(d) for d in folders))
    ]
    updated = [c for c in changed if c[0] in old_files]
    per_file: dict[str, int] = {}  # chunks per file read this run
    unreadable: list[str] = []  # a folder's files that cannot be read: skipped, with the reason

    def summary(chunks: int, new: int, work: float) -> dict[str, Any]:
        return {
            "db": str(db),
            "added": sum(1 for c in changed if c[0] in per_file and c[0] not in old_files),
            "updated": sum(1 for c in updated if c[0] in per_file),
            "removed": len(removed),
            "unchanged": len(unchanged),
            "rebuilt": rebuild,
            "skipped": {
                "hidden": found.hidden,
                "binary": found.binary,
                "unreadable": len(found.unreadable) + len(unreadable),
            },
            "unreadable": found.unreadable + unreadable,
            "files": len(walked)
            - len(unreadable)
            + sum(1 for f in old_files if f not in walked and f not in removed),
            "chunks": chunks,
            "new_chunks": new,
            "embedder": name,
            "seconds": round(time.perf_counter() - t0, 3),
            "chunks_per_s": round(new / work, 1) if new else 0.0,
        }

    if old_meta is not None and not rebuild and not changed and not removed:
        # nothing to read or embed: remember new stats of unchanged content, keep the rest as is
        con = _connect_existing(db)
        try:
            with con:
                con.executemany(
                    "UPDATE files SET mtime_ns = ?, size = ? WHERE path = ?",
                    [(m, z, key) for key, (m, z) in touched.items()],
                )
            n = con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        finally:
            con.close()
        return summary(n, 0, 0.0)

    emb = get_embedder(name, device)
    budget = min(chunk_tokens, _input_tokens(emb) or chunk_tokens)
    t_work = time.perf_counter()  # indexing speed leaves out loading the embedder
    # (file, source, start, end, location, text) per new chunk
    new_chunks: list[tuple[str, str, int, int, str, str]] = []
    it: Any = changed
    if progress and changed:
        from tqdm.auto import tqdm

        it = tqdm(changed, desc="reading", unit="file")
    for key, source, _, _, _ in it:
        try:
            docs = list(documents(Path(key), source, field=field))
        except BadInputError as e:
            if Path(key) not in found.in_folders:
                raise  # a file the user named must be readable
            unreadable.append(str(e))
            continue
        chunks = [
            (key, doc.source, s, e, doc.locate(s, e), doc.text[s:e])
            for doc in docs
            for s, e in chunk_spans(
                doc.text, emb.count_tokens, chunk_tokens=budget, overlap=min(overlap, budget - 1)
            )
        ]
        new_chunks.extend(chunks)
        per_file[key] = len(chunks)
    vectors = np.zeros((len(new_chunks), emb.dim), dtype=np.float32)
    bar: Any = None
    if progress and new_chunks:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(new_chunks), desc="embedding", unit="chunk")
    for s in range(0, len(new_chunks), EMBED_BATCH):
        part = [c[5] for c in new_chunks[s : s + EMBED_BATCH]]
        vectors[s : s + len(part)] = emb.embed(part)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()

    # write: one transaction; a brand-new index is built in a temp file renamed at the end
    fresh = old_meta is None or rebuild
    target = db.with_name(f".{db.name}.{os.getpid()}.tmp") if fresh else db
    if fresh and target.exists():
        target.unlink()
    gen = uuid.uuid4().hex[:12]
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(target), isolation_level=None)
    except (OSError, sqlite3.OperationalError) as e:
        raise BadInputError(f"cannot write the index ({e})", path=str(db)) from None
    try:
        con.execute("BEGIN IMMEDIATE")
        if fresh:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            old_vectors = None
            old_ids: list[int] = []
        else:
            old_ids = [r[0] for r in con.execute("SELECT id FROM chunks ORDER BY id")]
            assert old_meta is not None
            vec_old = _vectors_path(db, old_meta["generation"])
            try:
                old_vectors = np.load(vec_old, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BadInputError(
                    f"the index's vectors are unreadable ({e}): index into a new --db",
                    path=str(vec_old),
                ) from None
        for f in removed + [c[0] for c in updated]:
            con.execute("DELETE FROM chunks WHERE file = ?", (f,))
            con.execute("DELETE FROM files WHERE path = ?", (f,))
        for key, (mtime_ns, size) in touched.items():
            con.execute(
                "UPDATE files SET mtime_ns = ?, size = ? WHERE path = ?", (mtime_ns, size, key)
            )
        for key, source, mtime_ns, size, sha in changed:
            if key not in per_file:  # unreadable: its old chunks are gone, nothing replaces them
                continue
            con.execute(
                "INSERT INTO files (path, source, mtime_ns, size, sha256, chunks) VALUES (?, ?, ?, ?, ?, ?)",
                (key, source, mtime_ns, size, sha, per_file[key]),
            )
        new_ids = []
        for c in new_chunks:
            cur = con.execute(
                "INSERT INTO chunks (file, source, start_char, end_char, location, text) VALUES (?, ?, ?, ?, ?, ?)",
                c,
            )
            new_ids.append(cur.lastrowid)
        # the new matrix: surviving rows of the old one, then the new chunks (ids only grow)
        kept = [r[0] for r in con.execute("SELECT id FROM chunks ORDER BY id")]
        new_set = set(new_ids)
        kept_old = [i for i in kept if i not in new_set]
        if old_vectors is not None and kept_old:
            pos = {cid: r for r, cid in enumerate(old_ids)}
            matrix = np.concatenate([old_vectors[[pos[i] for i in kept_old]], vectors])
        else:
            matrix = vectors
        matrix = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1, emb.dim)
        now = _now()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            **settings,
            "dim": str(emb.dim),
            "created": old_meta["created"] if old_meta and not rebuild else now,
            "updated": now,
            "generation": gen,
        }
        for k, v in meta.items():
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
        vec = _vectors_path(db, gen)
        tmp = vec.with_name(f".{vec.name}.tmp")
        with open(tmp, "wb") as out:
            np.save(out, matrix, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, vec)
        con.execute("COMMIT")
    except BaseException as e:
        if con.in_transaction:
            con.execute("ROLLBACK")
        con.close()
        if fresh and target.exists():
            target.unlink()
        for stale in db.parent.glob(f".{glob.escape(db.name)}.vectors-{gen}.npy.tmp"):
            stale.unlink(missing_ok=True)
        if isinstance(e, (OSError, sqlite3.OperationalError)):  # a full disk, a read-only file
            raise BadInputError(f"cannot write the index ({e})", path=str(db)) from None
        raise
    con.close()
    if fresh:
        os.replace(target, db)
    # the matrices no generation names any more (earlier runs', or one killed before its commit),
    # and the temp files of a killed run
    for stale in db.parent.glob(f"{glob.escape(db.name)}.vectors-*.npy"):
        if stale.name != vec.name:
            stale.unlink(missing_ok=True)
    for stale in db.parent.glob(f".{glob.escape(db.name)}.*"):
        stale.unlink(missing_ok=True)
    return summary(len(kept), len(new_chunks), time.perf_counter() - t_work)


__all__ = [
    "DEFAULT_FUSION",
    "HYBRID_RRF_K",
    "HYBRID_TOP_N",
    "RRF_K",
    "Fusion",
    "Passage",
    "RagIndex",
    "build_index",
    "open_index",
]
