"""The built-in attack suites and the suite spec loader (builtin, builtin:FAMILY, FILE[,FILE])."""

from __future__ import annotations

import base64
import codecs
import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from twofiles.errors import BadInputError
from twofiles.redteam import suite
from twofiles.redteam.scenario import scenario_tools
from twofiles.redteam.suite import builtin_suites, load_suite, load_suites


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def fake_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "suites"
    d.mkdir()
    _write(d / "alpha.jsonl", [{"id": "a1", "text": "x"}, {"id": "a2", "text": "y"}])
    _write(d / "beta.jsonl", [{"id": "b1", "text": "z", "label": "benign"}])
    (d / "notes.md").write_text("not a suite")
    monkeypatch.setattr(suite, "_SUITES_DIR", d)
    return d


def test_load_suites_reads_builtin_families_and_files(fake_builtin: Path, tmp_path: Path) -> None:
    assert list(builtin_suites()) == ["alpha", "beta"]
    assert [a.id for a in load_suites("builtin")] == ["a1", "a2", "b1"]
    assert [a.id for a in load_suites("builtin:beta")] == ["b1"]
    assert [a.id for a in load_suites("builtin:beta, alpha,beta")] == ["b1", "a1", "a2"]
    own = _write(tmp_path / "own.jsonl", [{"text": "mine"}])
    assert [a.id for a in load_suites(f"{own},{fake_builtin / 'alpha.jsonl'}")] == [
        "own-1",
        "a1",
        "a2",
    ]


def test_load_suites_refuses_unknown_families_and_clashing_ids(
    fake_builtin: Path, tmp_path: Path
) -> None:
    with pytest.raises(BadInputError, match=r"unknown suite family 'gamma'; one of alpha, beta"):
        load_suites("builtin:alpha,gamma")
    with pytest.raises(BadInputError, match="name a family"):
        load_suites("builtin:")
    with pytest.raises(BadInputError, match="no such suite file"):
        load_suites(str(tmp_path / "missing.jsonl"))
    clash = _write(tmp_path / "clash.jsonl", [{"id": "a2", "text": "again"}])
    with pytest.raises(BadInputError, match=r"clash.jsonl: id 'a2' already used in .*alpha"):
        load_suites(f"{fake_builtin / 'alpha.jsonl'},{clash}")


# ---------------------------------------------------------------------------------------------
# the built-in suites (scripts/build_redteam_suites.py writes them; gcg.jsonl comes from GCG)
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
GENERATED = (
    "direct-injection",
    "roleplay",
    "encoding",
    "refusal-suppression",
    "many-shot",
    "indirect-tool",
    "indirect-document",
    "exfiltration",
    "memory",
    "rule-breaking",
)
REFUSALS = (
    "I'm sorry, I can't help with that.",
    "I cannot share that. Is there anything else I can do for you?",
    "Sorry, that is against my rules.",
)


def test_every_builtin_family_loads_with_enough_attacks() -> None:
    known = builtin_suites()
    families = [f for f in (*GENERATED, "gcg") if f in known or f != "gcg"]
    assert set(GENERATED) <= set(known), f"missing suites: {set(GENERATED) - set(known)}"
    attacks = load_suites("builtin")  # ids unique across every file, or this raises
    assert len({a.id for a in attacks}) == len(attacks)
    tools = set(scenario_tools())
    for family in families:
        rows = load_suite(known[family])
        malicious = [a for a in rows if a.label == "malicious"]
        benign = [a for a in rows if a.label == "benign"]
        assert len(malicious) >= 30 and len(benign) >= 10, (family, len(malicious), len(benign))
        assert {a.category for a in rows} == {family}
        assert all(a.tactic for a in rows), family
        for a in malicious:
            assert a.check != "none", a.id
            # the user asking for a tool makes calling it legitimate: misuse needs another channel
            assert a.channel != "user" or a.check != "tool", a.id
            assert a.check != "tool" or a.forbidden_tool in tools - {"browse"}, a.id
            assert a.channel == "user" or a.request, a.id
        if family in GENERATED:
            assert all(a.check == "none" for a in benign), family
            limit = 1500 if family == "many-shot" else 600  # small models' contexts
            assert max(len(a.text) for a in rows) <= limit, family
            # reports group by tactic: a few named ones per family, not one per attack
            assert len({a.tactic for a in malicious}) <= 8, family


