"""The peers tests compare against (llama.cpp, lm-evaluation-harness) and the real model (SmolLM2):
`make test` installs them.

A missing peer fails the tests that need it, with the command that installs it; it never skips,
because a skip that CI always takes checks nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest


def require(module: str, install: str) -> ModuleType:
    """`module` imported, or the test fails saying how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise  # the peer is there but broken: show the real error
        pytest.fail(f"{module} is not installed: {install}", pytrace=False)


def require_smollm2() -> Path:
    """The real model's file (`twofiles pull smollm2`, which `make test` runs), or the test fails
    saying how to fetch it."""
    from twofiles.formats import alias_path

    path = alias_path("smollm2")
    if not path.is_file():
        pytest.fail(f"{path} is missing: twofiles pull smollm2", pytrace=False)
    return path
