"""Answer extraction for generative tasks: from a model's reply to a comparable answer.

What it owns: the extractors a task spec names (`extract = ...`), the reference answers
(`reference = ...`) and the exact-match rule. Numbers come from `twofiles.answers`, the same
extractor System-2 sampling votes with, so a score and a vote never disagree on what a reply's
answer is. What it leaves to others: generating replies (eval/backends.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twofiles.answers import extract_number, gsm8k_reference, normalize_number


def _first_line(text: str) -> str | None:
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "number": extract_number,
    "exact": lambda text: text.strip(),
    "first_line": _first_line,
}


def reference_answer(kind: str, value: Any) -> str:
    if kind == "gsm8k":
        return gsm8k_reference(str(value))
    return str(value).strip()


def is_match(extracted: str | None, reference: str, extractor: str) -> bool:
    """Exact match; numbers match when equal as numbers ('18' and '18.00')."""
    if extracted is None:
        return False
    if extractor == "number":
        value = normalize_number(extracted)
        return value is not None and value == normalize_number(reference)
    return extracted == reference
