"""The arena's battle store: one SQLite file holding every vote with both conversations.

What it owns: the schema, writing one battle (one transaction per vote) and reading them back.
What it leaves to others: who fought and how they were judged (arena/battle.py, arena/judges.py),
what the votes mean (arena/ratings.py), HTTP (serve).

Why SQLite and how it stays safe:
- WAL journal: readers never block the writer and a reader never sees half a transaction.
- Every vote is one `BEGIN IMMEDIATE ... COMMIT`: a writer killed at any moment leaves either
  the whole vote or none of it (SQLite rolls the hot journal back on the next open).
- Concurrent voters (threads or processes) wait on the write lock for up to `BUSY_TIMEOUT_S`
  instead of failing with "database is locked".
- Each vote carries a unique `key` (a fresh UUID unless the caller gives one): a client that
  retries after a lost reply sends the same key and gets the same id back, never a duplicate.
- A connection per call: nothing is shared between threads or across fork().
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from twofiles.errors import BadInputError

Winner = Literal["a", "b", "tie", "both_bad"]
WINNERS: tuple[str, ...] = get_args(Winner)

BUSY_TIMEOUT_S = 30.0  # how long a voter waits for the write lock before giving up
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    key      TEXT    NOT NULL UNIQUE,      -- idempotency key: a retried vote is stored once
    created  REAL    NOT NULL,             -- unix seconds
    prompt   TEXT    NOT NULL,
    model_a  TEXT    NOT NULL,             -- the model shown on the left
    model_b  TEXT    NOT NULL,
    reply_a  TEXT    NOT NULL,
    reply_b  TEXT    NOT NULL,
    winner   TEXT    NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
    judge    TEXT    NOT NULL,             -- "human", "reference", "model:SPEC", ...
    meta     TEXT    NOT NULL DEFAULT '{}' -- JSON: full conversations, sampling, judge reasons
);
CREATE INDEX IF NOT EXISTS battles_models ON battles (model_a, model_b);
"""


@dataclass(frozen=True)
class Battle:
    """One stored vote. `model_a` is the model that was shown on the left (side A)."""

    id: int
    prompt: str
    model_a: str
    model_b: str
    reply_a: str
    reply_b: str
    winner: Winner
    judge: str = "human"
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    key: str = ""

    @property
    def models(self) -> tuple[str, str]:
        return (self.model_a, self.model_b)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "id",
                "key",
                "created",
                "prompt",
                "model_a",
                "model_b",
                "reply_a",
                "reply_b",
                "winner",
                "judge",
                "meta",
            )
        }


class ArenaStore:
    """Battles in one SQLite file (created with its schema on first use). Safe for several
    threads and processes voting at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.is_dir():
            raise BadInputError(
                "the directory for the arena database does not exist", path=str(self.path)
            )
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:  # not a database, or a corrupt one
            raise BadInputError(f"not a usable arena database ({e})", path=str(self.path)) from e

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one vote is one transaction
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA synchronous=FULL")  # a committed vote survives power loss too
            yield con
        finally:
            con.close()

    def record_battle(
        self,
        *,
        prompt: str,
        model_a: str,
        model_b: str,
        reply_a: str,
        reply_b: str,
        winner: Winner,
        judge: str = "human",
        meta: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> int:
        """Store one vote atomically and return its id. With a `key` already stored, nothing is
        written and the existing vote's id is returned (safe retries)."""
        fields = {
            "prompt": prompt,
            "model_a": model_a,
            "model_b": model_b,
            "reply_a": reply_a,
            "reply_b": reply_b,
            "judge": judge,
        }
        for name, value in fields.items():
            if not isinstance(value, str):
                raise BadInputError(f"{name} must be a string, not {type(value).__name__}")
        if not model_a or not model_b:
            raise BadInputError("model_a and model_b must be non-empty model names")
        if model_a == model_b:
            raise BadInputError(f"a battle needs two different models, got {model_a!r} twice")
        if winner not in WINNERS:
            raise BadInputError(f"winner={winner!r}: must be one of {', '.join(WINNERS)}")
        try:
            meta_json = json.dumps(meta or {}, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise BadInputError(f"meta must be JSON-serialisable: {e}") from e
        key = key or uuid.uuid4().hex
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
            try:
                row = con.execute("SELECT id FROM battles WHERE key = ?", (key,)).fetchone()
                if row is None:
                    cur = con.execute(
                        "INSERT INTO battles (key, created, prompt, model_a, model_b, reply_a, reply_b, winner, judge, meta) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            time.time(),
                            prompt,
                            model_a,
                            model_b,
                            reply_a,
                            reply_b,
                            winner,
                            judge,
                            meta_json,
                        ),
                    )
                    row = (cur.lastrowid,)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return int(row[0])

    def battles(self, *, judge: str | None = None, since_id: int = 0) -> list[Battle]:
        """Every stored vote in the order it was cast (optionally only one judge's, or only
        those after `since_id`)."""
        sql = "SELECT id, key, created, prompt, model_a, model_b, reply_a, reply_b, winner, judge, meta FROM battles WHERE id > ?"
        args: list[Any] = [since_id]
        if judge is not None:
            sql += " AND judge = ?"
            args.append(judge)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY id", args).fetchall()
        return [
            Battle(
                id=r[0],
                key=r[1],
                created=r[2],
                prompt=r[3],
                model_a=r[4],
                model_b=r[5],
                reply_a=r[6],
                reply_b=r[7],
                winner=r[8],
                judge=r[9],
                meta=json.loads(r[10]),
            )
            for r in rows
        ]

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM battles").fetchone()[0])

    def models(self) -> list[str]:
        """Every model that has fought, sorted."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT model_a FROM battles UNION SELECT model_b FROM battles"
            ).fetchall()
        return sorted(r[0] for r in rows)
