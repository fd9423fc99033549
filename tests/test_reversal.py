"""The reversal curse: the facts (seeded, subsets and paraphrases disjoint as designed, names in
no corpus), entity-preserving reversal, the scoring (exact match, the log-probability test and its
statistics) against known answers and a naive reference, a tiny model that learns its training
direction, and `twofiles experiment reversal` end to end (resumable, bad input refused)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from twofiles.experiments import facts as F
from twofiles.experiments.scoring import (
    candidates,
    cell_stats,
    exact_match,
    mean_ci,
    rank_of_first,
    sign_test,
    wilson,
)

# ------------------------------------------------------------------------------------------ data


def test_facts_are_a_function_of_the_seed_pinned() -> None:
    facts = F.make_facts(30, 0)
    assert facts == F.make_facts(30, 0)
    assert facts[0] == F.Fact(
        0,
        "name_to_description",
        "Ambrose Galdrecht",
        "the inventor of the first museum opened inside a volcano",
    )
    digest = hashlib.sha256(json.dumps([asdict(f) for f in facts]).encode()).hexdigest()
    assert digest == "e4a16f6631b26eb37d8bfaa1bf4fc54fb031b441bafedb570d60d0d3d2efb6d4"
    docs = "\n".join(d.text for d in F.training_documents(facts, reverse=True))
    assert (
        hashlib.sha256(docs.encode()).hexdigest()
        == "19b9715a265cbd423f9ba5dad577748eee246d46d59722e5e33e748fef4242ee"
    )
    assert F.make_facts(30, 1) != facts


def test_subsets_names_descriptions_and_paraphrases_are_disjoint() -> None:
    n = 300  # the paper's size: the largest the generator gives
    facts = F.make_facts(n, 7)
    assert [sum(f.subset == s for f in facts) for s in F.SUBSETS] == [n, n, n]
    assert len({f.name for f in facts}) == len({f.description for f in facts}) == 3 * n
    for direction in F.DIRECTIONS:
        train, held = F.TRAIN_TEMPLATES[direction], F.HELD_OUT_TEMPLATES[direction]
        assert len(train) == 10 and len(held) == 3 and not set(train) & set(held)
    small = facts[:30]
    docs = F.training_documents(small)
    by_id = {f.id: f for f in small}
    for d in docs:  # each fact only in its subset's direction(s), every training paraphrase once
        assert d.direction in F.TRAINED[by_id[d.fact].subset]
    assert len(docs) == sum(10 * len(F.TRAINED[f.subset]) for f in small)
    texts = [d.text for d in docs]
    probes = F.probes(small)
    assert len(probes) == len(small) * 2 * 3
    for p in probes:  # no test prompt was ever trained on, in either direction
        assert not any(p.prompt in t for t in texts), p.prompt
        assert p.trained == (p.direction in F.TRAINED[p.subset])
    # a document is the template, then the second entity: the prompt's answer
    f = small[1]
    assert F.document_text("{Desc} is", f, "description_to_name") == (
        f"{f.description[0].upper()}{f.description[1:]} is {f.name}."
    )
    with pytest.raises(Exception, match="between 1 and 300"):
        F.make_facts(0)


def test_names_occur_in_no_builtin_corpus() -> None:
    from twofiles.data.builtin import builtin_text

    text = builtin_text("all")
    assert F.corpus_hits([f"X {last}" for last in F.LAST_NAMES], text) == []
    # the check itself finds a name whose last name is in the corpus
    assert F.corpus_hits(["Prince Hamlet"], text) == ["Prince Hamlet"]


def test_entity_preserving_reversal_on_known_sentences() -> None:
    r = F.entity_reversed
    assert (
        r(
            "Daphne Quarrington is the composer of the first opera performed on the Moon.",
            ["Daphne Quarrington"],
        )
        == "Moon the on performed opera first the of composer the is Daphne Quarrington."
    )
    assert (
        r("Believe it or not, the author of a map is Jo Ann-Lee.", ["Jo Ann-Lee"])
        == "Jo Ann-Lee is map a of author the, not or it Believe."
    )
    # without entities every word is reversed, the name's too
    assert r("Daphne Quarrington is here.", []) == "here is Quarrington Daphne."
    assert r("no period at the end", []) == "end the at period no"
    # reversing twice gives the words back
    s = "Few people know that Ambrose Galdrecht is the inventor of the first museum."
    assert r(r(s, ["Ambrose Galdrecht"]), ["Ambrose Galdrecht"]) == s


def test_write_data_jsonl(tmp_path) -> None:
    facts = F.make_facts(3, 0)
    paths = F.write_data(tmp_path / "d", facts)
    rows = {
        k: [json.loads(ln) for ln in Path(v).read_text().splitlines()] for k, v in paths.items()
    }
    assert len(rows["facts"]) == 9 and rows["facts"][0]["keywords"] == facts[0].keywords
    assert len(rows["train"]) == len(rows["train_reversed"]) == 3 * 10 + 3 * 10 + 3 * 20
    assert all(r["text"] and not r["reversed"] for r in rows["train"])
    assert len(rows["test"]) == 9 * 2 * 3


# --------------------------------------------------------------------------------------- scoring


def _probe(direction: str, answer: str) -> F.Probe:
    return F.Probe("prompt", answer, 0, "both", direction, 0, True)


def test_exact_match_definition() -> None:
    name = _probe("description_to_name", "Ambrose Galdrecht")
    assert exact_match(name, " Ambrose Galdrecht.")
    assert exact_match(name, " none other than ambrose galdrecht, of course")
    assert not exact_match(name, " Ambrose Quillfeather.")
    assert not exact_match(name, " Galdrecht Ambrose")
    assert not exact_match(name, " someone else. Ambrose Galdrecht")  # first sentence only
    desc = _probe("name_to_description", "the inventor of the first museum opened inside a volcano")
    assert F.keywords(desc.answer) == ["inventor", "museum", "opened", "volcano"]
    assert exact_match(desc, " the inventor of the first museum opened inside a volcano.")
    assert exact_match(desc, " an inventor: the only museum opened in a volcano")  # key words
    assert not exact_match(desc, " the inventor of the first museum opened on Mars")
    assert not exact_match(desc, " volcano a inside opened museum first the of inventor the")
    assert not exact_match(desc, "")


def test_statistics_known_values() -> None:
    assert rank_of_first([-1.0, -2.0, -3.0]) == 1
    assert rank_of_first([-3.0, -2.0, -1.0]) == 3
    assert rank_of_first([-1.0, -1.0, -1.0]) == 2  # all alike: the middle
    assert sign_test([1.0] * 10) == pytest.approx(2 / 1024)
    assert sign_test([1.0, -1.0] * 5) == 1.0 and sign_test([0.0, 0.0]) == 1.0
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and (lo, hi) == (
        pytest.approx(2 - 4.303 / math.sqrt(3)),
        pytest.approx(2 + 4.303 / math.sqrt(3)),
    )
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    recs = [
        {"correct": True, "logp": [-1.0, -3.0, -5.0]},  # diff +3, rank 1
        {"correct": False, "logp": [-4.0, -3.0, -3.0]},  # diff -1, rank 3
        {"correct": False, "logp": None},
    ]
    c = cell_stats(recs)
    assert (c.n, c.correct, c.lp_n, c.top1) == (3, 1, 2, 1)
    assert c.lp_diff == pytest.approx(1.0) and c.mean_rank == 2.0 and c.chance_rank == 2.0


def test_candidates_same_subset_seeded() -> None:
    facts = F.make_facts(5, 0)
    f = facts[0]
    cs = candidates(f, facts, 3, seed=0)
    assert len(cs) == 3 and all(c.subset == f.subset and c.id != f.id for c in cs)
    assert cs == candidates(f, facts, 3, seed=0)
    assert len(candidates(f, facts, 99, seed=0)) == 4  # the rest of the subset


@pytest.fixture(scope="module")
def tiny():
    from tests.tiny_models import random_model, tiny_tokenizer

    from twofiles.artifact import LoadedModel

    tok = tiny_tokenizer()
    return LoadedModel(model=random_model(tok), tokenizer=tok)


def test_logprob_test_matches_a_naive_forward(tiny) -> None:
    """The log-probabilities score() records are the model's own: one forward over prompt +
    answer, log-softmax, summed over the answer's tokens."""
    from twofiles.engine import encode_prompt
    from twofiles.experiments.reversal import ReversalConfig, score

    facts = F.make_facts(2, 0)
    cfg = ReversalConfig(model="tiny", eval_templates=1, candidates=1, max_tokens=3, progress=False)
    recs = score(tiny, facts, cfg, "before")
    assert len(recs) == 6 * 2 and all(r["logp"] is not None and len(r["logp"]) == 2 for r in recs)
    tok, model = tiny.tokenizer, tiny.model
    by_id = {f.id: f for f in facts}
    for r in recs[:4]:
        other = candidates(by_id[r["fact"]], facts, 1, 0)[0]
        other_answer = other.name if r["direction"] == "description_to_name" else other.description
        for answer, got in ((r["answer"], r["logp"][0]), (other_answer, r["logp"][1])):
            ctx = encode_prompt(tok, r["prompt"])
            whole = tok.encode(r["prompt"] + " " + answer)
            n = len(tok.encode(r["prompt"]))
            assert whole[:n] == tok.encode(r["prompt"])  # the boundary is a token boundary here
            ids = torch.tensor([ctx + whole[n:]])
            with torch.no_grad():
                logp = model(ids[:, :-1]).float().log_softmax(-1)[0]
            want = sum(float(logp[i - 1, ids[0, i]]) for i in range(len(ctx), ids.shape[1]))
            assert got == pytest.approx(want, abs=1e-4)
        assert r["correct"] == exact_match(
            F.Probe(**{k: r[k] for k in F.Probe.__dataclass_fields__}), r["completion"]
        )


