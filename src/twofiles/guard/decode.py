"""Decode-and-rescan: the readable texts an obfuscated input may hide.

What it owns: `decodings(text)`, the (chain, decoded text) pairs worth scanning again: base64,
hex and URL-encoded segments, the whole text under rot13, reversed, spaced-out letters joined,
leetspeak read as letters, and homoglyphs (Unicode confusables) folded to ASCII with NFKC and a
Cyrillic/Greek look-alike table; up to two decodings deep ("base64>rot13"). A decoding is kept
only when it changes the text and reads as text (printable, and for the whole-text transforms
more English than what it came from), so benign input rarely yields anything to rescan.
What it leaves to others: judging the decoded text (rules.py, classifier.py through the facade).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from urllib.parse import unquote

# Cyrillic and Greek letters that render like Latin ones (Unicode's confusables.txt, the subset
# attackers use: NFKC leaves them alone because they are different letters, not variants).
HOMOGLYPHS = str.maketrans(
    {
        "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k",
        "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y",
        "х": "x", "ԝ": "w", "ү": "y", "ɡ": "g", "ӏ": "l",
        "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K",
        "М": "M", "О": "O", "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y",
        "α": "a", "ο": "o", "ν": "v", "ρ": "p", "τ": "t", "υ": "u", "ι": "i", "κ": "k",
        "ε": "e", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K",
        "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    }
)  # fmt: skip
# zero-width characters split words without showing: dropped before anything else
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                      "$": "s", "!": "i", "|": "l", "8": "b", "9": "g"})  # fmt: skip

_B64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}(?:[\s:,]|\\x|0x)?){8,}")
_URLENC = re.compile(r"(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9._~+-]){3,}")
# letters one separator apart, at least five: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e"
_SPACED = re.compile(r"(?<!\w)(?:\w[ .\-_*/|]{1,2}){4,}\w(?!\w)")
_LEET_WORD = re.compile(r"\b\w*[a-zA-Z][0-9@$!|]+\w*|\b[0-9@$!|]+[a-zA-Z]\w*")

# the commonest English words (and the ones attacks are made of): how "English" a text reads
_COMMON_WORDS = (
    "the be to of and a in that have i it for not on with he as you do at this but his by from "
    "they we say her she or an will my one all would there their what so up out if about who get "
    "which go me when make can like time no just him know take people into year your good some "
    "could them see other than then now look only come its over think also back after use two how "
    "our work first well way even new want because any these give day most us is are was were "
    "been has had did said tell me please ignore previous instructions rules system prompt secret "
    "password reveal print show repeat above below forget disregard must never always now "
    "follow answer reply assistant user write send email delete file"
)
_COMMON = frozenset(_COMMON_WORDS.split())
_WORD = re.compile(r"[A-Za-z']+")


def english_ratio(text: str) -> float:
    """The share of a text's words that are common English words (0 when it has none)."""
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(w in _COMMON for w in words) / len(words) if words else 0.0


def _printable(s: str) -> bool:
    if not s.strip():
        return False
    ok = sum(c.isprintable() or c in "\n\t\r" for c in s)
    return ok / len(s) >= 0.95 and sum(c.isalpha() for c in s) >= 0.5 * len(s.replace(" ", ""))


def _b64(segment: str) -> str | None:
    seg = segment.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(seg + "=" * (-len(seg) % 4), validate=True)
        out = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return out if _printable(out) and " " in out.strip() else None


def _hex(segment: str) -> str | None:
    digits = re.sub(r"\\x|0x|[\s:,]", "", segment)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        out = bytes.fromhex(digits).decode("utf-8")
    except ValueError:
        return None
    return out if _printable(out) and " " in out.strip() else None


def fold_homoglyphs(text: str) -> str:
    """NFKC (fullwidth, ligatures, math letters) then Cyrillic/Greek look-alikes to Latin."""
    return unicodedata.normalize("NFKC", text.translate(_INVISIBLE)).translate(HOMOGLYPHS)


def _segments(text: str) -> list[tuple[str, str]]:
    """Decoded segments (base64, hex, url), each put back into the text in place of its
    encoding, so a rule that needs the words around it still sees them."""
    out = []
    for name, rx, dec in (("base64", _B64, _b64), ("hex", _HEX, _hex)):
        found = [(m.span(), dec(m.group(0))) for m in rx.finditer(text)]
        pieces = [(span, d) for span, d in found if d]
        if pieces:
            out.append((name, _splice(text, pieces)))
    if text.count("%") >= 3:
        pieces = []
        for m in _URLENC.finditer(text):
            seg = m.group(0)
            if seg.count("%") >= 3:
                d = unquote(seg.replace("+", " "))
                if d != seg and _printable(d):
                    pieces.append((m.span(), d))
        if pieces:
            out.append(("url", _splice(text, pieces)))
    return out


def _splice(text: str, pieces: list[tuple[tuple[int, int], str]]) -> str:
    parts, at = [], 0
    for (s, e), d in pieces:
        parts += [text[at:s], d]
        at = e
    return "".join(parts + [text[at:]])


def _unspace(text: str) -> str | None:
    def join(m: re.Match[str]) -> str:
        # a wider gap (two separators, or " / ") between letters is a word break
        words = re.split(r"\s{2,}|\s*/\s*|\s*\|\s*", m.group(0))
        return " ".join(re.sub(r"[ .\-_*]", "", w) for w in words)

    out = _SPACED.sub(join, text)
    return out if out != text else None


def _whole_text(text: str) -> list[tuple[str, str]]:
    """Transforms of the whole text, kept when they read as more English than the text."""
    base = english_ratio(text)
    out = []
    cands = [
        ("rot13", codecs.encode(text, "rot13")),
        ("reversed", text[::-1]),
        ("reversed-words", " ".join(w[::-1] for w in text.split())),
    ]
    if _LEET_WORD.search(text):
        cands.append(("leet", _LEET_WORD.sub(lambda m: m.group(0).translate(LEET), text)))
    for name, cand in cands:
        if cand != text and english_ratio(cand) > max(base, 0.2) + 0.05:
            out.append((name, cand))
    return out


def decodings(text: str, depth: int = 2) -> list[tuple[str, str]]:
    """(chain, decoded text) for every decoding of `text` that changes it and reads as text;
    the chain names the decodings applied, outermost first ("base64>rot13")."""
    found: list[tuple[str, str]] = []
    seen = {text}
    frontier = [("", text)]
    for _ in range(depth):
        nxt = []
        for chain, t in frontier:
            cands: list[tuple[str, str]] = []
            folded = fold_homoglyphs(t)
            if folded != t:
                cands.append(("homoglyph", folded))
            cands += _segments(t)
            spaced = _unspace(t)
            if spaced is not None:
                cands.append(("spaced", spaced))
            cands += _whole_text(t)
            for name, d in cands:
                if d in seen:
                    continue
                seen.add(d)
                item = (f"{chain}>{name}" if chain else name, d)
                found.append(item)
                nxt.append(item)
        frontier = nxt
    return found


__all__ = ["HOMOGLYPHS", "LEET", "decodings", "english_ratio", "fold_homoglyphs"]
