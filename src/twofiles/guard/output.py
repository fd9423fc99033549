"""The output guard: secrets, canaries and outside links removed from a reply as it streams.

What it owns: `secret_forms` (a secret as written, base64, hex, reversed, and spelled out with
separators), `removals(text, ...)` (the spans to cut from a whole text: secrets, markdown images
and links, HTML <img>/<a> tags and bare URLs whose host is not allowed), and `OutputFilter`,
which streams: it emits only text no later delta can turn into part of something to remove, so
the pieces it emits always join to exactly what filtering the whole reply at once gives.
What it leaves to others: which secrets and hosts (GuardConfig), where replies stream (chat.agent).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from twofiles.chat.agent import GuardAction

SECRET_MARK = "[removed]"
LINK_MARK = "[link removed]"
# between the letters of a spelled-out secret: "P L U M", "P-L-U-M", "P.L.U.M"
_SEP = r"[\s.\-_,*|/]{0,3}"

_MD_LINK = re.compile(r"!?\[[^\[\]\n]{0,300}\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML = re.compile(
    r"<(?:img|a|iframe|source|video|audio|link|script)\b[^<>]*?"
    r"\b(?:src|href|srcset|poster)\s*=\s*[\"']?([^\"'\s<>]+)[^<>]*>",
    re.I,
)
_BARE = re.compile(r"(?:https?://|www\.)[^\s<>\"'`)\]]+", re.I)
# what may still grow into a link at the end of the text seen so far
_OPEN_MD = re.compile(r"!?\[[^\[\]\n]{0,300}(?:\](?:\(\s*[^()\n]{0,2000})?)?$")
_OPEN_TAG = re.compile(
    r"<(?:[a-zA-Z]{0,6}|(?:img|a|iframe|source|video|audio|link|script)\b[^<>]*)$"
)
_OPEN_BARE = re.compile(r"(?:https?://|www\.)[^\s<>\"'`)\]]*$", re.I)
_URL_STARTS = ("https://", "http://", "www.")


def secret_forms(secret: str) -> list[str]:
    """The literal forms a secret may leak in besides itself (base64 with and without padding,
    hex, reversed); spelled-out forms are matched by `secret_pattern`."""
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    forms = [secret, b64, b64.rstrip("="), raw.hex(), raw.hex().upper(), secret[::-1]]
    return list(dict.fromkeys(f for f in forms if len(f) >= 4))


def secret_pattern(secrets: Sequence[str]) -> re.Pattern[str] | None:
    alts = []
    for s in secrets:
        if len(s) < 4:  # too short to find without cutting ordinary words
            continue
        alts += [re.escape(f) for f in secret_forms(s)]
        alts.append(_SEP.join(re.escape(c) for c in s if not c.isspace()))
    if not alts:
        return None
    return re.compile("|".join(sorted(set(alts), key=len, reverse=True)), re.I)


def host_allowed(url: str, allowed_hosts: Sequence[str]) -> bool:
    """A URL with no host (a relative link, an anchor) stays; one with a host must be one of
    `allowed_hosts` or under one."""
    u = url.strip()
    if u.lower().startswith("www."):
        u = "http://" + u
    if u.startswith("//"):
        u = "http:" + u
    try:
        parts = urlsplit(u)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False  # unparseable (e.g. a bad IPv6 literal): not provably inside
    if not host:
        return not parts.scheme or parts.scheme.lower() in ("mailto",)
    return any(host == h.lower() or host.endswith("." + h.lower()) for h in allowed_hosts)


def removals(
    text: str, pattern: re.Pattern[str] | None, allowed_hosts: Sequence[str]
) -> list[tuple[int, int, str, str]]:
    """(start, end, replacement, reason) spans to cut from `text`, sorted, not overlapping."""
    spans: list[tuple[int, int, str, str]] = []
    for rx in (_MD_LINK, _HTML, _BARE):
        for m in rx.finditer(text):
            url = m.group(1) if rx is not _BARE else m.group(0)
            if host_allowed(url, allowed_hosts):
                continue
            host = urlsplit(url if "//" in url else "http://" + url).hostname or url[:40]
            spans.append((m.start(), m.end(), LINK_MARK, f"link to {host}"))
    if pattern is not None:
        spans += [(m.start(), m.end(), SECRET_MARK, "secret") for m in pattern.finditer(text)]
    spans.sort(key=lambda s: (s[0], -s[1]))
    merged: list[tuple[int, int, str, str]] = []
    for s in spans:
        if merged and s[0] < merged[-1][1]:
            last = merged[-1]
            if s[1] > last[1]:  # overlapping: one cut, the link's mark when a link is involved
                mark = LINK_MARK if LINK_MARK in (last[2], s[2]) else SECRET_MARK
                merged[-1] = (last[0], s[1], mark, last[3])
            continue
        merged.append(s)
    return merged


def _hold_from(text: str, pattern_len: int) -> int:
    """Where the tail that could still become (part of) a removal starts."""
    cut = max(0, len(text) - pattern_len)
    tail_at = max(0, len(text) - 2400)
    tail = text[tail_at:]
    for rx in (_OPEN_MD, _OPEN_TAG, _OPEN_BARE):
        m = rx.search(tail)
        if m:
            cut = min(cut, tail_at + m.start())
    low = text[-8:].lower()
    for start in _URL_STARTS:  # "htt" may become "https://"
        for k in range(min(len(start) - 1, len(low)), 0, -1):
            if low.endswith(start[:k]):
                cut = min(cut, len(text) - k)
                break
    return cut


class OutputFilter:
    """Streams a reply with secrets and outside links cut (chat.agent.OutputFilter)."""

    def __init__(self, secrets: Sequence[str], allowed_hosts: Sequence[str]) -> None:
        self.pattern = secret_pattern(secrets)
        self.allowed_hosts = tuple(allowed_hosts)
        # the longest a secret match can be, spelled out with separators: held back whole
        longest = max((len(s) for s in secrets if len(s) >= 4), default=0)
        self._hold = 4 * longest
        self.raw = ""
        self.done = 0  # raw characters already emitted (cleaned)
        self._actions: list[GuardAction] = []

    def _emit(self, upto: int, spans: list[tuple[int, int, str, str]]) -> str:
        parts, at = [], self.done
        for s, e, mark, reason in spans:
            if s < self.done or e > upto:
                continue
            parts += [self.raw[at:s], mark]
            self._actions.append(GuardAction("output", "output", (reason,)))
            at = e
        parts.append(self.raw[at:upto])
        self.done = upto
        return "".join(parts)

    def _spans(self) -> list[tuple[int, int, str, str]]:
        # only the text not emitted yet: no removal starts before `done` (it would have been held)
        d = self.done
        spans = removals(self.raw[d:], self.pattern, self.allowed_hosts)
        return [(s + d, e + d, mark, why) for s, e, mark, why in spans]

    def push(self, delta: str) -> str:
        self.raw += delta
        cut = _hold_from(self.raw, self._hold)
        spans = self._spans()
        for s, e, *_ in spans:
            if s < cut < e or (s < cut and e == len(self.raw)):
                cut = s  # never cut through a removal, nor emit one that could still grow
        if cut <= self.done:
            return ""
        return self._emit(cut, spans)

    def finish(self) -> str:
        return self._emit(len(self.raw), self._spans())

    def actions(self) -> list[GuardAction]:
        return list(self._actions)


def filter_text(text: str, secrets: Sequence[str], allowed_hosts: Sequence[str]) -> str:
    """`text` with secrets and outside links cut, all at once."""
    f = OutputFilter(secrets, allowed_hosts)
    return f.push(text) + f.finish()


__all__ = [
    "LINK_MARK",
    "SECRET_MARK",
    "OutputFilter",
    "filter_text",
    "host_allowed",
    "removals",
    "secret_forms",
    "secret_pattern",
]
