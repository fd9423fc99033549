"""The built-in attack suites and the suite spec loader (builtin, builtin:FAMILY, FILE[,FILE])."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twofiles.errors import BadInputError
from twofiles.redteam import suite
from twofiles.redteam.suite import builtin_suites, load_suites


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
