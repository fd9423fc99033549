"""Personas: Ollama-style Modelfiles and the local registry of named models.

A Modelfile names a model and the defaults to run it with, in Ollama's form:

    FROM smollm2                      a model spec any verb takes, or another registered name
    ADAPTER ./adapters.safetensors    LoRA adapters (twofiles sft --lora) applied to FROM
    SYSTEM \"\"\"You are Mario.\"\"\"       the default system message
    PARAMETER temperature 0.2         sampling defaults (PARAMETERS); `stop` repeats
    PARAMETER tools calculator,python the tools it may run under `--guard tools` (twofiles' own)
    TEMPLATE \"\"\"{% for m in messages %}...\"\"\"   a Jinja chat template used instead of the model's
    MESSAGE user Hi                   few-shot turns (system / user / assistant)
    LICENSE \"\"\"MIT\"\"\"

Instructions are case-insensitive; `#` starts a comment line; a value in "..." or \"\"\"...\"\"\"
may span lines (it ends on the first line that closes it), as Ollama's parser reads it; a
backslash is kept as written (no escapes, as in Ollama). Lines end in LF, CRLF or CR; the file is
UTF-8 (a byte-order mark is skipped) or UTF-16 with its byte-order mark. Every error names the
Modelfile and the line. Go templates (`{{ .System }}`) are refused: twofiles
renders Jinja, as the models' own templates are written.

The registry: one JSON record per name under `registry_dir()` (<cache>/personas, or
$TWOFILES_PERSONAS), written atomically. Names are Ollama's: letters, digits, `_.-`, an optional
`:tag` (`mario` is `mario:latest`), case-insensitive as in Ollama (`Mario` is `mario`, so a
case-insensitive file system never holds two records for one name). A record holds the resolved persona: FROM as an absolute path
or a built-in alias (a registered name is copied in at create time, so a persona never changes
when its parent does), adapters as absolute paths, and the sha256 (with size and mtime) of every
file it needs, so `show` can say whether one changed since. Files are referenced, never copied:
removing a name deletes its record and nothing else.

What it leaves to others: loading the model (resolve.py applies a record: adapters, template,
context), applying SYSTEM / PARAMETER / MESSAGE when rendering a chat (the verbs and the server,
from `LoadedModel.persona`), checking that a template compiles (the `create` verb, through chat).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofiles.artifact import Persona
from twofiles.errors import BadInputError, TwofilesError
from twofiles.formats import ALIASES, alias_path
from twofiles.paths import atomic_write_bytes, cache_dir, sha256_file

FORMAT = "twofiles-persona"
VERSION = 1
DEFAULT_TAG = "latest"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?")
INSTRUCTIONS = ("from", "adapter", "system", "template", "parameter", "message", "license")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Parameter:
    kind: type  # the value's type in the Modelfile
    field: str | None  # the SamplingParams field it sets (None: not a sampling setting)
    ok: Callable[[Any], bool]
    rule: str  # what `ok` asks, for the error


# PARAMETER name (Ollama's) -> what it sets. num_ctx caps the context (prompt + reply).
PARAMETERS: dict[str, Parameter] = {
    "temperature": Parameter(float, "temperature", lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_p": Parameter(float, "top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": Parameter(int, "top_k", lambda v: v >= 0, ">= 0 (0 = off)"),
    "min_p": Parameter(float, "min_p", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repeat_penalty": Parameter(float, "repetition_penalty", lambda v: v > 0, "> 0 (1 = off)"),
    "seed": Parameter(int, "seed", lambda v: True, "an integer"),
    "num_predict": Parameter(int, "max_tokens", lambda v: v >= 1, ">= 1"),
    "stop": Parameter(str, "stop", lambda v: bool(v), "a non-empty string"),
    "num_ctx": Parameter(int, None, lambda v: v >= 2, ">= 2"),
    # twofiles' own: the tools this persona may run under `--guard tools` (a comma list)
    "tools": Parameter(
        str,
        None,
        lambda v: all(re.fullmatch(r"[A-Za-z0-9_.-]+", t.strip()) for t in v.split(",")),
        "a comma list of tool names (e.g. calculator,python)",
    ),
}
# Ollama parameters that have no meaning here: named so the error says why, not "unknown".
UNSUPPORTED = {
    "repeat_last_n": "the repetition penalty here looks at the whole prompt and reply",
    "mirostat": "mirostat sampling is not implemented",
    "mirostat_eta": "mirostat sampling is not implemented",
    "mirostat_tau": "mirostat sampling is not implemented",
    "tfs_z": "tail-free sampling is not implemented",
    "typical_p": "typical sampling is not implemented",
    "presence_penalty": "use repeat_penalty",
    "frequency_penalty": "use repeat_penalty",
    "num_keep": "the context is never shifted: a chat forgets its oldest exchange instead",
    "num_batch": "batching is the engine's choice",
    "num_gpu": "the device is chosen with --device",
    "num_thread": "threads are chosen with --threads",
    "main_gpu": "the device is chosen with --device",
    "use_mmap": "how a model file is read is the loader's choice",
    "numa": "threads are chosen with --threads",
    # deprecated in Ollama itself, which ignores them with a warning
    "penalize_newline": "deprecated in Ollama, which ignores it: delete the line",
    "low_vram": "deprecated in Ollama, which ignores it: delete the line",
    "f16_kv": "deprecated in Ollama, which ignores it: delete the line",
    "logits_all": "deprecated in Ollama, which ignores it: delete the line",
    "vocab_only": "deprecated in Ollama, which ignores it: delete the line",
    "use_mlock": "deprecated in Ollama, which ignores it: delete the line",
    "num_gqa": "the grouping of attention heads is read from the model file",
}
# Ollama instructions with no meaning here: named so the error says why, not "unknown".
UNSUPPORTED_INSTRUCTIONS = {
    "draft": "speculative decoding with a draft model is not implemented",
    "renderer": "Ollama's built-in renderers are not implemented; use a Jinja TEMPLATE",
    "parser": "Ollama's built-in output parsers are not implemented",
    "requires": "it names an Ollama version; delete the line",
}
# A Go template's actions: `{{ .System }}`, `{{- if .Messages }}`, `{{ range ... }}`, `{{ end }}`.
GO_TEMPLATE_RE = re.compile(
    r"\{\{-?\s*(?:\.[A-Za-z]|\$|(?:if|range|with|else|end|template|block|define)\b)"
)


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Command:
    name: str  # the instruction, lower case ("from", "parameter", ...)
    args: str  # the value, unquoted
    line: int  # where the instruction starts
    key: str = ""  # PARAMETER's name or MESSAGE's role


def _unquote(value: str) -> tuple[str, bool]:
    """(the value without its quotes, whether it is complete), as Ollama's `unquote`."""
    if value.startswith('"""'):
        if len(value) >= 6 and value.endswith('"""'):
            return value[3:-3], True
        return "", False
    if value.startswith('"'):
        if len(value) >= 2 and value.endswith('"'):
            return value[1:-1], True
        return "", False
    return value, True


