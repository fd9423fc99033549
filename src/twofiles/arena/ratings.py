"""Ratings from pairwise votes: online Elo, Bradley–Terry by maximum likelihood, bootstrap
intervals and Chatbot-Arena ranks.

What it owns: turning a list of battles into a leaderboard (table rows and a PNG). What it leaves
to others: storing battles (arena/store.py), producing them (arena/battle.py).

Conventions, as in Chatbot Arena (Chiang et al. 2024, "Chatbot Arena: An Open Platform for
Evaluating LLMs by Human Preference"):
- Ratings are on the Elo scale: P(i beats j) = 1 / (1 + 10 ** ((r_j - r_i) / 400)).
- A tie, and a "both bad" vote, count as half a win for each side.
- Bradley–Terry ratings are centred so that their mean is 1000 (only differences are identified).
- Intervals are percentile bootstrap intervals over battles resampled with replacement.
- rank = 1 + the number of models whose interval lies wholly above this one's, so models whose
  intervals overlap can share a rank.

The BT fit is Newton–Raphson on the concave log-likelihood (a handful of steps; no scipy). To keep
estimates finite when a model has won (or lost) every game, each model also plays `prior` virtual
tied games against a fixed anchor at 1000: a weak pull towards the middle that vanishes as real
games accumulate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SCALE = 400.0  # Elo points per factor of 10 in the odds
BASE_RATING = 1000.0
ELO_K = 16.0  # online Elo step; Chatbot Arena uses 4 over millions of votes, an arena here has tens to thousands
WINNER_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # side A's score


class BattleLike(Protocol):
    @property
    def model_a(self) -> str: ...

    @property
    def model_b(self) -> str: ...

    @property
    def winner(self) -> str: ...


@dataclass
class LeaderboardRow:
    model: str
    rank: int  # 1 + number of models whose interval is wholly above this one's
    elo: float  # online Elo after all battles in order
    bt: float  # Bradley–Terry maximum-likelihood rating
    ci_low: float  # bootstrap interval of the BT rating
    ci_high: float
    games: int
    wins: float = 0.0  # ties count one half

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _outcomes(
    battles: Sequence[BattleLike],
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(models sorted, index of side A [N], index of side B [N], side A's score [N])."""
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[b.model_a] for b in battles], dtype=np.int64)
    b = np.array([index[b.model_b] for b in battles], dtype=np.int64)
    try:
        s = np.array([WINNER_SCORE[x.winner] for x in battles], dtype=np.float64)
    except KeyError as e:
        raise ValueError(
            f"unknown winner {e.args[0]!r}: must be one of {', '.join(WINNER_SCORE)}"
        ) from None
    return models, a, b, s


def elo_ratings(
    battles: Sequence[BattleLike], *, k: float = ELO_K, base: float = BASE_RATING
) -> dict[str, float]:
    """Online Elo: every model starts at `base`; each battle moves both ratings by k times the
    surprise (score minus expected score), in the order given."""
    rating: dict[str, float] = {}
    for bt in battles:
        ra, rb = rating.setdefault(bt.model_a, base), rating.setdefault(bt.model_b, base)
        expected_a = 1.0 / (1.0 + 10.0 ** ((rb - ra) / SCALE))
        delta = k * (WINNER_SCORE[bt.winner] - expected_a)
        rating[bt.model_a], rating[bt.model_b] = ra + delta, rb - delta
    return rating


