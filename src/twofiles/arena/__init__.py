"""The arena: models fight anonymously on prompts, votes go into SQLite, ratings come out.

store.py (ArenaStore, Battle), ratings.py (Elo, Bradley–Terry, bootstrap, leaderboard),
judges.py (human, reference answer, judge model), battle.py (running battles between models).
"""

from twofiles.arena.ratings import LeaderboardRow, bradley_terry, elo_ratings, leaderboard
from twofiles.arena.store import WINNERS, ArenaStore, Battle, Winner

__all__ = [
    "WINNERS",
    "ArenaStore",
    "Battle",
    "LeaderboardRow",
    "Winner",
    "bradley_terry",
    "elo_ratings",
    "leaderboard",
]
