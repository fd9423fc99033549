"""Feedback on replies, and the finetuning data it turns into.

What it owns: the feedback database (SQLite, one table; WAL and one short transaction per write,
so several threads and processes may record at once) and its export to the two files
finetuning reads:

    sft.jsonl          {"messages": [... conversation ..., the good assistant reply]}
                       (a corrected answer, or a reply that was upvoted and not corrected)
    preferences.jsonl  {"messages": [... conversation before the reply ...],
                        "chosen": [assistant message], "rejected": [assistant message]}
                       (a corrected answer over the original; each upvoted reply over each
                       downvoted reply to the same conversation; optionally, each arena vote's
                       winning reply over the losing one)

Messages are OpenAI-style dicts, the conversation format of `twofiles.chat.read_conversations`.
A row is one verdict on one reply: a rating (+1 / -1), a correction, or both. When the same reply
to the same conversation is rated more than once, the latest rating counts.

What it leaves to others: HTTP and the pages (serve/web.py), what a valid message is
(twofiles.chat.parse_messages), training on the exported files (train/).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError, TwofilesError

SCHEMA_VERSION = 1
MAX_TEXT_CHARS = 100_000  # a correction or reply longer than this is not feedback, it is an upload
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer's transaction before failing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created    TEXT    NOT NULL,              -- UTC, ISO 8601
    model      TEXT    NOT NULL,              -- the model that wrote the reply
    messages   TEXT    NOT NULL,              -- JSON: the conversation before the reply
    reply      TEXT    NOT NULL,              -- JSON: the assistant message judged
    rating     INTEGER,                       -- +1 up, -1 down, NULL: none
    correction TEXT,                          -- the answer it should have given; NULL: none
    meta       TEXT    NOT NULL DEFAULT '{}'  -- JSON: sampling settings, page, anything else
);
"""


@dataclass
class FeedbackRow:
    """One verdict on one reply, as stored (messages already validated and normalised)."""

    id: int
    created: str
    model: str
    messages: list[dict[str, Any]]
    reply: dict[str, Any]
    rating: int | None
    correction: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportSummary:
    rows: int  # rows read
    sft: int  # examples written to sft.jsonl
    preferences: int  # pairs written to preferences.jsonl
    sft_path: str
    preferences_path: str
    skipped: list[str] = field(default_factory=list)  # "row N: why", for rows left out (--skip-bad)
    arena_preferences: int = 0  # of `preferences`, the pairs that came from arena votes

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sft": self.sft,
            "preferences": self.preferences,
            "sft_path": self.sft_path,
            "preferences_path": self.preferences_path,
            "skipped": len(self.skipped),
            "skipped_rows": self.skipped,
            "arena_preferences": self.arena_preferences,
        }


# ---------------------------------------------------------------------------------------------
# Messages: validated by twofiles.chat, stored as plain OpenAI-style dicts.


def normalize_messages(obj: Any, *, where: str = "messages") -> list[dict[str, Any]]:
    """Validate OpenAI-style messages (errors name the field, e.g. `messages[2].role`) and return
    them in one canonical dict form, so equal conversations compare equal."""
    from twofiles.chat import parse_messages

    return [m.to_dict() for m in parse_messages(obj, where=where)]


def normalize_reply(obj: Any, *, where: str = "reply") -> dict[str, Any]:
    """The judged reply: an assistant message dict, or its text alone."""
    if isinstance(obj, str):
        obj = {"role": "assistant", "content": obj}
    if not isinstance(obj, dict):
        raise BadInputError(
            f"{where}: must be an assistant message object or a string, got {type(obj).__name__}"
        )
    (msg,) = normalize_messages([obj], where=where)
    if msg["role"] != "assistant":
        raise BadInputError(f"{where}.role: must be 'assistant', got {msg['role']!r}")
    return msg


def _rating(value: Any, where: str = "rating") -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ("up", "down"):
        return 1 if value == "up" else -1
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, -1):
        return value
    raise BadInputError(f"{where}: must be 'up', 'down', 1, -1 or null, got {value!r}")


