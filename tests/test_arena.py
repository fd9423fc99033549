"""The arena: its store under concurrent voters and crashes, and its ratings against the truth.

Ratings are checked on synthetic battles drawn from known strengths: Bradley–Terry recovers the
order, its bootstrap intervals cover the true ratings at about their nominal rate, the Newton fit
equals an independent MM fit (Hunter 2004), and online Elo agrees on a clear ordering. The store
is hammered by several processes at once and by a writer SIGKILLed inside its transaction.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from twofiles.arena import ArenaStore, bradley_terry, elo_ratings, leaderboard
from twofiles.arena.ratings import SCALE, arena_ranks, format_table, plot_leaderboard
from twofiles.errors import BadInputError


@dataclass
class B:
    model_a: str
    model_b: str
    winner: str


def simulate(
    true: dict[str, float], n: int, rng: np.random.Generator, tie_rate: float = 0.0
) -> list[B]:
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
    battles = simulate(
        {"p": 1200, "q": 1000, "r": 800}, 300, np.random.default_rng(1), tie_rate=0.1
    )
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
    args = dict(
        prompt=f"prompt {i}",
        model_a="m1",
        model_b="m2",
        reply_a=f"a{i} ✓",
        reply_b=f"b{i}",
        winner="a",
        meta={"i": i},
    )
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
    [
        ({"winner": "left"}, "winner"),
        ({"model_b": "m1"}, "two different"),
        ({"model_a": ""}, "non-empty"),
        ({"reply_a": None}, "reply_a"),
        ({"meta": {"x": object()}}, "meta"),
    ],
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


_VOTER = textwrap.dedent(
    """
    import os, sys, time
    from twofiles.arena.store import ArenaStore

    path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = ArenaStore(path)
    open(f"{path}.ready{worker}", "w").close()
    while not os.path.exists(path + ".go"):  # start together: the votes really interleave
        time.sleep(0.005)
    for i in range(n):
        store.record_battle(prompt=f"p{i}", model_a="m1", model_b="m2", reply_a="a", reply_b="b", winner="a", key=f"w{worker}-{i}",
                            meta={"worker": worker, "i": i})
        time.sleep(0.002)  # a vote is ~1 ms: without a pause one writer can finish before the next wakes
    """
)


def _src_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }


@pytest.mark.slow
def test_store_concurrent_voters_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "arena.db")
    ArenaStore(path)
    procs = [
        subprocess.Popen([sys.executable, "-c", _VOTER, path, str(w), "40"], env=_src_env())
        for w in range(4)
    ]  # separate processes
    try:
        deadline = time.monotonic() + 120
        while not all(Path(f"{path}.ready{w}").exists() for w in range(4)):
            assert time.monotonic() < deadline, "the voters did not start"
            time.sleep(0.01)  # every voter has imported and opened the store: a fair start
        Path(path + ".go").touch()
        for p in procs:
            assert p.wait(120) == 0
    finally:
        for p in procs:  # none left waiting for a start that never comes
            if p.poll() is None:
                p.kill()
                p.wait()
    battles = ArenaStore(path).battles()
    assert sorted(b.key for b in battles) == sorted(
        f"w{w}-{i}" for w in range(4) for i in range(40)
    )
    assert len({b.id for b in battles}) == 160
    order = [b.meta["worker"] for b in battles]
    assert (
        sum(x != y for x, y in itertools.pairwise(order)) > 3
    )  # the writers took turns, not one after the other


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
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=_src_env(),
    )
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line.strip())
        if line.strip() == "inside":
            break
    os.kill(proc.pid, signal.SIGKILL)  # holding the write lock, its INSERT not committed
    proc.wait(10)
    assert lines == ["committed k0", "committed k1", "committed k2", "inside"]
    store = ArenaStore(path)
    assert [b.key for b in store.battles()] == [
        "k0",
        "k1",
        "k2",
    ]  # the killed vote is not there, not even in part
    _vote(store, 9, key="after")  # and the lock it held is free again
    assert [b.key for b in store.battles()] == ["k0", "k1", "k2", "after"]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------------------------------------
# judges and battles


class Scripted:
    """A contestant backend that answers each prompt from a dict."""

    is_chat = False

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.calls = answers, 0

    def generate(self, requests, *, max_tokens, stop=(), batch_size=8, progress=None):
        self.calls += len(requests)
        return [self.answers[r.text] for r in requests]


def test_reference_judge() -> None:
    from twofiles.arena.judges import ReferenceJudge

    j = ReferenceJudge()
    assert j.judge("2+2?", "it is 4", "5", "4").winner == "a"
    assert j.judge("2+2?", "five", "The answer is 4.", "4").winner == "b"
    assert j.judge("2+2?", "4", "4.0", "4").winner == "tie"
    assert j.judge("2+2?", "3", "5", "4").winner == "both_bad"
    with pytest.raises(Exception, match="reference"):
        j.judge("2+2?", "3", "5", None)


def test_model_judge_keeps_only_verdicts_that_survive_the_side_swap() -> None:
    from twofiles.arena.judges import JUDGE_PROMPT, ModelJudge

    class TextJudge:  # an endpoint-like judge replying with a letter
        is_chat = True

        def __init__(self, rule) -> None:
            self.rule = rule

        def generate(self, requests, *, max_tokens, stop=(), batch_size=8, progress=None):
            q = requests[0].messages[-1]["content"]
            first = q.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
            second = q.split("Answer B:\n")[1].split("\n\nWhich")[0]
            return [self.rule(first, second)]

    longer = ModelJudge(TextJudge(lambda f, s: "A" if len(f) > len(s) else "B"))
    assert longer.judge("q", "a long answer", "short").winner == "a"
    assert longer.judge("q", "short", "a long answer").winner == "b"
    always_first = ModelJudge(
        TextJudge(lambda f, s: "A")
    )  # pure position bias: every verdict flips under the swap
    v = always_first.judge("q", "x", "y")
    assert v.winner == "tie" and v.detail["as_shown"] == "a" and v.detail["swapped"] == "b"
    assert "{prompt}" in JUDGE_PROMPT


def test_model_judge_reads_a_local_models_letter_probabilities() -> None:
    """A real (tiny, random) local model as judge: its verdict is the letter it finds likelier,
    asked both ways round; the two log-likelihoods are those of the engine's own forward."""
    from twofiles.arena.judges import ModelJudge
    from twofiles.artifact import LoadedModel
    from twofiles.eval.backends import LocalBackend
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["Answer A or B. Which answer is better? " * 30], 280)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=512,
        )
    )
    model.init_weights(seed=0)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    v = ModelJudge(LocalBackend(LoadedModel(model, tok), chat=False)).judge("Which?", "yes", "no")
    d = v.detail["as_shown_detail"]
    assert v.winner in ("a", "b", "tie") and d["logp_A"] < 0 and d["logp_B"] < 0
    assert v.detail["as_shown"] == ("a" if d["logp_A"] > d["logp_B"] else "b")