def decode_modelfile(data: bytes, path: str) -> str:
    """A Modelfile's text: UTF-8, or UTF-16 when a byte-order mark says so (PowerShell's `>`
    writes UTF-16), as Ollama reads it; a UTF-8 byte-order mark is dropped."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(f"cannot read the Modelfile: {e}", path=path) from None


def parse_modelfile(text: str, path: str) -> list[Command]:
    """The commands of a Modelfile, in order (values unquoted, not yet checked)."""
    # CRLF and a lone CR end lines too, as in Ollama (a CR inside a quoted value becomes LF)
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"([A-Za-z]+)(?:[ \t]+|$)", stripped)
        word = m.group(1).lower() if m else stripped.split()[0]
        if m is not None and word in UNSUPPORTED_INSTRUCTIONS:
            raise BadInputError(
                f"{word.upper()} is not supported ({UNSUPPORTED_INSTRUCTIONS[word]})",
                path=path,
                line=lineno,
            )
        if m is None or word not in INSTRUCTIONS:
            raise BadInputError(
                f"unknown instruction {stripped.split()[0][:40]!r} "
                f"(expected one of {', '.join(n.upper() for n in INSTRUCTIONS)})",
                path=path,
                line=lineno,
            )
        rest = stripped[m.end() :]
        key = ""
        if word in ("parameter", "message"):
            km = re.match(r"([A-Za-z0-9_]+)(?:[ \t]+|$)", rest)
            if km is None:
                what = "a parameter name" if word == "parameter" else "a role"
                raise BadInputError(f"{word.upper()} needs {what}", path=path, line=lineno)
            key, rest = km.group(1), rest[km.end() :]
            if word == "message" and key not in ROLES:
                raise BadInputError(
                    f"MESSAGE role {key!r} must be one of {', '.join(ROLES)}",
                    path=path,
                    line=lineno,
                )
        if not rest.strip():  # `SYSTEM ""` is an empty value; nothing at all is a mistake
            what = f"{word.upper()} {key}" if key else word.upper()
            raise BadInputError(f"{what} needs a value", path=path, line=lineno)
        value, done = _unquote(rest.strip())
        raw = rest
        while not done:  # a quoted value goes on until a line closes it
            if i >= len(lines):
                quote = '"""' if rest.strip().startswith('"""') else '"'
                raise BadInputError(
                    f"{word.upper()}: the {quote} opened on this line is never closed",
                    path=path,
                    line=lineno,
                )
            raw += "\n" + lines[i]
            i += 1
            value, done = _unquote(raw.strip())
        if not value and word in ("from", "adapter"):
            raise BadInputError(f"{word.upper()} needs a value", path=path, line=lineno)
        commands.append(Command(word, value, lineno, key))
    return commands


def _parameter(cmd: Command, path: str) -> Any:
    name = cmd.key.lower()
    if name in UNSUPPORTED:
        raise BadInputError(
            f"PARAMETER {name} is not supported ({UNSUPPORTED[name]})", path=path, line=cmd.line
        )
    spec = PARAMETERS.get(name)
    if spec is None:
        raise BadInputError(
            f"unknown PARAMETER {cmd.key!r} (known: {', '.join(PARAMETERS)})",
            path=path,
            line=cmd.line,
        )
    try:
        if spec.kind is int:
            value: Any = int(cmd.args)
        elif spec.kind is float:
            value = float(cmd.args)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        else:
            value = cmd.args
    except ValueError:
        raise BadInputError(
            f"PARAMETER {name} {cmd.args[:40]!r}: not {'an integer' if spec.kind is int else 'a number'}",
            path=path,
            line=cmd.line,
        ) from None
    if not spec.ok(value):
        raise BadInputError(
            f"PARAMETER {name} {cmd.args[:40]!r}: must be {spec.rule}", path=path, line=cmd.line
        )
    return value


def check_template(template: str, path: str, line: int) -> None:
    """Refuse a Go template (Ollama's own form): twofiles renders Jinja chat templates."""
    if GO_TEMPLATE_RE.search(template):
        raise BadInputError(
            "TEMPLATE is a Go template ({{ .System }}, {{ .Prompt }}, {{ if ... }}): Go templates "
            "are not supported; write the template in Jinja, as Hugging Face chat templates are "
            "(e.g. {% for m in messages %}...{{ m.content }}...{% endfor %})",
            path=path,
            line=line,
        )


# ---------------------------------------------------------------------------------------------
# Names and the registry


def registry_dir() -> Path:
    """Where the records live: $TWOFILES_PERSONAS, else <cache_dir>/personas (not created here)."""
    env = os.environ.get("TWOFILES_PERSONAS")
    return Path(env).expanduser() if env else cache_dir() / "personas"


def canonical_name(name: str, *, what: str = "name") -> str:
    """`Mario` -> `mario:latest`; a name that is not Ollama's form is a TwofilesError."""
    if not NAME_RE.fullmatch(name):
        raise TwofilesError(
            f"{what} {name[:80]!r}: use letters, digits, '_', '.', '-', and an optional ':tag' "
            "(e.g. mario or mario:v2), starting with a letter or digit"
        )
    model, _, tag = name.lower().partition(":")
    if model in ALIASES:
        raise TwofilesError(f"{what} {name!r}: {model} is a built-in model alias; choose another")
    return f"{model}:{tag or DEFAULT_TAG}"


def is_name(spec: str) -> bool:
    return bool(NAME_RE.fullmatch(spec)) and spec.lower().partition(":")[0] not in ALIASES


def record_path(name: str) -> Path:
    model, _, tag = canonical_name(name).partition(":")
    return registry_dir() / model / f"{tag}.json"


def find(name: str) -> dict[str, Any] | None:
    """The record registered as `name`, or None."""
    if not is_name(name):
        return None
    path = record_path(name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"unreadable persona record: {e}", path=str(path)) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise BadInputError(f"not a persona record (format is not {FORMAT!r})", path=str(path))
    if record.get("version") != VERSION:
        raise BadInputError(
            f"persona record version {record.get('version')!r}: this twofiles reads {VERSION}",
            path=str(path),
        )
    return record


def get(name: str) -> dict[str, Any]:
    """The record, or a TwofilesError listing what is registered."""
    record = find(canonical_name(name))
    if record is None:
        known = ", ".join(r["name"] for r in list_records()) or "none yet"
        raise TwofilesError(f"{name}: no such persona (registered: {known})")
    return record


def _registry_error(e: OSError, doing: str) -> TwofilesError:
    return TwofilesError(
        f"cannot {doing} in the persona registry {registry_dir()}: {e.strerror or e} "
        "(set TWOFILES_PERSONAS to a writable directory)"
    )


def save(record: dict[str, Any]) -> Path:
    path = record_path(record["name"])
    data = json.dumps(record, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.encode("utf-8"))
    except OSError as e:
        try:  # nothing half-written stays behind: no directory for a name without a record
            path.parent.rmdir()  # only if empty: the name's other tags stay
        except OSError:
            pass
        raise _registry_error(e, f"write {record['name']}") from None
    return path


def list_records() -> list[dict[str, Any]]:
    """Every registered record, by name."""
    root = registry_dir()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*/*.json")):
        name = f"{path.parent.name}:{path.stem}"
        if is_name(name):
            record = find(name)
            if record is not None:
                out.append(record)
    return out


def copy(src: str, dst: str) -> dict[str, Any]:
    """Register `dst` as a copy of `src` (overwriting `dst`, as `ollama cp` does)."""
    record = dict(get(src), name=canonical_name(dst))
    save(record)
    return record


def remove(name: str) -> str:
    """Delete the record, even an unreadable one; the files it names are the user's and stay.
    Returns the canonical name."""
    path = record_path(name)
    if not path.is_file():
        get(name)  # the error that lists what is registered
    try:
        path.unlink()
    except OSError as e:
        raise _registry_error(e, f"remove {canonical_name(name)}") from None
    try:
        path.parent.rmdir()  # the name's last tag
    except OSError:
        pass
    return canonical_name(name)


# ---------------------------------------------------------------------------------------------
# Files a persona needs


def _stat_digest(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _model_files(path: str) -> list[str]:
    """The files a model spec's path stands for: the file, or a directory's own files."""
    if os.path.isdir(path):
        return [
            os.path.join(path, n)
            for n in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, n))
        ]
    return [path]


def file_status(record: dict[str, Any]) -> dict[str, str]:
    """Each recorded file -> "unchanged", "changed" or "missing". A file whose size and mtime
    are as recorded is taken as unchanged without hashing it again (a model can be GBs)."""
    out = {}
    for path, seen in sorted(record.get("files", {}).items()):
        if not os.path.isfile(path):
            out[path] = "missing"
            continue
        st = os.stat(path)
        if st.st_size == seen.get("size") and st.st_mtime_ns == seen.get("mtime_ns"):
            out[path] = "unchanged"
        else:
            same = sha256_file(path) == seen.get("sha256")
            out[path] = "unchanged" if same else "changed"
    return out


# ---------------------------------------------------------------------------------------------
# Modelfile -> record


def _expand(value: str, base_dir: str) -> str:
    path = os.path.expanduser(value)
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def build_record(name: str, modelfile: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a Modelfile and resolve it into the record `name` would be registered with (not
    saved: the caller checks that it loads first)."""
    path = os.path.abspath(str(modelfile))
    try:
        with open(path, "rb") as f:
            text = decode_modelfile(f.read(), path)
    except FileNotFoundError:
        raise BadInputError("no such Modelfile", path=path) from None
    except OSError as e:
        raise BadInputError(f"cannot read the Modelfile: {e}", path=path) from None
    name = canonical_name(name)
    base_dir = os.path.dirname(path)
    commands = parse_modelfile(text, path)
    firsts: dict[str, int] = {}
    for cmd in commands:
        if cmd.name in ("from", "adapter", "system", "template"):
            if cmd.name in firsts:
                raise BadInputError(
                    f"a second {cmd.name.upper()} (the first is on line {firsts[cmd.name]})",
                    path=path,
                    line=cmd.line,
                )
            firsts[cmd.name] = cmd.line
    if "from" not in firsts:
        raise BadInputError("no FROM line: a Modelfile starts from a model", path=path)

    record: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "from": "",
        "parent": None,
        "adapters": [],
        "system": None,
        "template": None,
        "parameters": {},
        "messages": [],
        "license": [],
        "files": {},
        "modelfile": path,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    params: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    # FROM first wherever it stands: a registered parent's record is the start the rest adds to
    _resolve_from(record, next(c for c in commands if c.name == "from"), base_dir, path)
    for cmd in commands:
        if cmd.name == "adapter":
            adapter = _expand(cmd.args, base_dir)
            if not os.path.isfile(adapter):
                raise BadInputError(f"ADAPTER {cmd.args}: no such file", path=path, line=cmd.line)
            from twofiles.lora import is_adapters_file

            if not is_adapters_file(adapter):
                raise BadInputError(
                    f"ADAPTER {cmd.args}: not a LoRA adapters file (twofiles sft --lora writes them)",
                    path=path,
                    line=cmd.line,
                )
            record["adapters"] = [*record["adapters"], adapter]
            record["files"][adapter] = _stat_digest(adapter)
        elif cmd.name == "system":
            record["system"] = cmd.args
        elif cmd.name == "template":
            check_template(cmd.args, path, cmd.line)
            record["template"] = cmd.args
        elif cmd.name == "parameter":
            value = _parameter(cmd, path)
            key = cmd.key.lower()
            if key == "stop":
                params.setdefault("stop", []).append(value)
            else:
                params[key] = value
        elif cmd.name == "message":
            messages.append({"role": cmd.key, "content": cmd.args})
        elif cmd.name == "license":
            record["license"] = [*record["license"], cmd.args]
    record["parameters"] = {**record["parameters"], **params}  # a parent's, then this file's
    if messages:
        record["messages"] = messages
    return record


def instruction_line(modelfile: str | os.PathLike[str], name: str) -> int | None:
    """The line of a Modelfile's first `name` instruction (for errors found after parsing)."""
    path = str(modelfile)
    with open(path, "rb") as f:
        commands = parse_modelfile(decode_modelfile(f.read(), path), path)
    return next((c.line for c in commands if c.name == name), None)


def _resolve_from(record: dict[str, Any], cmd: Command, base_dir: str, path: str) -> None:
    """FROM as Ollama reads it: a path (relative to the Modelfile) if it exists, else a
    registered name (its record copied in), else a built-in alias."""
    value = cmd.args
    candidate = _expand(value, base_dir)
    if os.path.exists(candidate):
        record["from"] = candidate
        for f in _model_files(candidate):
            record["files"][f] = _stat_digest(f)
        return
    parent = find(value) if is_name(value) else None
    if parent is not None:
        if canonical_name(value) == record["name"]:
            raise BadInputError(
                f"FROM {value}: a persona cannot start from itself (its current record would be "
                "replaced; copy it first with `twofiles cp`)",
                path=path,
                line=cmd.line,
            )
        for key in ("from", "adapters", "system", "template", "parameters", "messages", "license"):
            record[key] = parent[key]
        record["files"] = dict(parent.get("files", {}))
        record["parent"] = parent["name"]
        return
    if value in ALIASES:
        file = alias_path(value)
        if not file.is_file():
            raise BadInputError(
                f"FROM {value}: not downloaded yet: run `twofiles pull {value}`",
                path=path,
                line=cmd.line,
            )
        record["from"] = value
        record["files"][str(file)] = _stat_digest(str(file))
        return
    raise BadInputError(
        f"FROM {value}: no such file (looked in {base_dir}), registered name or built-in alias "
        f"({', '.join(sorted(ALIASES))})",
        path=path,
        line=cmd.line,
    )


# ---------------------------------------------------------------------------------------------
# Record -> what a loaded model carries, and back to a Modelfile


def persona_of(record: dict[str, Any]) -> Persona:
    params = record.get("parameters", {})
    sampling: dict[str, Any] = {}
    for key, value in params.items():
        field = PARAMETERS[key].field if key in PARAMETERS else None
        if field is not None:
            sampling[field] = value
    return Persona(
        name=record["name"],
        system=record.get("system"),
        sampling=sampling,
        messages=tuple((m["role"], m["content"]) for m in record.get("messages", [])),
        template=record.get("template"),
        num_ctx=params.get("num_ctx"),
        tools=(
            tuple(t.strip() for t in params["tools"].split(",") if t.strip())
            if "tools" in params
            else None
        ),
    )


def _quote(value: str) -> str:
    if '"""' in value:
        raise TwofilesError('a value holding """ cannot be written as a Modelfile value')
    if "\n" in value or '"' in value or value != value.strip() or not value:
        return f'"""{value}"""'
    return value


def to_modelfile(record: dict[str, Any]) -> str:
    """The record as a Modelfile (paths absolute), which `create` reads back to the same persona."""
    lines = [
        f"# Modelfile of {record['name']} (twofiles show --modelfile)",
        f"FROM {_quote(record['from'])}",
    ]
    lines += [f"ADAPTER {_quote(a)}" for a in record.get("adapters", [])]
    if record.get("template") is not None:
        lines.append(f"TEMPLATE {_quote(record['template'])}")
    if record.get("system") is not None:
        lines.append(f"SYSTEM {_quote(record['system'])}")
    for key, value in record.get("parameters", {}).items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_quote(str(v))}")
    for m in record.get("messages", []):
        lines.append(f"MESSAGE {m['role']} {_quote(m['content'])}")
    lines += [f"LICENSE {_quote(text)}" for text in record.get("license", [])]
    return "\n".join(lines) + "\n"


__all__ = [
    "PARAMETERS",
    "Command",
    "build_record",
    "canonical_name",
    "check_template",
    "copy",
    "file_status",
    "find",
    "get",
    "instruction_line",
    "is_name",
    "list_records",
    "parse_modelfile",
    "persona_of",
    "record_path",
    "registry_dir",
    "remove",
    "save",
    "to_modelfile",
]
