"""Where twofiles keeps its files when the user names none: the cache directory and the default
databases the web UI writes and the `arena` / `feedback` verbs read.

What it owns: `cache_dir()` ($TWOFILES_CACHE, else ~/.cache/twofiles) and `default_db(kind)`
($TWOFILES_ARENA_DB / $TWOFILES_FEEDBACK_DB, else arena.sqlite / feedback.sqlite in the cache
directory). One function decides each, so a vote cast in the browser is what `twofiles arena
leaderboard` shows with no --db. What it leaves to others: opening and creating the files (the
stores open them on first use), model files in the cache (twofiles.formats).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

DbKind = Literal["arena", "feedback"]


def cache_dir() -> Path:
    """$TWOFILES_CACHE, else ~/.cache/twofiles (not created here)."""
    env = os.environ.get("TWOFILES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twofiles"


def default_db(kind: DbKind) -> Path:
    """The database the web UI and the verbs share when none is named: $TWOFILES_<KIND>_DB,
    else <cache_dir>/<kind>.sqlite."""
    if kind not in ("arena", "feedback"):
        raise ValueError(f"unknown database kind {kind!r}: arena or feedback")
    env = os.environ.get(f"TWOFILES_{kind.upper()}_DB")
    return Path(env).expanduser() if env else cache_dir() / f"{kind}.sqlite"


__all__ = ["DbKind", "cache_dir", "default_db"]
