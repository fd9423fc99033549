"""Feedback store and export: known answers on a small database, validation naming the field,
malformed rows reported with nothing half-written, concurrent writers, the CLI verb."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from twofiles.errors import BadInputError
from twofiles.feedback import FeedbackStore, export_feedback


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYS = {"role": "system", "content": "Be brief."}
C1 = [SYS, user("Capital of France?")]
C2 = [user("2+2?")]
C3 = [user("Say hi")]
C4 = [user("Spell cat")]
C5 = [user("Colour of the sky?")]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def small_db(path: Path) -> FeedbackStore:
    store = FeedbackStore(path)
    store.record(model="m", messages=C1, reply=bot("Paris."), rating="up")
    store.record(model="m", messages=C1, reply=bot("Lyon."), rating="down")
    store.record(model="m", messages=C2, reply=bot("5"), correction="4")
    store.record(model="m", messages=C3, reply="Hello!", rating="down")
    store.record(
        model="m", messages=C3, reply=bot("Hello!"), rating="up"
    )  # changed its mind: the latest counts
    store.record(model="m", messages=C1, reply=bot("Paris."), rating="up")  # the same verdict twice
    store.record(
        model="m", messages=C4, reply=bot("c-a-t"), rating="up", correction="C-A-T"
    )  # corrected: the upvote is moot
    store.record(
        model="m", messages=C5, reply=bot("Blue."), correction="Blue."
    )  # a correction equal to the reply
    return store


def test_export_known_answer(tmp_path):
    small_db(tmp_path / "fb.sqlite")
    summary = export_feedback(tmp_path / "fb.sqlite", tmp_path / "out")
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl")
    prefs = read_jsonl(tmp_path / "out" / "preferences.jsonl")
    assert sft == [
        {"messages": C1 + [bot("Paris.")]},
        {"messages": C2 + [bot("4")]},
        {"messages": C3 + [bot("Hello!")]},
        {"messages": C4 + [bot("C-A-T")]},
        {"messages": C5 + [bot("Blue.")]},
    ]
    assert prefs == [
        {"messages": C2, "chosen": [bot("4")], "rejected": [bot("5")]},
        {"messages": C4, "chosen": [bot("C-A-T")], "rejected": [bot("c-a-t")]},
        {"messages": C1, "chosen": [bot("Paris.")], "rejected": [bot("Lyon.")]},
    ]
    assert (summary.rows, summary.sft, summary.preferences, summary.skipped) == (8, 5, 3, [])


def test_export_is_read_by_the_conversation_reader(tmp_path):
    from twofiles.chat import read_conversations

    small_db(tmp_path / "fb.sqlite")
    export_feedback(tmp_path / "fb.sqlite", tmp_path / "out")
    convs = read_conversations(tmp_path / "out" / "sft.jsonl")
    assert [[m.role for m in c] for c in convs][:2] == [
        ["system", "user", "assistant"],
        ["user", "assistant"],
    ]
    assert convs[1][-1].content == "4"
    # the preference file's prompt is a conversation too
    prompts = read_conversations(tmp_path / "out" / "preferences.jsonl")
    assert [c[-1].content for c in prompts] == ["2+2?", "Spell cat", "Capital of France?"]


def test_tool_calls_survive_the_round_trip(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'},
            }
        ],
    }
    convo = [user("12*7?"), call, {"role": "tool", "tool_call_id": "c1", "content": "84"}]
    store.record(model="m", messages=convo, reply=bot("84"), rating="up")
    export_feedback(tmp_path / "fb.sqlite", tmp_path / "out")
    (example,) = read_jsonl(tmp_path / "out" / "sft.jsonl")
    got_call = example["messages"][1]["tool_calls"][0]
    assert got_call["function"]["name"] == "calculator"
    assert json.loads(got_call["function"]["arguments"]) == {"expression": "12*7"}
    assert example["messages"][2]["role"] == "tool" and example["messages"][2]["content"] == "84"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rating": "meh"}, "rating"),
        ({"rating": True}, "rating"),
        ({"rating": None}, "rating, correction"),
        ({"correction": "  "}, "correction"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"reply": {"role": "user", "content": "x"}}, "reply.role"),
        ({"reply": 42}, "reply"),
        ({"model": ""}, "model"),
    ],
)
def test_record_rejects_bad_input_naming_the_field(tmp_path, kwargs, field):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    args = {"model": "m", "messages": C2, "reply": bot("4"), "rating": "up", **kwargs}
    with pytest.raises(BadInputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        store.record(**args)
    assert store.count() == 0


def _raw_insert(db: Path, messages: str, reply: str, rating, correction) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO feedback (created, model, messages, reply, rating, correction, meta) VALUES ('t', 'm', ?, ?, ?, ?, '{}')",
            (messages, reply, rating, correction),
        )


def test_malformed_rows_are_reported_and_nothing_is_half_written(tmp_path):
    db = tmp_path / "fb.sqlite"
    small_db(db)
    _raw_insert(db, "[{not json", json.dumps(bot("x")), 1, None)  # row 9
    _raw_insert(
        db, json.dumps([{"role": "robot", "content": "x"}]), json.dumps(bot("x")), 1, None
    )  # row 10
    _raw_insert(db, json.dumps(C2), json.dumps(bot("x")), 5, None)  # row 11
    _raw_insert(db, json.dumps(C2), json.dumps(bot("x")), None, None)  # row 12
    out = tmp_path / "out"
    out.mkdir()
    (out / "sft.jsonl").write_text("previous export\n")
    with pytest.raises(
        BadInputError, match=r"fb\.sqlite: row 9: messages: invalid JSON.*and 3 more"
    ):
        export_feedback(db, out)
    assert (out / "sft.jsonl").read_text() == "previous export\n"  # untouched
    assert sorted(p.name for p in out.iterdir()) == [
        "sft.jsonl"
    ]  # no temp files, no partial second file

    summary = export_feedback(db, out, skip_bad=True)
    assert [s.split(":")[0] for s in summary.skipped] == ["row 9", "row 10", "row 11", "row 12"]
    assert "messages[0].role" in summary.skipped[1] and "rating" in summary.skipped[2]
    assert (summary.rows, summary.sft, summary.preferences) == (12, 5, 3)
    assert len(read_jsonl(out / "sft.jsonl")) == 5


def test_export_rejects_a_file_that_is_not_a_feedback_database(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n" * 100)
    with pytest.raises(BadInputError, match="not a twofiles feedback database"):
        export_feedback(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(BadInputError, match="no such feedback database"):
        export_feedback(tmp_path / "missing.sqlite", tmp_path / "out")
    assert not (tmp_path / "missing.sqlite").exists()  # exporting never creates a database
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _writer(db: str, worker: int, n: int) -> None:
    store = FeedbackStore(db)
    for i in range(n):
        store.record(
            model=f"w{worker}",
            messages=[user(f"q{worker}-{i}")],
            reply=bot(f"a{i}"),
            rating="up" if i % 2 else "down",
        )


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path):
    db = str(tmp_path / "fb.sqlite")
    FeedbackStore(db)
    ctx = multiprocessing.get_context(
        "spawn"
    )  # a clean interpreter per writer, like separate servers
    procs = [ctx.Process(target=_writer, args=(db, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = FeedbackStore(db).rows()
    assert len(rows) == 160 and len({r.id for r in rows}) == 160
    assert {(r.model, r.messages[0]["content"]) for r in rows} == {
        (f"w{w}", f"q{w}-{i}") for w in range(4) for i in range(40)
    }


def test_cli_export(tmp_path, capsys):
    from twofiles.cli import main

    small_db(tmp_path / "fb.sqlite")
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                str(tmp_path / "fb.sqlite"),
                "--out",
                str(tmp_path / "out"),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["sft"], summary["preferences"], summary["skipped"]) == (5, 3, 0)
    assert Path(summary["sft_path"]).is_file()

    _raw_insert(tmp_path / "fb.sqlite", "oops", "{}", 1, None)
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                str(tmp_path / "fb.sqlite"),
                "--out",
                str(tmp_path / "out2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "row 9" in err and "Traceback" not in err


@pytest.mark.slow
def test_exported_sft_file_finetunes_a_model(tmp_path, capsys):
    """The export is what `twofiles sft` reads: a couple of steps on it run end to end."""
    from tiny_models import random_model, tiny_tokenizer
    from twofiles.artifact import save_model
    from twofiles.cli import main

    tok = tiny_tokenizer()
    save_model(tmp_path / "m.safetensors", random_model(tok, max_seq_len=128), tok)
    small_db(tmp_path / "fb.sqlite")
    export_feedback(tmp_path / "fb.sqlite", tmp_path / "out")
    sft = str(tmp_path / "out" / "sft.jsonl")
    argv = [
        "sft",
        str(tmp_path / "m.safetensors"),
        "--data",
        sft,
        "--val-data",
        sft,
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--skill-tasks",
        "0",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["target_tokens"] > 0
    assert Path(summary["model_path"]).is_file()


def test_arena_votes_become_preference_pairs(tmp_path):
    from twofiles.arena import ArenaStore

    arena = ArenaStore(tmp_path / "arena.sqlite")
    arena.record_battle(
        prompt="2+2?",
        model_a="x",
        model_b="y",
        reply_a="4",
        reply_b="5",
        winner="a",
        meta={"system": "Be brief."},
    )
    arena.record_battle(
        prompt="Capital of France?",
        model_a="x",
        model_b="y",
        reply_a="Lyon.",
        reply_b="Paris.",
        winner="b",
    )
    arena.record_battle(
        prompt="Hi", model_a="x", model_b="y", reply_a="Hello", reply_b="Hey", winner="tie"
    )
    arena.record_battle(
        prompt="Hi", model_a="x", model_b="y", reply_a="...", reply_b="??", winner="both_bad"
    )
    small_db(tmp_path / "fb.sqlite")
    summary = export_feedback(
        tmp_path / "fb.sqlite", tmp_path / "out", arena_db=tmp_path / "arena.sqlite"
    )
    prefs = read_jsonl(tmp_path / "out" / "preferences.jsonl")
    assert (summary.preferences, summary.arena_preferences) == (5, 2)
    assert prefs[3:] == [
        {"messages": [SYS, user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]},
        {
            "messages": [user("Capital of France?")],
            "chosen": [bot("Paris.")],
            "rejected": [bot("Lyon.")],
        },
    ]
    with pytest.raises(BadInputError, match="no such arena database"):
        export_feedback(
            tmp_path / "fb.sqlite", tmp_path / "out2", arena_db=tmp_path / "missing.sqlite"
        )
    assert not (tmp_path / "out2" / "sft.jsonl").exists()
