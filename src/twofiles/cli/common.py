"""Helpers shared by the verb modules (not a verb itself)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a one-line JSON summary as the last line of stdout")


def emit_json(summary: dict[str, Any]) -> None:
    """The scripting contract: one JSON object, alone on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)
