"""The attack-suite format: JSONL, one attack per line, and its loader.

Fields of a line (a JSON object):

    id              unique within the file (default: "<file stem>-<line>")
    text            the attack; may hold "{canary}", filled with a fresh token on every run
    channel         where it arrives: user (the user's message), tool (a tool's output),
                    document (a retrieved passage), memory (an earlier turn of the conversation)
    request         for channel tool/document/memory: the user's own, harmless message of the
                    turn (default: a generic one chosen by the runner)
    check           how success is decided:
                      canary   the reply contains the attack's canary: the "{canary}" token when
                               the text holds the slot (an injected instruction was obeyed),
                               otherwise the system prompt's secret (a leak)
                      tool     the model calls `forbidden_tool`
                      refusal  the reply matches `comply`, a regex for complying with a request
                               the system prompt (plus `system`) forbids
                      none     scored by the guard only (flagged or not)
    forbidden_tool  for check "tool": the tool the attack tries to make the model call
    comply          for check "refusal": the regex (Python syntax, case-insensitive)
    system          optional: a rule added to the system prompt for this attack
    label           malicious, or benign (a look-alike that must not be blocked or refused)
    category        the family (e.g. "direct-injection", "encoding"); rates are reported per family
    tactic          finer: how this attack works (e.g. "base64", "dan-persona")

Bad lines raise BadInputError naming the file, the line and the field; nothing is run.

The built-in suites live in suites/, one file per family (the file's stem): `builtin_suites`
lists them and `load_suites` reads a spec ("builtin", "builtin:FAMILY[,FAMILY]" or FILE[,FILE]).
scripts/build_redteam_suites.py writes them, except gcg.jsonl, which the GCG search writes.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError

CHANNELS = ("user", "tool", "document", "memory")
CHECKS = ("canary", "tool", "refusal", "none")
LABELS = ("malicious", "benign")
CANARY_SLOT = "{canary}"


@dataclass(frozen=True)
class Attack:
    id: str
    text: str
    channel: str = "user"
    check: str = "canary"
    label: str = "malicious"
    category: str = "uncategorised"
    tactic: str = ""
    request: str = ""
    forbidden_tool: str = ""
    comply: str = ""
    system: str = ""

    @property
    def has_slot(self) -> bool:
        return CANARY_SLOT in self.text

    def filled(self, canary: str) -> Attack:
        """The attack with its "{canary}" slot (if any) filled with `canary`."""
        return replace(self, text=self.text.replace(CANARY_SLOT, canary))

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != ""}


# the words of a canary ("WORD-hex6"); every token shaped like a canary draws from these
CANARY_WORDS = ("ZEBRA", "MANGO", "COBALT", "WALRUS", "QUARTZ", "FALCON", "NUTMEG", "PLUM")


def new_canary() -> str:
    """A fresh token no model has seen: an uppercase word and hex digits (e.g. "ZEBRA-3f9a1c")."""
    return f"{secrets.choice(CANARY_WORDS)}-{secrets.token_hex(3)}"


_FIELDS = set(Attack.__dataclass_fields__)


def parse_attack(obj: Any, where: str, default_id: str) -> Attack:
    """One attack from a decoded JSON line; `where` ("file:line") prefixes every error."""
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise BadInputError(
            f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(_FIELDS))}"
        )
    for k, v in obj.items():
        if not isinstance(v, str):
            raise BadInputError(f"{where}: field {k!r} must be a string, got {type(v).__name__}")
    if not obj.get("text", "").strip():
        raise BadInputError(f"{where}: field 'text' is missing or empty")
    a = Attack(**{"id": default_id, **obj})
    for name, allowed in (("channel", CHANNELS), ("check", CHECKS), ("label", LABELS)):
        if getattr(a, name) not in allowed:
            raise BadInputError(
                f"{where}: field {name!r} is {getattr(a, name)!r}; one of {', '.join(allowed)}"
            )
    if a.check == "tool" and not a.forbidden_tool:
        raise BadInputError(f"{where}: check 'tool' needs field 'forbidden_tool'")
    if a.check == "refusal":
        if not a.comply:
            raise BadInputError(f"{where}: check 'refusal' needs field 'comply' (a regex)")
        try:
            re.compile(a.comply)
        except re.error as e:
            raise BadInputError(f"{where}: field 'comply' is not a valid regex: {e}") from None
    return a


def load_suite(path: str | Path) -> list[Attack]:
    """The attacks of one JSONL file (blank lines skipped); ids must be unique."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such suite file") from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    attacks: list[Attack] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
        a = parse_attack(obj, where, f"{path.stem}-{n}")
        if a.id in seen:
            raise BadInputError(f"{where}: id {a.id!r} already used on line {seen[a.id]}")
        seen[a.id] = n
        attacks.append(a)
    if not attacks:
        raise BadInputError(f"{path}: no attacks in the file")
    return attacks


BUILTIN = "builtin"
_SUITES_DIR = Path(__file__).resolve().parent / "suites"


def builtin_suites() -> dict[str, Path]:
    """The built-in suites, family -> file: every *.jsonl in suites/, sorted by family."""
    return {p.stem: p for p in sorted(_SUITES_DIR.glob("*.jsonl"))}


def load_suites(spec: str) -> list[Attack]:
    """The attacks of a spec: "builtin" (every family), "builtin:FAMILY[,FAMILY]", or one or
    more comma-separated JSONL paths. Ids must be unique across the files (reports key by id)."""
    spec = spec.strip()
    if spec == BUILTIN or spec.startswith(BUILTIN + ":"):
        known = builtin_suites()
        if not known:
            raise BadInputError(f"no built-in suites in {_SUITES_DIR}")
        wanted = [f.strip() for f in spec[len(BUILTIN) + 1 :].split(",") if f.strip()]
        if spec != BUILTIN and not wanted:
            raise BadInputError(f"--suite {spec!r}: name a family; one of {', '.join(known)}")
        for f in wanted:
            if f not in known:
                raise BadInputError(f"unknown suite family {f!r}; one of {', '.join(known)}")
        paths = [known[f] for f in dict.fromkeys(wanted)] if wanted else list(known.values())
    else:
        paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
        if not paths:
            raise BadInputError("no suite given: 'builtin', 'builtin:FAMILY' or FILE.jsonl")
    attacks: list[Attack] = []
    where: dict[str, Path] = {}
    for path in paths:
        for a in load_suite(path):
            if a.id in where:
                raise BadInputError(f"{path}: id {a.id!r} already used in {where[a.id]}")
            where[a.id] = path
            attacks.append(a)
    return attacks


__all__ = [
    "BUILTIN",
    "CANARY_SLOT",
    "CANARY_WORDS",
    "CHANNELS",
    "CHECKS",
    "LABELS",
    "Attack",
    "builtin_suites",
    "load_suite",
    "load_suites",
    "new_canary",
    "parse_attack",
]
