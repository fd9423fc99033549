"""The tool policy: which tools may run, and with which arguments.

What it owns: `check_call`, which blocks a call (before it runs) when the tool is not on the
allow-list, when its arguments break the tool's JSON schema (an object; required keys present;
no keys the schema does not name; each value of its declared type), or when an argument's
content breaks a rule: an email address or URL whose host is not in `allowed_hosts`, a path
outside the working folder (absolute, or climbing out with ".."), or the secret or a canary-like
token of the system prompt carried out in an argument. What it leaves to others: running tools
(twofiles.tools, chat.agent), which tools and hosts (GuardConfig, a persona's `tools`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from twofiles.guard.output import host_allowed, secret_pattern

# JSON schema "type" -> the Python types a decoded JSON value of it has
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}
_EMAIL = re.compile(r"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)")
_URL = re.compile(r"(?:https?://|www\.)[^\s\"'<>]+", re.I)
# argument names that hold a path: checked to stay inside the working folder
_PATH_KEYS = re.compile(r"path|file|dir|folder", re.I)


def schema_errors(arguments: Any, schema: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with `arguments` against an object schema (empty when they fit)."""
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    if not schema:
        return []
    props: Mapping[str, Any] = schema.get("properties") or {}
    errs = [f"missing argument {k!r}" for k in schema.get("required", []) if k not in arguments]
    if props and schema.get("additionalProperties", False) is not True:
        errs += [f"unexpected argument {k!r}" for k in arguments if k not in props]
    for k, v in arguments.items():
        want = (props.get(k) or {}).get("type")
        kinds = [want] if isinstance(want, str) else list(want or [])
        ok = [t for k_ in kinds for t in _TYPES.get(k_, (object,))]
        # JSON true is not an integer, though Python's bool is an int
        if ok and (not isinstance(v, tuple(ok)) or (isinstance(v, bool) and bool not in ok)):
            errs.append(f"argument {k!r} must be {'/'.join(kinds)}, got {type(v).__name__}")
        enum = (props.get(k) or {}).get("enum")
        if enum is not None and v not in enum:
            errs.append(f"argument {k!r} must be one of {enum}")
    return errs


def _strings(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _strings(v, str(k))]
    if isinstance(value, list):
        return [p for v in value for p in _strings(v, key)]
    return []


def content_errors(
    arguments: Mapping[str, Any], allowed_hosts: Sequence[str], secrets: Sequence[str]
) -> list[str]:
    """Rules over the arguments' text: outside hosts, paths leaving the working folder, secrets."""
    errs = []
    pattern = secret_pattern(secrets)
    for key, text in _strings(dict(arguments)):
        for m in _EMAIL.finditer(text):
            if not host_allowed("//" + m.group(1), allowed_hosts):
                errs.append(
                    f"argument {key!r}: recipient {m.group(0)} is outside the allowed hosts"
                )
        for m in _URL.finditer(text):
            if not host_allowed(m.group(0), allowed_hosts):
                errs.append(f"argument {key!r}: {m.group(0)[:60]} is outside the allowed hosts")
        if _PATH_KEYS.search(key) and (
            text.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", text) or ".." in text
        ):
            errs.append(f"argument {key!r}: path {text[:60]!r} is outside the working folder")
        if pattern is not None and pattern.search(text):
            errs.append(f"argument {key!r} carries a secret")
    return errs


def check_call(
    name: str,
    arguments: Any,
    *,
    schema: Mapping[str, Any] | None,
    allowed_tools: frozenset[str] | None,
    allowed_hosts: Sequence[str],
    secrets: Sequence[str],
) -> list[str]:
    """Why the call must not run (empty: it may)."""
    if allowed_tools is not None and name not in allowed_tools:
        return [f"tool {name!r} is not allowed"]
    errs = schema_errors(arguments, schema)
    if isinstance(arguments, dict):
        errs += content_errors(arguments, allowed_hosts, secrets)
    return errs


__all__ = ["check_call", "content_errors", "schema_errors"]