def test_score_judge_is_the_reward_model_hook() -> None:
    from twofiles.arena.judges import ScoreJudge

    j = ScoreJudge(lambda prompt, reply: len(reply), margin=1)
    assert j.judge("p", "long reply", "short").winner == "a"
    assert j.judge("p", "ab", "abc").winner == "tie"


def test_pairings_cover_every_pair_and_swap_sides() -> None:
    from twofiles.arena.battle import pairings

    got = pairings(["x", "y", "z"], 40, pairs_per_prompt=None, seed=1)
    assert len(got) == 120
    per_prompt = {}
    for i, a, b in got:
        per_prompt.setdefault(i, set()).add(frozenset((a, b)))
    assert all(len(s) == 3 for s in per_prompt.values())
    first = sum(a == "x" for _, a, b in got if "x" in (a, b))
    assert 25 <= first <= 55  # x is side A in about half of its 80 battles
    assert pairings(["x", "y", "z"], 40, pairs_per_prompt=None, seed=1) == got
    assert len(pairings(["x", "y", "z"], 10, pairs_per_prompt=1, seed=0)) == 10


def test_run_arena_stores_anonymous_battles_with_both_conversations(tmp_path: Path) -> None:
    from twofiles.arena.battle import ArenaPrompt, Contestant, run_arena
    from twofiles.arena.judges import ReferenceJudge

    prompts = [ArenaPrompt(f"What is {i} + {i}?", str(2 * i)) for i in range(12)]
    right = Scripted({p.prompt: f"{2 * i}" for i, p in enumerate(prompts)})
    wrong = Scripted({p.prompt: "no idea" for p in prompts})
    half = Scripted({p.prompt: f"{2 * i + (i % 2)}" for i, p in enumerate(prompts)})
    cs = [Contestant("right", right), Contestant("wrong", wrong), Contestant("half", half)]
    store = ArenaStore(tmp_path / "a.db")
    ids = run_arena(cs, prompts, ReferenceJudge(), store, progress=False)
    assert (
        len(ids) == 36 and right.calls == wrong.calls == half.calls == 12
    )  # each model answers each prompt once
    battles = store.battles()
    for b in battles:
        assert b.judge == "reference" and b.meta["conversation_a"][1]["content"] == b.reply_a
        winner_model = {"a": b.model_a, "b": b.model_b}.get(b.winner)
        if {b.model_a, b.model_b} == {"right", "wrong"}:
            assert winner_model == "right"
    assert {b.model_a for b in battles} == {"right", "wrong", "half"}  # everyone appears on side A
    rows = leaderboard(battles, bootstrap=50)
    assert [r.model for r in rows] == ["right", "half", "wrong"]