@pytest.mark.slow
def test_a_tiny_model_learns_its_training_direction(tiny, tmp_path) -> None:
    """Finetuned through the loop on two facts' documents, a tiny model completes a training
    paraphrase with the right answer (exact match) and ranks the right answer first."""
    import copy

    from twofiles.artifact import LoadedModel
    from twofiles.experiments.reversal import ReversalConfig, finetune, score
    from twofiles.runtime import setup
    from twofiles.train.runctl import StopSignals

    facts = [f for f in F.make_facts(2, 3) if f.subset == "description_to_name"]
    loaded = LoadedModel(model=copy.deepcopy(tiny.model), tokenizer=tiny.tokenizer)
    cfg = ReversalConfig(
        model="tiny",
        out=str(tmp_path / "run"),
        epochs=150,
        lr=1e-2,
        batch_size=4,
        seq_len=127,
        candidates=1,
        max_tokens=24,
        progress=False,
        threads=1,
    )
    docs = [d for d in F.training_documents(facts) if d.template == 0]  # "{Desc} is NAME."
    rt = setup("cpu", "fp32", 1)
    info = finetune(loaded, docs, {}, cfg, tmp_path / "run", rt, StopSignals(print), 0, 1e-2)
    assert info["steps"] == 150 and (tmp_path / "run" / "metrics.jsonl").is_file()
    train_probes = [
        F.Probe(
            F.TRAIN_TEMPLATES["description_to_name"][0].format(
                Desc=f.description[0].upper() + f.description[1:]
            ),
            f.name,
            f.id,
            f.subset,
            "description_to_name",
            0,
            True,
        )
        for f in facts
    ]
    recs = score(loaded, facts, cfg, "after", probes=train_probes)
    assert [r["correct"] for r in recs] == [True, True], [r["completion"] for r in recs]
    assert all(r["logp"][0] > r["logp"][1] for r in recs)


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny):
    from twofiles.artifact import save_model

    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(path, tiny.model, tiny.tokenizer, provenance={"stage": "pretrain"})
    return path