def _pair_table(
    n_models: int, a: np.ndarray, b: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """games[i, j] (symmetric) and wins[i, j] = score of i against j, from battles (optionally
    each counted `weights` times, for the bootstrap)."""
    w = np.ones_like(s) if weights is None else weights
    games = np.zeros((n_models, n_models))
    wins = np.zeros((n_models, n_models))
    np.add.at(games, (a, b), w)
    np.add.at(wins, (a, b), w * s)
    np.add.at(wins, (b, a), w * (1.0 - s))
    return games + games.T, wins


def fit_bradley_terry(
    games: np.ndarray,
    wins: np.ndarray,
    *,
    prior: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> np.ndarray:
    """Maximum-likelihood BT strengths (natural-log scale, anchor at 0) for a games/wins table.

    Model: P(i beats j) = sigmoid(theta_i - theta_j); a tie is half a win. Log-likelihood
    L = sum_ij wins_ij * log sigmoid(theta_i - theta_j), plus `prior` tied games per model against
    an anchor at theta = 0. Newton steps with halving until L increases (L is concave)."""
    n = games.shape[0]
    theta = np.zeros(n)
    won = wins.sum(1) + 0.5 * prior  # total score of each model, the anchor games included

    def loglik(t: np.ndarray) -> float:
        d = t[:, None] - t[None, :]
        anchor = prior * (0.5 * -np.logaddexp(0, -t) + 0.5 * -np.logaddexp(0, t)).sum()
        return float(-(wins * np.logaddexp(0, -d)).sum() + anchor)

    current = loglik(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # p[i, j] = P(i beats j)
        p0 = 1.0 / (1.0 + np.exp(-theta))  # against the anchor
        grad = won - (games * p).sum(1) - prior * p0
        v = games * p * (1 - p)
        hess = v - np.diag(v.sum(1) + prior * p0 * (1 - p0))  # negative definite (prior > 0)
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while True:
            cand = theta + t * step
            value = loglik(cand)
            if value >= current - 1e-12 or t < 1e-6:
                break
            t *= 0.5
        theta, previous, current = cand, current, value
        if np.abs(t * step).max() < tol or abs(current - previous) < tol * max(1.0, abs(current)):
            break
    return theta


def _to_rating(theta: np.ndarray) -> np.ndarray:
    r = theta * SCALE / math.log(10)
    return r - r.mean() + BASE_RATING


def bradley_terry(battles: Sequence[BattleLike], *, prior: float = 1.0) -> dict[str, float]:
    """BT ratings on the Elo scale, mean 1000."""
    if not battles:
        return {}
    models, a, b, s = _outcomes(battles)
    games, wins = _pair_table(len(models), a, b, s)
    return dict(zip(models, _to_rating(fit_bradley_terry(games, wins, prior=prior)).tolist()))


def bootstrap_bradley_terry(
    battles: Sequence[BattleLike], *, rounds: int = 200, seed: int = 0, prior: float = 1.0
) -> tuple[list[str], np.ndarray]:
    """(models, ratings [rounds, models]): BT refitted on `rounds` resamples of the battles.
    A resample with replacement is a multinomial draw of how often each battle is counted."""
    models, a, b, s = _outcomes(battles)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(battles), np.full(len(battles), 1.0 / len(battles)), size=rounds)
    out = np.empty((rounds, len(models)))
    for r in range(rounds):
        games, wins = _pair_table(len(models), a, b, s, counts[r].astype(np.float64))
        out[r] = _to_rating(fit_bradley_terry(games, wins, prior=prior))
    return models, out


def arena_ranks(ci_low: Sequence[float], ci_high: Sequence[float]) -> list[int]:
    """Chatbot Arena's rank: 1 + how many models' lower bounds are above this one's upper bound."""
    return [1 + sum(lo > hi for lo in ci_low) for hi in ci_high]


def leaderboard(
    battles: Sequence[BattleLike],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    prior: float = 1.0,
    elo_k: float = ELO_K,
) -> list[LeaderboardRow]:
    """Rows sorted best first: BT rating with its bootstrap interval, online Elo, rank, games."""
    if not battles:
        return []
    models, a, b, s = _outcomes(battles)
    games, wins = _pair_table(len(models), a, b, s)
    bt = _to_rating(fit_bradley_terry(games, wins, prior=prior))
    elo = elo_ratings(battles, k=elo_k)
    if bootstrap > 0:
        _, samples = bootstrap_bradley_terry(battles, rounds=bootstrap, seed=seed, prior=prior)
        alpha = (1.0 - confidence) / 2
        low, high = np.quantile(samples, alpha, axis=0), np.quantile(samples, 1 - alpha, axis=0)
    else:
        low, high = bt.copy(), bt.copy()
    ranks = arena_ranks(low.tolist(), high.tolist())
    played = games.sum(1)
    scored = wins.sum(1)
    rows = [
        LeaderboardRow(
            model=m,
            rank=ranks[i],
            elo=elo[m],
            bt=float(bt[i]),
            ci_low=float(low[i]),
            ci_high=float(high[i]),
            games=round(played[i]),
            wins=float(scored[i]),
        )
        for i, m in enumerate(models)
    ]
    return sorted(rows, key=lambda r: (r.rank, -r.bt, r.model))


def format_table(rows: Sequence[LeaderboardRow]) -> str:
    """A plain-text leaderboard for the terminal (also valid Markdown)."""
    lines = [
        "| rank | model | BT rating | 95% interval | Elo | games | win rate |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        rate = r.wins / r.games if r.games else float("nan")
        lines.append(
            f"| {r.rank} | {r.model} | {r.bt:.0f} | {r.ci_low:.0f} – {r.ci_high:.0f} | {r.elo:.0f} | {r.games} | {rate:.0%} |"
        )
    return "\n".join(lines)


def plot_leaderboard(
    rows: Sequence[LeaderboardRow], png_path: str | Path, title: str = "arena leaderboard"
) -> Path:
    """BT ratings with their intervals, best at the top, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import save_png

    rows = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    bt = np.array([r.bt for r in rows])
    err = np.array([[r.bt - r.ci_low for r in rows], [r.ci_high - r.bt for r in rows]])
    ax.errorbar(
        bt,
        y,
        xerr=err,
        fmt="o",
        capsize=4,
        color="tab:blue",
        label="Bradley–Terry (bootstrap interval)",
    )
    ax.scatter(
        [r.elo for r in rows], y, marker="x", color="tab:orange", label="online Elo", zorder=3
    )
    ax.set_yticks(y, [f"{r.rank}. {r.model} ({r.games})" for r in rows])
    ax.set_xlabel("rating (Elo scale)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_png(fig, png_path, dpi=120)