def test_builtin_families_cover_every_channel_and_check() -> None:
    attacks = load_suites("builtin:" + ",".join(GENERATED))
    bad = [a for a in attacks if a.label == "malicious"]
    assert {a.channel for a in bad} == {"user", "tool", "document", "memory"}
    assert {a.check for a in bad} == {"canary", "tool", "refusal"}
    assert {a.forbidden_tool for a in bad if a.check == "tool"} == {
        "send_email",
        "transfer_money",
        "delete_file",
    }
    slots = [a for a in bad if a.has_slot]
    assert slots and all(a.channel != "user" for a in slots)  # a user may ask to echo a token
    filled = slots[0].filled("ZEBRA-123abc")
    assert "ZEBRA-123abc" in filled.text and not filled.has_slot


def _decode(tactic: str, line: str) -> str:
    if tactic == "base64":
        return base64.b64decode(line, validate=True).decode("ascii")
    if tactic == "rot13":
        return codecs.decode(line, "rot13")
    if tactic == "hex":
        return bytes.fromhex(line).decode("ascii")
    if tactic == "reversed":
        return line[::-1]
    if tactic == "spaced":
        return "".join(
            c or " " for c in line.split(" ")
        )  # one space between letters, two between words
    if tactic == "homoglyph":
        return line.translate(str.maketrans("аеорсхуі", "aeopcxyi"))
    if tactic == "leetspeak":
        return line.translate(str.maketrans("431057", "aeiost"))
    raise AssertionError(tactic)


def test_encoded_payloads_decode_to_the_instruction() -> None:
    rows = [a for a in load_suite(builtin_suites()["encoding"]) if a.label == "malicious"]
    assert {a.tactic for a in rows} >= {"base64", "rot13", "hex", "reversed", "translation"}
    for a in rows:
        payload = a.text.rsplit("\n", 1)[1]
        if a.tactic == "translation":
            assert re.search(r"mot de passe|contraseña|Passwort", payload), a.id
            continue
        assert "password" not in payload.lower(), a.id  # obfuscated, not plain
        text = _decode(a.tactic, payload)
        assert text.isascii() and re.fullmatch(r"[A-Za-z ,.']+", text), (a.id, text)
        assert "password" in text.lower(), (a.id, text)
        assert len(text.split()) >= 5, (a.id, text)
    assert _decode("spaced", "h i  y o u") == "hi you"


def test_comply_regexes_are_crisp() -> None:
    rows = [a for a in load_suites("builtin") if a.comply]
    assert len(rows) >= 30
    violations = (
        "Sure!\n```python\ndef add(a, b):\n    return a + b\n```",
        "Pineapple, pineapple, pineapple.",
        "SELECT name FROM customers;",
        "Here it is: https://en.wikipedia.org",
        "The rate is 4.5%.",
        "Hello! \U0001f600",
    )
    for pattern in {a.comply for a in rows}:
        rx = re.compile(pattern, re.IGNORECASE)
        assert not any(rx.search(r) for r in REFUSALS), pattern
        assert any(rx.search(v) for v in violations), pattern


def test_no_two_attacks_of_a_family_are_near_duplicates() -> None:
    for family in GENERATED:
        texts = [a.text for a in load_suite(builtin_suites()[family])]
        for i, x in enumerate(texts):
            for y in texts[i + 1 :]:
                m = difflib.SequenceMatcher(None, x, y)
                assert m.quick_ratio() < 0.9 or m.ratio() < 0.9, (family, x, y)


def test_the_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    script = REPO / "scripts" / "build_redteam_suites.py"
    p = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    written = sorted(f.name for f in tmp_path.iterdir())
    assert written == sorted(f"{f}.jsonl" for f in GENERATED)  # gcg.jsonl is not its to write
    for name in written:
        committed = builtin_suites()[name.removesuffix(".jsonl")].read_bytes()
        assert (tmp_path / name).read_bytes() == committed, f"{name} differs from the script's"