def _correction(value: Any, where: str = "correction") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{where}: must be a non-empty string or null")
    if len(value) > MAX_TEXT_CHARS:
        raise BadInputError(f"{where}: {len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# The store


class FeedbackStore:
    """The feedback database at `path` (created on first use). Every call opens its own
    connection, so one store may be shared by threads (a web server's worker pool)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise TwofilesError(f"{self.path}: cannot open the feedback database: {e}") from e
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            raise TwofilesError(f"{self.path}: {e}") from e
        finally:
            conn.close()

    def record(
        self,
        *,
        model: str,
        messages: Sequence[Any],
        reply: Any,
        rating: int | str | None = None,
        correction: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Store one verdict (a rating, a correction, or both) and return its row id.
        Raises BadInputError naming the field at fault; nothing is stored then."""
        if not isinstance(model, str) or not model.strip():
            raise BadInputError("model: must be a non-empty string")
        msgs = normalize_messages(messages)
        if not msgs:
            raise BadInputError("messages: the conversation before the reply is empty")
        rep = normalize_reply(reply)
        if len(rep["content"]) > MAX_TEXT_CHARS:
            raise BadInputError(
                f"reply.content: {len(rep['content'])} characters; at most {MAX_TEXT_CHARS}"
            )
        rate, fix = _rating(rating), _correction(correction)
        if rate is None and fix is None:
            raise BadInputError(
                "rating, correction: give a rating ('up' or 'down'), a correction, or both"
            )
        if meta is not None and not isinstance(meta, dict):
            raise BadInputError("meta: must be an object")
        row = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            model,
            json.dumps(msgs, ensure_ascii=False),
            json.dumps(rep, ensure_ascii=False),
            rate,
            fix,
            json.dumps(meta or {}, ensure_ascii=False, default=str),
        )
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO feedback (created, model, messages, reply, rating, correction, meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )  # autocommit: one statement, one transaction
            assert cur.lastrowid is not None  # set by every INSERT
            return int(cur.lastrowid)

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def rows(self) -> list[FeedbackRow]:
        """Every row in id order. Raises BadInputError on the first malformed row."""
        good, bad = read_rows(self.path)
        if bad:
            raise BadInputError(bad[0], path=str(self.path))
        return good


def read_rows(path: str | os.PathLike[str]) -> tuple[list[FeedbackRow], list[str]]:
    """Read a feedback database without changing it: (valid rows, "row N: why" for the others).
    A missing file or one that is not a feedback database raises BadInputError."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("no such feedback database", path=str(path))
    try:
        # read-only URI: exporting must never create, migrate or lock out a live database
        with closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        ) as conn:
            records = conn.execute(
                "SELECT id, created, model, messages, reply, rating, correction, meta FROM feedback ORDER BY id"
            ).fetchall()
    except sqlite3.DatabaseError as e:
        raise BadInputError(f"not a twofiles feedback database ({e})", path=str(path)) from e
    good: list[FeedbackRow] = []
    bad: list[str] = []
    for rid, created, model, messages, reply, rating, correction, meta in records:
        try:
            good.append(_parse_row(rid, created, model, messages, reply, rating, correction, meta))
        except (BadInputError, ValueError, TypeError) as e:
            bad.append(f"row {rid}: {e}")
    return good, bad


def _parse_row(
    rid: int,
    created: Any,
    model: Any,
    messages: Any,
    reply: Any,
    rating: Any,
    correction: Any,
    meta: Any,
) -> FeedbackRow:
    def loads(text: Any, name: str) -> Any:
        if not isinstance(text, str):
            raise BadInputError(f"{name}: not JSON text")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{name}: invalid JSON ({e.msg} at character {e.pos})") from e

    if not isinstance(model, str) or not model:
        raise BadInputError("model: empty")
    msgs = normalize_messages(loads(messages, "messages"))
    if not msgs:
        raise BadInputError("messages: empty conversation")
    rep = normalize_reply(loads(reply, "reply"))
    rate, fix = _rating(rating), _correction(correction)
    if rate is None and fix is None:
        raise BadInputError("neither a rating nor a correction")
    extra = loads(meta, "meta") if meta is not None else {}
    return FeedbackRow(
        int(rid),
        str(created),
        model,
        msgs,
        rep,
        rate,
        fix,
        extra if isinstance(extra, dict) else {},
    )


# ---------------------------------------------------------------------------------------------
# Export


def build_datasets(
    rows: Sequence[FeedbackRow],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(SFT examples, preference pairs) from valid rows, deduplicated, in row order."""
    latest: dict[tuple[str, str], int] = {}  # (conversation, reply) -> latest rating
    corrected: set[tuple[str, str]] = set()
    first_seen: dict[tuple[str, str], FeedbackRow] = {}
    for r in rows:
        key = (_canonical(r.messages), _canonical(r.reply))
        first_seen.setdefault(key, r)
        if r.rating is not None:
            latest[key] = r.rating
        if r.correction is not None:
            corrected.add(key)

    sft: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    seen_sft: set[str] = set()
    seen_pref: set[str] = set()

    def add_sft(messages: list[dict[str, Any]], answer: dict[str, Any]) -> None:
        ex = {"messages": [*messages, answer]}
        if (k := _canonical(ex)) not in seen_sft:
            seen_sft.add(k)
            sft.append(ex)

    def add_pref(
        messages: list[dict[str, Any]], chosen: dict[str, Any], rejected: dict[str, Any]
    ) -> None:
        if _canonical(chosen) == _canonical(rejected):
            return  # a "correction" identical to the reply teaches nothing
        ex = {"messages": messages, "chosen": [chosen], "rejected": [rejected]}
        if (k := _canonical(ex)) not in seen_pref:
            seen_pref.add(k)
            prefs.append(ex)

    # Walk rows in order so the files follow the order feedback was given.
    for r in rows:
        key = (_canonical(r.messages), _canonical(r.reply))
        if r.correction is not None:
            fixed = {"role": "assistant", "content": r.correction}
            add_sft(r.messages, fixed)
            add_pref(r.messages, fixed, r.reply)
        elif (
            r.rating is not None and latest[key] == 1 and key not in corrected
        ):  # dedup keeps the first
            add_sft(r.messages, r.reply)

    by_conversation: dict[
        str, tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]
    ] = {}
    for key, rating in latest.items():  # dicts keep insertion order: first verdict first
        row = first_seen[key]
        msgs, ups, downs = by_conversation.setdefault(key[0], (row.messages, [], []))
        (ups if rating == 1 else downs).append(row.reply)
    for msgs, ups, downs in by_conversation.values():
        for up in ups:
            for down in downs:
                add_pref(msgs, up, down)
    return sft, prefs


