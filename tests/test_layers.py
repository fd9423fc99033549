"""The package's layers, checked by import-linter (contracts in pyproject.toml), and no cycles.

Imports inside functions count: they are how an upward import or a cycle hides from a reader
(and from `import twofiles`), so the graph includes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

import twofiles

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(twofiles.__file__).resolve().parents[1]  # the twofiles these tests import


def lint_imports(cwd: Path, src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the `twofiles` found in `src` against `config`; no cache, no logo."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def import_cycles(package: str) -> list[list[str]]:
    """Every set of modules that import one another in a cycle (strongly connected components of
    more than one module), a package's __init__ and its submodules included."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def test_import_contracts_hold() -> None:
    result = lint_imports(ROOT, SRC, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycles_anywhere_in_the_package() -> None:
    assert import_cycles("twofiles") == []


def test_an_upward_import_inside_a_function_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts have teeth: the package with one lazy import from the engine up into the
    server (and one cycle through the tools package) is refused, naming the import."""
    src = tmp_path / "src"
    shutil.copytree(SRC / "twofiles", src / "twofiles", ignore=shutil.ignore_patterns("*.pyc"))
    with open(src / "twofiles" / "engine.py", "a") as f:
        f.write(
            "\n\ndef _upward():\n    from twofiles.serve import settings\n\n    return settings\n"
        )
    with open(src / "twofiles" / "tools" / "base.py", "a") as f:
        f.write(
            "\n\ndef _cycle():\n    from twofiles.tools import run_tool\n\n    return run_tool\n"
        )
    result = lint_imports(tmp_path, src, ROOT / "pyproject.toml")
    assert result.returncode == 1
    assert "twofiles.engine is not allowed to import twofiles.serve" in result.stdout
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_layers import import_cycles; print(json.dumps(import_cycles('twofiles')))"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [
        [
            "twofiles.tools",
            "twofiles.tools.base",
            "twofiles.tools.calculator",
            "twofiles.tools.python",
        ]
    ]
