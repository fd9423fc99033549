"""Answer extraction for generative tasks: from a model's reply to a comparable answer.

What it owns: the extractors a task spec names (`extract = ...`), the reference answers
(`reference = ...`) and the exact-match rule. Numbers come from `twofiles.answers` when it is
installed (the same extractor the System-2 sampling uses), else from the fallback here, which
follows the same rules. What it leaves to others: generating replies (eval/backends.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_FINAL = (
    re.compile(r"####\s*(-?\$?\d[\d,]*(?:\.\d+)?)"),
    re.compile(r"answer is[:\s]*\$?\s*(-?\$?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE),
)


def normalize_number(s: str) -> str:
    """'1,000' -> '1000', '$18' -> '18', '3.50' -> '3.5', '7.0' -> '7', '-0' -> '0'."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0" if s else s
    return s


def _fallback_extract_number(text: str) -> str | None:
    """The final numeric answer: after '####', after 'the answer is', else the last number."""
    for pattern in _FINAL:
        m = pattern.findall(text)
        if m:
            return normalize_number(m[-1])
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def extract_number(text: str) -> str | None:
    try:
        from twofiles.answers import extract_number as shared
    except ImportError:
        return _fallback_extract_number(text)
    return shared(text)


def gsm8k_reference(answer_field: str) -> str:
    """The number after '####' in a GSM8K answer."""
    try:
        from twofiles.answers import gsm8k_reference as shared
    except ImportError:
        return normalize_number(answer_field.rsplit("####", 1)[-1])
    return shared(answer_field)


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
    """Exact match; numbers also match when equal as numbers ('18' and '18.00')."""
    if extracted is None:
        return False
    if extractor == "number":
        a, b = normalize_number(extracted), normalize_number(reference)
        if a == b:
            return True
        try:
            return float(a) == float(b)
        except ValueError:
            return False
    return extracted == reference