def arena_preferences(arena_db: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Preference pairs from the arena's votes (twofiles.arena.ArenaStore): the winning reply over
    the losing one, after the battle's system prompt (if any) and prompt. Ties and "both bad" say
    nothing about which is better and are left out."""
    from twofiles.arena import ArenaStore

    path = Path(arena_db)
    if not path.is_file():
        raise BadInputError("no such arena database", path=str(path))
    pairs = []
    for b in ArenaStore(path).battles():
        if b.winner not in ("a", "b"):
            continue
        system = b.meta.get("system") if isinstance(b.meta, dict) else None
        where = f"{path}: battle {b.id}"
        messages = normalize_messages(
            ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": b.prompt}],
            where=where,
        )
        won, lost = (b.reply_a, b.reply_b) if b.winner == "a" else (b.reply_b, b.reply_a)
        pairs.append(
            {
                "messages": messages,
                "chosen": [normalize_reply(won, where=where)],
                "rejected": [normalize_reply(lost, where=where)],
            }
        )
    return pairs


def _jsonl(records: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def export_feedback(
    db: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    arena_db: str | os.PathLike[str] | None = None,
) -> ExportSummary:
    """Write OUT_DIR/sft.jsonl and OUT_DIR/preferences.jsonl from the feedback database `db`
    (and, with `arena_db`, the arena's decided votes as more preference pairs). A malformed row
    raises BadInputError naming it (nothing written), unless `skip_bad`, which leaves it out and
    lists it in the summary. Both files appear together or not at all."""
    rows, bad = read_rows(db)
    if bad and not skip_bad:
        raise BadInputError(
            f"{bad[0]}"
            + (f" (and {len(bad) - 1} more malformed rows)" if len(bad) > 1 else "")
            + "; --skip-bad leaves them out",
            path=str(db),
        )
    sft, prefs = build_datasets(rows)
    from_arena = 0
    if arena_db is not None:
        seen = {_canonical(p) for p in prefs}
        for pair in arena_preferences(arena_db):
            if (k := _canonical(pair)) not in seen:
                seen.add(k)
                prefs.append(pair)
                from_arena += 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    targets = {out / "sft.jsonl": _jsonl(sft), out / "preferences.jsonl": _jsonl(prefs)}
    temps: dict[Path, str] = {}
    try:
        for target, data in targets.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
            temps[target] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for target, tmp in temps.items():  # only once every file is complete
            os.replace(tmp, target)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ExportSummary(
        len(rows) + len(bad),
        len(sft),
        len(prefs),
        str(out / "sft.jsonl"),
        str(out / "preferences.jsonl"),
        bad,
        from_arena,
    )


__all__ = [
    "ExportSummary",
    "FeedbackRow",
    "FeedbackStore",
    "arena_preferences",
    "build_datasets",
    "export_feedback",
    "normalize_messages",
    "normalize_reply",
    "read_rows",
]
