"""The arena: its store under concurrent voters and crashes, and its ratings against the truth.

Ratings are checked on synthetic battles drawn from known strengths: Bradley–Terry recovers the
order, its bootstrap intervals cover the true ratings at about their nominal rate, the Newton fit
equals an independent MM fit (Hunter 2004), and online Elo agrees on a clear ordering. The store
is hammered by several processes at once and by a writer SIGKILLed inside its transaction.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from twofiles.arena import ArenaStore, bradley_terry, elo_ratings, leaderboard
from twofiles.arena.ratings import SCALE, arena_ranks, format_table, plot_leaderboard
from twofiles.errors import BadInputError


@dataclass
class B:
    model_a: str
    model_b: str
    winner: str


def simulate(true: dict[str, float], n: int, rng: np.random.Generator, tie_rate: float = 0.0) -> list[B]:
    """Battles between random pairs; A wins with the BT probability of the true ratings."""
    names = list(true)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie_rate:
            out.append(B(a, b, "tie"))
            continue
        p_a = 1 / (1 + 10 ** ((true[b] - true[a]) / SCALE))
        out.append(B(a, b, "a" if rng.random() < p_a else "b"))
    return out


def mm_bradley_terry(battles: list[B], prior: float = 1.0, iters: int = 20000) -> dict[str, float]:
    """Hunter's (2004) MM iteration with the same anchor prior: an independent oracle."""
    models = sorted({x.model_a for x in battles} | {x.model_b for x in battles})
    ix = {m: i for i, m in enumerate(models)}
    n = len(models)
    games, score = np.zeros((n, n)), np.zeros(n)
    for x in battles:
        i, j = ix[x.model_a], ix[x.model_b]
        games[i, j] += 1
        games[j, i] += 1
        s = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}[x.winner]
        score[i] += s
        score[j] += 1 - s
    score += 0.5 * prior
    p = np.ones(n)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(1) + prior / (p + 1.0)
        p = score / denom
    r = np.log(p) * SCALE / math.log(10)
    return dict(zip(models, (r - r.mean() + 1000).tolist()))


# ---------------------------------------------------------------------------------------------
# ratings


def test_bt_newton_equals_an_independent_mm_fit() -> None:
    rng = np.random.default_rng(3)
    battles = simulate({"w": 1150, "x": 1050, "y": 1000, "z": 800}, 150, rng, tie_rate=0.15)
    battles.append(B("w", "z", "both_bad"))
    ours, oracle = bradley_terry(battles), mm_bradley_terry(battles)
    for m in oracle:
        assert ours[m] == pytest.approx(oracle[m], abs=1e-4)


def test_bt_stays_finite_when_a_model_wins_everything() -> None:
    battles = [B("best", "rest", "a")] * 20 + [B("rest", "worst", "a")] * 20
    r = bradley_terry(battles)
    assert all(math.isfinite(v) for v in r.values())
    assert r["best"] > r["rest"] > r["worst"]
    assert sum(r.values()) / 3 == pytest.approx(1000)


def test_bt_recovers_the_order_and_the_gaps() -> None:
    true = {"a": 1300, "b": 1150, "c": 1000, "d": 900, "e": 650}
    r = bradley_terry(simulate(true, 4000, np.random.default_rng(0)))
    assert sorted(r, key=r.get, reverse=True) == list(true)
    centre = sum(true.values()) / len(true)
    for m, v in true.items():  # 4000 games: standard errors are ~20 points
        assert r[m] - 1000 == pytest.approx(v - centre, abs=60)


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate() -> None:
    """60 replicates x 5 models = 300 nominal-95% intervals. Binomial sd at 95% is 1.3 points;
    the percentile bootstrap and the weak prior may under- or over-cover a little, so we accept
    88%..99.5%. A broken interval (say, the sd of one fit instead of the spread of refits, or
    intervals around the wrong centre) lands far outside."""
    true = {"a": 1200, "b": 1100, "c": 1000, "d": 950, "e": 750}
    centre = sum(true.values()) / len(true)
    rng = np.random.default_rng(12345)
    covered = total = 0
    widths = []
    for rep in range(60):
        rows = leaderboard(simulate(true, 400, rng), bootstrap=100, seed=rep)
        for row in rows:
            t = true[row.model] - centre + 1000
            covered += row.ci_low <= t <= row.ci_high
            total += 1
            widths.append(row.ci_high - row.ci_low)
    rate = covered / total
    assert 0.88 <= rate <= 0.995, rate
    assert 60 < float(np.median(widths)) < 250  # ~160 battles per model: +-60 points or so


def test_elo_and_bt_agree_on_a_clear_ordering() -> None:
    true = {"strong": 1400, "good": 1200, "fair": 1000, "weak": 800}
    rng = np.random.default_rng(7)
    battles = simulate(true, 1500, rng)
    rng.shuffle(battles)
    elo, bt = elo_ratings(battles), bradley_terry(battles)
    assert sorted(elo, key=elo.get, reverse=True) == list(true)
    assert sorted(bt, key=bt.get, reverse=True) == list(true)


def test_elo_is_zero_sum_and_moves_the_right_way() -> None:
    r = elo_ratings([B("x", "y", "a")], k=16)
    assert r == {"x": 1008.0, "y": 992.0}
    r = elo_ratings([B("x", "y", "tie")])
    assert r["x"] == r["y"] == 1000.0