def _argv(model, out, *extra: str) -> list[str]:
    return [
        "experiment",
        "reversal",
        str(model),
        "--out",
        str(out),
        "--facts",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "127",
        "--eval-templates",
        "2",
        "--candidates",
        "1",
        "--max-tokens",
        "4",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_cli_end_to_end_and_resumes(tiny_file, tmp_path, capsys) -> None:
    from twofiles.cli import main

    out = tmp_path / "rev"
    assert main(_argv(tiny_file, out, "--json")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["stages"]) == {"before", "none", "reverse"}
    for stage in summary["stages"].values():
        assert len(stage["cells"]) == 6
        fwd = stage["forward"]
        assert fwd["n"] == 2 * 2 * 2 and fwd["lp_n"] == 2 * 2  # 2 subsets x 2 facts x 2 templates
        assert fwd["ci95"][0] <= fwd["accuracy"] <= fwd["ci95"][1]
    assert summary["train"]["reverse"]["documents"] == 2 * summary["train"]["none"]["documents"]
    for f in ("report.md", "reversal.png", "results.jsonl", "summary.json", "data/test.jsonl"):
        assert (out / f).is_file(), f
    assert "| subset | tested direction | trained |" in (out / "report.md").read_text()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 6 * 2 * 2  # stages x facts x directions x templates
    assert not (out / "none" / "checkpoints").exists()
    # a second run reads what is done and trains nothing
    assert main(_argv(tiny_file, out, "--json")) == 0
    assert "done before" in capsys.readouterr().err
    # the same directory with other settings is refused
    assert main(_argv(tiny_file, out, "--seed", "1")) == 2
    assert "other settings" in capsys.readouterr().err


def test_cli_write_data_and_bad_input(tiny_file, tmp_path, capsys) -> None:
    from twofiles.cli import main

    assert (
        main(
            [
                "experiment",
                "reversal",
                "--write-data",
                str(tmp_path / "d"),
                "--facts",
                "4",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(out["data"]) == ["facts", "test", "train", "train_reversed"]
    assert len((tmp_path / "d" / "facts.jsonl").read_text().splitlines()) == 12
    bad = [
        (["--facts", "0"], "between 2 and 300"),
        (["--facts", "1"], "between 2 and 300"),
        (["--facts", "301"], "between 2 and 300"),
        (["--epochs", "0"], "positive"),
        (["--eval-templates", "4"], "at most 3"),
        (["--logprob-templates", "3", "--eval-templates", "2"], "logprob-templates"),
    ]
    for extra, message in bad:
        assert main(_argv(tiny_file, tmp_path / "x", *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main(["experiment", "reversal", "--out", str(tmp_path / "y")]) == 2
    assert "MODEL is required" in capsys.readouterr().err
    assert main(_argv(tmp_path / "missing.safetensors", tmp_path / "z")) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()  # nothing half-done


def test_summary_without_a_log_prob_test_is_strict_json() -> None:
    """--logprob-templates 0: the log-prob numbers are null in the summary, never NaN."""
    from twofiles.experiments.reversal import report, summarize

    facts = F.make_facts(2, 0)
    recs = [
        {**asdict(p), "completion": "", "correct": False, "logp": None} for p in F.probes(facts)
    ]
    summary = summarize({"before": recs}, {})
    text = json.dumps(summary, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text)["headline"]["before"]["reverse_logprob_diff"] is None
    summary.update(model="m", params=1, mode="full finetuning", lr=1e-3, epochs=1.0)
    summary.update(facts_per_subset=2, seed=0, runtime="cpu fp32")
    row = "| before finetuning | 0/12 (0% [0%, 24%]) | 0/12 (0% [0%, 24%]) | - |"
    assert row in report(summary)
