"""Final answers out of reasoning text: the number a solution ends on, and the vote among many.

What it owns: `extract_number` (the final numeric answer of a free-form reasoning text),
`gsm8k_reference` (the gold answer of a GSM8K `answer` field, which ends in "#### N"),
`normalize_number` (one spelling per value, so "1,000", "1000.0" and "$1000" compare equal) and
`majority_vote` (self-consistency's aggregation). What it leaves to others: producing the text
(engine, system2), scoring against references (eval).

Where the answer is, in order of trust:
1. after the last "####" (GSM8K's own marker, which models finetuned on it imitate);
2. after the last "answer is" / "answer:" (how chain-of-thought prompts ask models to conclude);
3. in the last \\boxed{...} (the MATH convention);
4. otherwise the last number in the text (the usual fallback in GSM8K evaluation harnesses).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

__all__ = ["extract_number", "gsm8k_reference", "majority_vote", "normalize_number"]

# A signed number with optional thousands separators and decimals: -1,234.50 | 3 | .5 | 2.
# The comma group needs exactly three digits so "3,4" (a list) stays two numbers.
_NUMBER = re.compile(r"(?<![\w.])[-−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?![\d])")
_MARKERS = (
    re.compile(r"####"),
    re.compile(r"answer\s*(?:is|:|=)", re.IGNORECASE),
    re.compile(r"\\boxed\{"),
)


def normalize_number(text: str) -> str | None:
    """One canonical spelling of a number: no commas, currency sign or trailing zeros ("1,000.50"
    -> "1000.5", "7.0" -> "7", "-0" -> "0"); None if `text` is not a number."""
    s = text.strip().replace(",", "").replace("$", "").replace("−", "-")
    if s.endswith("."):
        s = s[:-1]
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    out = format(value.normalize(), "f")
    return out


def _numbers(text: str) -> list[str]:
    found = []
    for m in _NUMBER.finditer(text):
        tok = m.group(0)
        if not any(c.isdigit() for c in tok):
            continue
        n = normalize_number(tok)
        if n is not None:
            found.append(n)
    return found


def extract_number(text: str) -> str | None:
    """The final numeric answer of a reasoning text, normalised (see normalize_number), or None
    when it holds no number. "so the answer is 1,234." -> "1234"; "#### 42" -> "42"."""
    for marker in _MARKERS:
        hits = list(marker.finditer(text))
        if hits:
            found = _numbers(text[hits[-1].end() :])
            if found:
                return found[0]
    found = _numbers(text)
    return found[-1] if found else None


def gsm8k_reference(answer_field: str) -> str:
    """The gold answer of a GSM8K item: the number after its final "####", normalised.
    Raises ValueError if the field has no "#### N" line (not a GSM8K answer)."""
    _, sep, tail = answer_field.rpartition("####")
    found = _numbers(tail) if sep else []
    if not found:
        raise ValueError(f"not a GSM8K answer (no '#### N' at the end): {answer_field[-60:]!r}")
    return found[0]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer; ties go to the answer seen first (so the order of
    samples, not hash order, decides). None if every answer is None."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
