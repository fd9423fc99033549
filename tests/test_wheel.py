"""The package as users get it: `python -m build` makes an sdist and a wheel (the wheel built from
the sdist, so both must be complete), the wheel installs into a fresh virtual environment outside
the repository, and the speedrun runs there on the data the wheel carries.

The fresh environment sees this environment's third-party packages (torch alone is ~700 MB to
install again) through a directory of links that leaves out twofiles itself, so the only twofiles
it can import is the one the wheel installed; pip resolves the wheel's declared dependencies
against those packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import twofiles

REPO = Path(__file__).resolve().parents[1]

# what the package reads at run time from its own files (pyproject's package-data)
CARRIED = [
    "twofiles/py.typed",
    "twofiles/data/datasets/shakespeare.jsonl.xz",
    "twofiles/data/datasets/PROVENANCE.md",
    "twofiles/serve/static/chat.html",
    "twofiles/serve/static/chat.js",
    "twofiles/serve/static/arena.html",
    "twofiles/serve/static/leaderboard.html",
    "twofiles/serve/static/style.css",
    "twofiles/eval/tasks/arithmetic.toml",
    "twofiles/eval/tasks/arithmetic.jsonl",
    "twofiles/eval/tasks/skills.toml",
    "twofiles/rag/collection/questions.jsonl",
    "twofiles/rag/collection/PROVENANCE.md",
    "twofiles/redteam/suites/direct-injection.jsonl",
    "twofiles/guard/data/labelled.jsonl",
    "twofiles/guard/data/classifier.safetensors",
    "twofiles/standalone/run.py",
    "twofiles/tools/_python_child.py",
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("twofiles-*.whl")
    return wheel


@pytest.mark.slow
def test_sdist_and_wheel_carry_the_package_data(dist: Path) -> None:
    wheel = _wheel(dist)
    assert wheel.name.startswith(f"twofiles-{twofiles.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in CARRIED if f not in names]
    assert not missing, f"the wheel lacks {missing}"
    # every built-in task spec and web page in the tree, not only the ones listed above
    tree = {
        str(p.relative_to(REPO / "src"))
        for pattern in (
            "eval/tasks/*",
            "serve/static/*",
            "data/datasets/*",
            "rag/collection/*.*",
            "rag/collection/articles/*",
            "redteam/suites/*",
        )
        for p in (REPO / "src" / "twofiles").glob(pattern)
    }
    assert tree <= names, f"the wheel lacks {sorted(tree - names)}"
    assert not any(n.startswith("tests/") or "__pycache__" in n for n in names)

    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    for field in (
        f"Version: {twofiles.__version__}",
        "License-Expression: MIT",
        "Requires-Python: >=3.11",
        "Project-URL: Changelog",
        "Provides-Extra: all",
        "Classifier: Programming Language :: Python :: 3.11",
    ):
        assert field in metadata, f"{field!r} not in the wheel's METADATA"
    entry_points = zipfile.ZipFile(wheel).read(meta.replace("METADATA", "entry_points.txt"))
    assert b"twofiles = twofiles.cli:main" in entry_points

    (sdist,) = dist.glob("twofiles-*.tar.gz")
    with tarfile.open(sdist) as tar:
        sdist_names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for f in CARRIED:
        assert "src/" + f in sdist_names, f"the sdist lacks src/{f}"
    for f in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "tests/conftest.py"):
        assert f in sdist_names, f"the sdist lacks {f}"


def _fresh_env(root: Path) -> Path:
    """A new virtual environment whose only twofiles is what gets installed into it."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "env")
    python = root / "env" / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    links = root / "deps"
    links.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        lowered = entry.name.lower()
        if lowered.startswith(("twofiles", "__editable__", "_twofiles")) or entry.suffix == ".pth":
            continue
        (links / entry.name).symlink_to(entry)
    (site / "_deps_from_parent.pth").write_text(str(links) + "\n")
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(dist: Path, tmp_path: Path) -> None:
    python = _fresh_env(tmp_path)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1", HOME=str(tmp_path / "home"))
    # pip, from the linked packages, installs the wheel; its dependencies must all be satisfied
    p = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-build-isolation",
            str(_wheel(dist)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    twofiles_cmd = python.parent / "twofiles"
    assert twofiles_cmd.is_file(), "the console script was not installed"

    where = subprocess.run(
        [str(python), "-c", "import twofiles; print(twofiles.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    assert str(tmp_path / "env") in where.stdout and str(REPO) not in where.stdout

    version = subprocess.run(
        [str(twofiles_cmd), "--version"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.strip() == f"twofiles {twofiles.__version__}"

    out = tmp_path / "run"
    run = subprocess.run(
        [
            str(twofiles_cmd),
            "speedrun",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert 1.0 < summary["val_bpb"] < 3.7  # beats uniform guessing over the tiny vocabulary
    assert Path(summary["model_path"]).is_file() and (out / "report.md").is_file()