def test_arena_ranks_share_a_rank_when_intervals_overlap() -> None:
    # a [1100,1200], b [1050,1150] overlap -> both rank 1; c [900,1000] is below both -> 3
    assert arena_ranks([1100, 1050, 900], [1200, 1150, 1000]) == [1, 1, 3]


def test_leaderboard_rows_and_outputs(tmp_path: Path) -> None:
    battles = simulate({"p": 1200, "q": 1000, "r": 800}, 300, np.random.default_rng(1), tie_rate=0.1)
    rows = leaderboard(battles, bootstrap=50, seed=0)
    assert [r.model for r in rows] == ["p", "q", "r"]
    assert [r.rank for r in rows] == [1, 2, 3]
    assert sum(r.games for r in rows) == 2 * len(battles)
    assert sum(r.wins for r in rows) == pytest.approx(len(battles))
    for r in rows:
        assert r.ci_low <= r.bt <= r.ci_high
    assert leaderboard(battles, bootstrap=50, seed=0) == rows  # seeded
    assert "| 1 | p |" in format_table(rows)
    png = plot_leaderboard(rows, tmp_path / "lb.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leaderboard([]) == []


# ---------------------------------------------------------------------------------------------
# store


def _vote(store: ArenaStore, i: int, **kw) -> int:
    args = dict(prompt=f"prompt {i}", model_a="m1", model_b="m2", reply_a=f"a{i} ✓", reply_b=f"b{i}", winner="a", meta={"i": i})
    args.update(kw)
    return store.record_battle(**args)


def test_store_round_trip_and_feeds_the_leaderboard(tmp_path: Path) -> None:
    store = ArenaStore(tmp_path / "arena.db")
    ids = [_vote(store, i, winner=w) for i, w in enumerate(["a", "b", "tie", "both_bad", "a"])]
    assert ids == sorted(ids) and len(set(ids)) == 5
    got = ArenaStore(tmp_path / "arena.db").battles()  # reopening keeps everything
    assert [b.winner for b in got] == ["a", "b", "tie", "both_bad", "a"]
    assert got[0].reply_a == "a0 ✓" and got[0].meta == {"i": 0} and got[0].judge == "human"
    assert store.models() == ["m1", "m2"] and store.count() == 5
    assert [b.id for b in store.battles(since_id=ids[2])] == ids[3:]
    rows = leaderboard(got, bootstrap=20)
    assert {r.model for r in rows} == {"m1", "m2"}
    with sqlite3.connect(tmp_path / "arena.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_same_key_is_stored_once(tmp_path: Path) -> None:
    store = ArenaStore(tmp_path / "arena.db")
    first = _vote(store, 1, key="vote-1")
    assert _vote(store, 1, key="vote-1") == first
    assert store.count() == 1


@pytest.mark.parametrize(
    "bad, needle",
    [({"winner": "left"}, "winner"), ({"model_b": "m1"}, "two different"), ({"model_a": ""}, "non-empty"), ({"reply_a": None}, "reply_a"),
     ({"meta": {"x": object()}}, "meta")],
)
def test_store_rejects_bad_votes_and_writes_nothing(tmp_path: Path, bad: dict, needle: str) -> None:
    store = ArenaStore(tmp_path / "arena.db")
    with pytest.raises(BadInputError, match=needle):
        _vote(store, 0, **bad)
    assert store.count() == 0


def test_store_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BadInputError, match="junk.db"):
        ArenaStore(p)


def _voter(path: str, worker: int, n: int) -> None:
    store = ArenaStore(path)
    for i in range(n):
        _vote(store, i, key=f"w{worker}-{i}", meta={"worker": worker, "i": i})


@pytest.mark.slow
def test_store_concurrent_voters_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "arena.db")
    ArenaStore(path)
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing shared but the file
    procs = [ctx.Process(target=_voter, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    battles = ArenaStore(path).battles()
    assert sorted(b.key for b in battles) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))
    assert len({b.id for b in battles}) == 160


_CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    import twofiles.arena.store as store_mod
    from twofiles.arena import ArenaStore

    class StallingClock:
        # record_battle reads the clock inside its transaction; vote number 4 stalls there
        calls = 0
        def time(self):
            StallingClock.calls += 1
            if StallingClock.calls == 4:
                print("inside", flush=True)
                time.sleep(60)
            return time.time()

    store_mod.time = StallingClock()
    s = ArenaStore(sys.argv[1])
    for i in range(10):
        s.record_battle(prompt="p", model_a="x", model_b="y", reply_a="a" * 10000, reply_b="b", winner="a", key=f"k{i}")
        print(f"committed k{i}", flush=True)
    """
)


@pytest.mark.slow
def test_store_survives_a_writer_killed_mid_transaction(tmp_path: Path) -> None:
    path = tmp_path / "arena.db"
    ArenaStore(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line.strip())
        if line.strip() == "inside":
            break
    os.kill(proc.pid, signal.SIGKILL)  # holding the write lock, its INSERT not committed
    proc.wait(10)
    assert lines == ["committed k0", "committed k1", "committed k2", "inside"]
    store = ArenaStore(path)
    assert [b.key for b in store.battles()] == ["k0", "k1", "k2"]  # the killed vote is not there, not even in part
    _vote(store, 9, key="after")  # and the lock it held is free again
    assert [b.key for b in store.battles()] == ["k0", "k1", "k2", "after"]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