def test_human_judge_reads_votes_and_quits(tmp_path: Path) -> None:
    import io

    from twofiles.arena.battle import ArenaPrompt, Contestant, run_arena
    from twofiles.arena.judges import HumanJudge

    votes = iter(["b", "maybe", "t", "q"])
    out = io.StringIO()
    judge = HumanJudge(input_fn=lambda _: next(votes), out=out)
    prompts = [ArenaPrompt(f"p{i}") for i in range(5)]
    cs = [
        Contestant("m1", Scripted({p.prompt: "one" for p in prompts})),
        Contestant("m2", Scripted({p.prompt: "two" for p in prompts})),
    ]
    store = ArenaStore(tmp_path / "h.db")
    ids = run_arena(cs, prompts, judge, store, progress=False)
    assert [b.winner for b in store.battles()] == ["b", "tie"] and len(
        ids
    ) == 2  # quitting keeps the votes cast
    text = out.getvalue()
    assert "not a vote: 'maybe'" in text and "m1" not in text and "m2" not in text  # anonymous


def test_cli_arena_battle_and_leaderboard(tmp_path: Path, capsys) -> None:
    import json

    from twofiles.artifact import save_model
    from twofiles.cli import main
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["What is 1 + 2? 3. What is 2 + 2? 4. " * 30], 280)
    paths = []
    for seed in (0, 1):
        m = Transformer(
            ModelConfig(
                vocab_size=tok.vocab_size,
                dim=32,
                n_layers=1,
                n_heads=2,
                n_kv_heads=2,
                hidden_dim=64,
                max_seq_len=64,
            )
        )
        m.init_weights(seed=seed)
        with torch.no_grad():
            m.lm_head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
        paths.append(str(save_model(tmp_path / f"m{seed}.safetensors", m, tok)))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} + 2?", "reference": str(i + 2)}) + "\n"
            for i in range(4)
        )
    )
    db = str(tmp_path / "arena.db")
    rc = main(
        [
            "arena",
            "battle",
            "--models",
            f"one={paths[0]}",
            f"two={paths[1]}",
            "--prompts",
            str(prompts),
            "--judge",
            "reference",
            "--db",
            db,
            "--max-tokens",
            "6",
            "--no-progress",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    s = json.loads(out.strip().splitlines()[-1])
    assert (
        s["votes"] == 4
        and sum(s["winners"].values()) == 4
        and {r["model"] for r in s["leaderboard"]} == {"one", "two"}
    )
    png = tmp_path / "lb.png"
    assert (
        main(["arena", "leaderboard", "--db", db, "--png", str(png), "--json", "--bootstrap", "20"])
        == 0
    )
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["votes"] == 4 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["arena", "leaderboard", "--db", str(tmp_path / "none.db")]) == 2
    assert (
        main(
            [
                "arena",
                "battle",
                "--models",
                paths[0],
                paths[1],
                "--prompts",
                str(tmp_path / "p.txt"),
                "--db",
                db,
            ]
        )
        == 2
    )


def test_read_prompts_from_text_jsonl_and_tasks(tmp_path: Path) -> None:
    from twofiles.arena.battle import read_prompts
    from twofiles.errors import TwofilesError

    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert [p.prompt for p in read_prompts(str(tmp_path / "p.txt"))] == [
        "first prompt",
        "second prompt",
    ]
    (tmp_path / "p.jsonl").write_text('{"prompt": "2+2?", "reference": 4}\n{"prompt": ""}\n')
    with pytest.raises(BadInputError, match=r"p\.jsonl:2: field 'prompt'"):
        read_prompts(str(tmp_path / "p.jsonl"))
    arith = read_prompts(
        "arithmetic"
    )  # a built-in generative task: its prompts and reference answers
    assert (
        len(arith) == 40
        and arith[0].prompt.startswith("Question: What is")
        and arith[0].reference is not None
    )
    with pytest.raises(TwofilesError, match="generative"):
        read_prompts("quotes")
