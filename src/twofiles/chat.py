"""Conversations: typed messages, chat templates, the loss mask, tool-call syntax, the agent loop.

What it owns:
- `Message` / `ToolCall`: the ecosystem's OpenAI message format (system / user / assistant / tool,
  assistant `tool_calls` with JSON-string arguments, tool results with `tool_call_id`), parsed and
  validated by `parse_messages` (errors name the field: `messages[2].role: ...`) and read from
  JSONL by `read_conversations` (errors name file:line).
- `ChatFormat`: a Jinja chat template as Hugging Face stores them (sandboxed; `messages`,
  `add_generation_prompt`, `tools`, `bos_token`, `eos_token`, `raise_exception`), either the
  model's own (`LoadedModel.chat_template`; SmolLM2's is ChatML) or twofiles' built-in one
  (`BUILTIN_TEMPLATE`, on our special tokens). One renderer serves both and returns token ids plus
  the loss mask; `parse_assistant` turns generated text back into content + tool calls.
- `respond`: the agent loop (generate, run tool calls, feed results back, continue; bounded).

How rendering stays safe and trainable:
- Template text is trusted, message text is not. The rendered string is cut at the special
  tokens the *template* wrote; everything between is encoded as plain text, so a user who types
  "<|im_start|>" or "<|assistant_start|>" gets those bytes, never a turn boundary. Which special
  strings came from messages is found by rendering once more with those strings replaced by
  same-length private-use characters and comparing positions (robust to filters like `trim`).
- The loss mask marks what the model should learn to write: for each assistant message, the text
  between the end of the generation prompt of the conversation before it (rendered with
  `add_generation_prompt=True`) and its end-of-turn token, inclusive. The rendering is also cut at
  those boundaries, which is exactly how inference tokenizes (prompt, then generated tokens).

What it leaves to others: sampling and the KV cache (engine.py), the tools themselves
(twofiles.tools), training on the ids and masks (train/), HTTP (serve/).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

from twofiles.errors import BadInputError, TwofilesError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.engine import SamplingParams
    from twofiles.tokenizer import Tokenizer
    from twofiles.tools import Tool

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass
class ToolCall:
    name: str  # the tool to run
    arguments: dict[str, Any]  # its arguments, already decoded from JSON
    id: str = ""  # links the call to its tool message (OpenAI `tool_call_id`)

    def to_dict(self) -> dict[str, Any]:
        """OpenAI form: arguments as a JSON string."""
        return {
            "id": self.id,
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }


@dataclass
class Message:
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant only
    tool_call_id: str = ""  # tool only: which call this is the result of
    name: str = ""  # tool only (optional): the tool's name

    def to_dict(self) -> dict[str, Any]:
        """OpenAI form; empty optional fields are left out."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.name:
            d["name"] = self.name
        return d


def messages_to_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [m.to_dict() for m in messages]


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _content(value: Any, where: str) -> str:
    """A message's content: a string, null, or OpenAI's list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise BadInputError(
                    f"{where}[{j}]: only text parts are supported ({{'type': 'text', 'text': ...}})"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise BadInputError(f"{where}: must be a string (got {type(value).__name__})")


def _tool_call(obj: Any, where: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: must be an object (got {type(obj).__name__})")
    if obj.get("type", "function") != "function":
        raise BadInputError(f"{where}.type: must be 'function' (got {obj.get('type')!r})")
    # OpenAI nests name/arguments under "function"; Hugging Face data often has them flat.
    fn, fwhere = (obj["function"], f"{where}.function") if "function" in obj else (obj, where)
    if not isinstance(fn, dict):
        raise BadInputError(f"{fwhere}: must be an object (got {type(fn).__name__})")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BadInputError(f"{fwhere}.name: must be a non-empty string (got {name!r})")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise BadInputError(f"{fwhere}.arguments: not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise BadInputError(
            f"{fwhere}.arguments: must be a JSON object (got {type(args).__name__})"
        )
    call_id = obj.get("id", "")
    if call_id is None:
        call_id = ""
    if not isinstance(call_id, str):
        raise BadInputError(f"{where}.id: must be a string (got {type(call_id).__name__})")
    return ToolCall(name=name, arguments=args, id=call_id)


def parse_message(obj: Any, *, where: str = "message") -> Message:
    """One OpenAI-style message dict -> Message, or BadInputError naming the field at fault."""
    if isinstance(obj, Message):
        return obj
    if not isinstance(obj, dict):
        raise BadInputError(
            f"{where}: must be an object with 'role' and 'content' (got {type(obj).__name__})"
        )
    role = obj.get("role")
    if role not in ROLES:
        raise BadInputError(f"{where}.role: must be one of {', '.join(ROLES)} (got {role!r})")
    if "content" not in obj and not (role == "assistant" and obj.get("tool_calls")):
        raise BadInputError(f"{where}.content: missing")
    content = _content(obj.get("content"), f"{where}.content")
    calls_obj = obj.get("tool_calls") or []
    if calls_obj and role != "assistant":
        raise BadInputError(
            f"{where}.tool_calls: only assistant messages make tool calls (role is {role!r})"
        )
    if not isinstance(calls_obj, list):
        raise BadInputError(f"{where}.tool_calls: must be a list (got {type(calls_obj).__name__})")
    calls = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls_obj)]
    extra = {}
    for key in ("tool_call_id", "name"):
        value = obj.get(key) or ""
        if not isinstance(value, str):
            raise BadInputError(f"{where}.{key}: must be a string (got {type(value).__name__})")
        extra[key] = value
    if extra["tool_call_id"] and role != "tool":
        raise BadInputError(
            f"{where}.tool_call_id: only tool messages answer a tool call (role is {role!r})"
        )
    return Message(role=role, content=content, tool_calls=calls, **extra)


def parse_messages(obj: Any, *, where: str = "messages") -> list[Message]:
    """A list of OpenAI-style message dicts (or Messages) -> typed Messages. BadInputError names
    the field at fault, e.g. `messages[2].role: must be one of ...`."""
    if not isinstance(obj, list):
        raise BadInputError(f"{where}: must be a list of messages (got {type(obj).__name__})")
    return [parse_message(m, where=f"{where}[{i}]") for i, m in enumerate(obj)]


def read_conversations(path: str | os.PathLike[str]) -> list[list[Message]]:
    """Conversations from a JSONL file, one `{"messages": [...]}` object per line (blank lines
    skipped). Errors name file:line and the field."""
    path = str(path)
    if not os.path.isfile(path):
        raise BadInputError("no such conversations file", path=path)
    out: list[list[Message]] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInputError("not UTF-8 text", path=path, line=lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(
                    f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=lineno
                ) from None
            if not isinstance(obj, dict) or "messages" not in obj:
                raise BadInputError(
                    'expected an object with a "messages" list', path=path, line=lineno
                )
            try:
                msgs = parse_messages(obj["messages"])
            except BadInputError as e:
                raise BadInputError(str(e), path=path, line=lineno) from None
            if not msgs:
                raise BadInputError("messages: empty conversation", path=path, line=lineno)
            out.append(msgs)
    return out


def load_conversation(path: str | os.PathLike[str]) -> list[Message]:
    """One conversation from a JSON file: `{"messages": [...]}` or a bare list (what /save writes)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise BadInputError("no such file", path=path) from None
    except UnicodeDecodeError:
        raise BadInputError("not UTF-8 text", path=path) from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"invalid JSON ({e.msg})", path=path, line=e.lineno) from None
    if isinstance(obj, dict):
        if "messages" not in obj:
            raise BadInputError('expected {"messages": [...]} or a list of messages', path=path)
        obj = obj["messages"]
    try:
        return parse_messages(obj)
    except BadInputError as e:
        raise BadInputError(str(e), path=path) from None


def save_conversation(path: str | os.PathLike[str], messages: Sequence[Message]) -> None:
    """Write `{"messages": [...]}` (OpenAI form), atomically."""
    from twofiles.artifact import atomic_write_bytes

    text = json.dumps({"messages": messages_to_dicts(messages)}, ensure_ascii=False, indent=1)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def drop_oldest_exchange(messages: Sequence[Message]) -> list[Message] | None:
    """The conversation without its oldest exchange (the first user message after the leading
    system messages, and the replies and tool results up to the next user message), for when it
    outgrows the model's context. None when only the system prompt and the last user message
    are left: there is nothing more to drop."""
    msgs = list(messages)
    first = next((i for i, m in enumerate(msgs) if m.role != "system"), len(msgs))
    users = [i for i, m in enumerate(msgs) if m.role == "user" and i > first]
    if not users:
        return None
    return msgs[:first] + msgs[users[0] :]


# ---------------------------------------------------------------------------------------------
# Chat templates

# twofiles' own template, on the special tokens of tokenizer.SPECIAL_TOKENS. A leading system
# message (and the tool list, one JSON schema per line) goes in the system block; an assistant's
# tool calls follow its text, each as <|tool_call_start|>{"name": .., "arguments": {..}}<|tool_call_end|>;
# a tool's result is a <|tool_result_start|>..<|tool_result_end|> block between assistant turns.
BUILTIN_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system = messages[0].content -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- if system is not none or tools -%}"
    "<|system_start|>{{ system or '' }}"
    "{%- if tools -%}{{ '\\n\\n' if system else '' }}Tools:{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}{%- endif -%}"
    "<|system_end|>"
    "{%- endif -%}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'user' -%}<|user_start|>{{ m.content }}<|user_end|>"
    "{%- elif m.role == 'assistant' -%}<|assistant_start|>{{ m.content }}"
    "{%- for tc in m.tool_calls or [] -%}"
    "<|tool_call_start|>{{ {'name': tc.function.name, 'arguments': tc.function.arguments} | tojson }}<|tool_call_end|>"
    "{%- endfor -%}<|assistant_end|>"
    "{%- elif m.role == 'tool' -%}<|tool_result_start|>{{ m.content }}<|tool_result_end|>"
    "{%- elif m.role == 'system' -%}<|system_start|>{{ m.content }}<|system_end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant_start|>{%- endif -%}"
)

# Tool-call syntaxes parse_assistant understands: ours, and Hermes / Qwen's (the common one in
# open models' templates, and what we ask templates without tool support to use).
_TOOL_CALL_RES = [
    re.compile(r"<\|tool_call_start\|>(.*?)(?:<\|tool_call_end\|>|$)", re.DOTALL),
    re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL),
]
_TOOL_CALL_OPENERS = ["<|tool_call_start|>", "<tool_call>"]

_PUA = "\ue000"  # stands in for message text that looks like a special token (never in a vocabulary's specials)


class TemplateError(BadInputError):
    """A chat template that does not compile, raises, or cannot be used for training masks."""


# A chat template comes with the model file, so it is untrusted code: Jinja's sandbox keeps it
# from Python's internals, and these bounds keep it from the machine's time and memory (real
# templates render a conversation in milliseconds, into kilobytes).
TEMPLATE_SECONDS = 2.0  # one render, wall clock: checked at every call, loop range and operator
TEMPLATE_MAX_CHARS = 4_000_000  # one render's output; also bounds a string or list built by * or +
TEMPLATE_MAX_WIDTH = 10_000  # the width argument of center / indent / tojson(indent) / %-formats
_template_deadline = threading.local()


def _check_deadline() -> None:
    at = getattr(_template_deadline, "at", None)
    if at is not None and time.monotonic() > at:
        raise TemplateError(
            f"chat template: rendering took over {TEMPLATE_SECONDS} s (a runaway loop?)"
        )


def _bounded(width: Any, what: str) -> Any:
    if isinstance(width, int) and not -TEMPLATE_MAX_WIDTH <= width <= TEMPLATE_MAX_WIDTH:
        raise TemplateError(f"chat template: {what} {width} is over {TEMPLATE_MAX_WIDTH}")
    return width


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers' own `tojson` (unlike Jinja's, it does not HTML-escape), so templates render alike.
    return json.dumps(
        x,
        ensure_ascii=ensure_ascii,
        indent=_bounded(indent, "tojson indent"),
        separators=separators,
        sort_keys=sort_keys,
    )


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    raise JinjaTemplateError(message)


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


def _bounded_environment():
    from jinja2.compiler import CodeGenerator, optimizeconst
    from jinja2.filters import do_center, do_format, do_indent
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class BoundedCodeGenerator(CodeGenerator):
        """`a ~ b` through the environment's size check instead of a bare str join."""

        @optimizeconst
        def visit_Concat(self, node, frame) -> None:
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The sandbox with a clock on every call and on `range`, and size checks on what can
        grow a value: `*`, `+`, `~` and `**` (intercepting them also stops Jinja from folding
        `10**10**10` at compile time). A string doubled in a loop stops at TEMPLATE_MAX_CHARS
        instead of taking the machine's memory."""

        code_generator_class = BoundedCodeGenerator
        intercepted_binops = frozenset({"*", "+", "**"})

        def call(__self, __context, __obj, *args, **kwargs):  # Jinja's own signature
            _check_deadline()
            return super().call(__context, __obj, *args, **kwargs)

        def call_binop(self, context, operator, left, right):
            _check_deadline()
            if operator == "+":
                if (
                    isinstance(left, (str, list, tuple))
                    and isinstance(right, (str, list, tuple))
                    and len(left) + len(right) > TEMPLATE_MAX_CHARS
                ):
                    raise TemplateError("chat template: a concatenation is too long")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int):
                if abs(right) > 64:
                    raise TemplateError(f"chat template: exponent {right} is too large")
            elif operator == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(n, int)
                    and len(seq) * n > TEMPLATE_MAX_CHARS
                ):
                    raise TemplateError("chat template: a repeated string or list is too long")
            return super().call_binop(context, operator, left, right)

        def bounded_concat(self, values: tuple[Any, ...]) -> str:
            parts = [str(v) for v in values]
            if sum(map(len, parts)) > TEMPLATE_MAX_CHARS:
                raise TemplateError("chat template: a concatenation is too long")
            return "".join(parts)

    def bounded_range(*args: int) -> range:
        _check_deadline()
        return safe_range(*args)

    def center(value: Any, width: int = 80) -> str:
        return do_center(value, _bounded(width, "center width"))

    def indent(s: str, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        return do_indent(s, _bounded(width, "indent width"), first, blank)

    def format_(value: str, *args: Any, **kwargs: Any) -> str:
        for w in re.findall(r"%[-+ #0]*(\d+)", str(value)):
            _bounded(int(w), "format width")
        return do_format(value, *args, **kwargs)

    # The same environment transformers uses for apply_chat_template, so rendering matches it.
    from jinja2.ext import loopcontrols

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters.update(tojson=_tojson, center=center, indent=indent, format=format_)
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, range=bounded_range
    )
    del env.globals["lipsum"]  # lorem ipsum of any length: no chat template needs it
    return env


def _compile(template: str):
    from jinja2 import TemplateSyntaxError

    env = _bounded_environment()
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise TemplateError(
            f"chat template: syntax error at template line {e.lineno}: {e.message}"
        ) from None
    except TemplateError:
        raise
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError) as e:
        # Jinja's compiler itself fails on some templates it parsed (e.g. `break` outside a loop)
        raise TemplateError(f"chat template: does not compile: {e}") from None


def _hermes_call(call: ToolCall) -> str:
    return (
        "<tool_call>\n"
        + json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def _tools_prompt(tools: list[dict[str, Any]]) -> str:
    """A system-prompt description of tools, for templates that have no `tools` support."""
    lines = [json.dumps(t.get("function", t), ensure_ascii=False) for t in tools]
    return (
        "You can call these tools. To call one, reply with "
        '<tool_call>{"name": <tool name>, "arguments": {<arguments>}}</tool_call>; '
        "its result comes back in the next message.\n" + "\n".join(lines)
    )


class ChatFormat:
    """A chat template bound to a tokenizer: conversations -> token ids + loss mask, and
    generated text -> an assistant Message. Build with `for_model`, `builtin_for` or `from_template`."""

    def __init__(self, tokenizer: Tokenizer, template: str, *, builtin: bool = False) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.builtin = builtin  # True: twofiles' own template (the model may never have learned it)
        self._jinja = _compile(template)
        names = sorted(tokenizer.special_ids, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(n) for n in names)) if names else None
        # Templates that know nothing of tools: describe tools in the system prompt and write
        # earlier tool calls into the assistant's text, Hermes-style, so the model sees them.
        self._renders_tools = "tools" in template
        self._renders_tool_calls = "tool_calls" in template
        bos = tokenizer.decode([tokenizer.bos_id])
        eos = tokenizer.decode([tokenizer.eos_ids[0]]) if tokenizer.eos_ids else bos
        self._context = {"bos_token": bos, "eos_token": eos}
        self.stop_token_ids: list[int] = self._find_stop_ids()

    # ------------------------------------------------------------------ building

    @classmethod
    def builtin_for(cls, tokenizer: Tokenizer) -> ChatFormat:
        """twofiles' built-in template; needs a tokenizer with our special tokens."""
        missing = [
            t
            for t in ("<|bos|>", "<|user_start|>", "<|assistant_start|>", "<|assistant_end|>")
            if t not in tokenizer.special_ids
        ]
        if missing:
            raise TwofilesError(
                f"this model has no chat template, and its tokenizer lacks twofiles' chat tokens ({', '.join(missing)}), "
                "so the built-in template cannot be used either"
            )
        return cls(tokenizer, BUILTIN_TEMPLATE, builtin=True)

    @classmethod
    def from_template(cls, tokenizer: Tokenizer, template: str) -> ChatFormat:
        return cls(tokenizer, template, builtin=template == BUILTIN_TEMPLATE)

    @classmethod
    def for_model(cls, loaded: LoadedModel) -> ChatFormat:
        """The model's own Jinja chat template if it has one, else twofiles' built-in template."""
        if loaded.chat_template:
            return cls.from_template(loaded.tokenizer, loaded.chat_template)
        return cls.builtin_for(loaded.tokenizer)

    def _find_stop_ids(self) -> list[int]:
        """End-of-turn ids: the tokenizer's eos ids, plus the special token the template writes
        right after an assistant's text (found by rendering a probe conversation)."""
        ids = list(dict.fromkeys(self.tokenizer.eos_ids))
        marker = "Xq7Zp"
        try:
            text = self.render_text([Message("user", "hi"), Message("assistant", marker)])
        except BadInputError:
            return ids
        at = text.rfind(marker)
        if at >= 0 and self._special_re is not None:
            m = self._special_re.match(text, at + len(marker))
            if m:
                ids.append(self.tokenizer.special_ids[m.group()])
        return list(dict.fromkeys(ids))

    # ------------------------------------------------------------------ rendering

    def _template_messages(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]]:
        """Messages as the dicts templates expect (Hugging Face form: tool-call arguments as a dict)."""
        out = []
        for m in messages:
            content = m.content
            if m.tool_calls and not self._renders_tool_calls:
                content = "\n".join(
                    [content] * bool(content) + [_hermes_call(c) for c in m.tool_calls]
                )
            d: dict[str, Any] = {"role": m.role, "content": content}
            if m.tool_calls and self._renders_tool_calls:
                d["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            if m.name:
                d["name"] = m.name
            out.append(d)
        if tools and not self._renders_tools:
            note = _tools_prompt(tools)
            if out and out[0]["role"] == "system":
                out[0] = {
                    **out[0],
                    "content": (out[0]["content"] + "\n\n" + note) if out[0]["content"] else note,
                }
            else:
                out.insert(0, {"role": "system", "content": note})
        return out

    def _render_dicts(
        self,
        dicts: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
    ) -> str:
        from jinja2.exceptions import TemplateError as JinjaTemplateError

        _template_deadline.at = time.monotonic() + TEMPLATE_SECONDS
        out: list[str] = []
        size = 0
        try:
            for piece in self._jinja.generate(
                messages=dicts,
                add_generation_prompt=add_generation_prompt,
                tools=tools if self._renders_tools else None,
                **self._context,
            ):
                size += len(piece)
                if size > TEMPLATE_MAX_CHARS:
                    raise TemplateError(
                        f"chat template: output is over {TEMPLATE_MAX_CHARS} characters"
                    )
                _check_deadline()
                out.append(piece)
        except TemplateError:
            raise
        except JinjaTemplateError as e:
            raise TemplateError(f"chat template: {e}") from None
        except (
            TypeError,
            ValueError,
            LookupError,
            ArithmeticError,
            RecursionError,
            MemoryError,
        ) as e:
            # the template's own code failed on these messages (None has no len(), an index
            # out of range, a macro calling itself, a string doubled until memory ran out):
            # the template's fault, reported as such
            raise TemplateError(f"chat template: {type(e).__name__}: {e}") from None
        finally:
            _template_deadline.at = None
        return "".join(out)

    def render_text(
        self,
        messages: Sequence[Message | dict],
        *,
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
    ) -> str:
        """The template's output as text (what `render` tokenizes)."""
        msgs = parse_messages(list(messages))
        return self._render_dicts(
            self._template_messages(msgs, tools), add_generation_prompt, tools
        )

    def _trusted_specials(
        self,
        msgs: list[Message],
        dicts: list[dict[str, Any]],
        text: str,
        add_generation_prompt: bool,
        tools: list[dict] | None,
    ) -> list[re.Match]:
        """The special-token matches in `text` that the template wrote (not the messages)."""
        if self._special_re is None:
            return []
        matches = list(self._special_re.finditer(text))
        if not matches:
            return []
        if not any(self._special_re.search(s) for s in _strings(dicts)):
            return matches  # the common case: no message text looks like a special token
        neutral = _map_strings(
            dicts, lambda s: self._special_re.sub(lambda m: _PUA * len(m.group()), s)
        )
        shadow = self._render_dicts(neutral, add_generation_prompt, tools)
        if len(shadow) != len(text):
            # The template does more than place and trim message text (it branches on it), so
            # positions do not line up: refuse rather than risk a forged turn.
            where = next((i for i, m in enumerate(msgs) if self._special_re.search(m.content)), 0)
            raise BadInputError(
                f"messages[{where}].content: contains special-token text, which this chat template's rendering cannot keep apart from its own tokens"
            )
        return [m for m in matches if shadow[m.start() : m.end()] == m.group()]

    def render(
        self,
        messages: Sequence[Message | dict],
        *,
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
    ) -> tuple[list[int], list[int]]:
        """Token ids of the conversation and the loss mask: 1 on each assistant message's tokens,
        its end-of-turn token included; 0 on everything else (system, user, tool, template text)."""
        msgs = parse_messages(list(messages))
        dicts = self._template_messages(msgs, tools)
        text = self._render_dicts(dicts, add_generation_prompt, tools)
        specials = self._trusted_specials(msgs, dicts, text, add_generation_prompt, tools)
        stop = set(self.stop_token_ids)
        offset = len(dicts) - len(msgs)  # 1 when a system message was added to describe tools
        starts: list[tuple[int, int]] = []  # (message index, where its learned span starts)
        for i, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            prefix = self._render_dicts(dicts[: i + offset], True, tools)
            if not text.startswith(prefix):
                raise TemplateError(
                    f"chat template: rendering messages[:{i}] with the generation prompt is not a prefix of the whole "
                    "conversation, so the assistant's tokens cannot be marked for training"
                )
            starts.append((i, len(prefix)))
        spans: list[tuple[int, int]] = []
        for k, (i, start) in enumerate(starts):
            bound = starts[k + 1][1] if k + 1 < len(starts) else len(text)
            # Learn through the end-of-turn token, not the template's text after it (a newline in
            # ChatML), which the model never generates: generation stops on that token.
            end = next(
                (
                    s.end()
                    for s in specials
                    if start <= s.start() < bound and self.tokenizer.special_ids[s.group()] in stop
                ),
                None,
            )
            if end is None:  # no end-of-turn token: the message's own rendering says where it ends
                whole = self._render_dicts(dicts[: i + 1 + offset], False, tools)
                end = len(whole) if text.startswith(whole) and len(whole) > start else bound
            spans.append((start, end))
        return self._encode(text, specials, spans)

    def _encode(
        self, text: str, specials: list[re.Match], spans: list[tuple[int, int]]
    ) -> tuple[list[int], list[int]]:
        cuts = {0, len(text)}
        for s in specials:
            cuts.update((s.start(), s.end()))
        for a, b in spans:
            cuts.update((a, b))
        special_at = {s.start(): self.tokenizer.special_ids[s.group()] for s in specials}
        special_end = {s.start(): s.end() for s in specials}
        bounds = sorted(cuts)
        pieces = list(itertools.pairwise(bounds))
        plain = [text[a:b] for a, b in pieces if a not in special_at]
        # plain mode: special-token text inside messages stays text; one batched call to the Rust side
        encoded = iter(self.tokenizer.encode_batch(plain) if plain else [])
        ids: list[int] = []
        mask: list[int] = []
        for a, b in pieces:
            if a in special_at:
                if (
                    special_end[a] != b
                ):  # an assistant span would start or end inside a special token
                    raise TemplateError(
                        "chat template: the generation prompt ends inside a special token; cannot mark the assistant's tokens"
                    )
                piece = [special_at[a]]
            else:
                piece = next(encoded)
            learn = int(any(s <= a and b <= e for s, e in spans))
            ids.extend(piece)
            mask.extend([learn] * len(piece))
        return ids, mask

    def prompt_ids(
        self, messages: Sequence[Message | dict], *, tools: list[dict] | None = None
    ) -> list[int]:
        """The ids to generate the next assistant message from."""
        return self.render(messages, add_generation_prompt=True, tools=tools)[0]

    # ------------------------------------------------------------------ parsing

    def parse_assistant(self, text: str) -> Message:
        """Generated text -> an assistant Message: tool calls in our syntax or Hermes' are taken
        out into `tool_calls` (a call cut off at the end of the text is still parsed); text
        outside them is the content. A call whose JSON is not {"name": str, "arguments": {...}}
        stays in the content as text."""
        calls: list[ToolCall] = []
        kept: list[str] = []
        pos = 0
        for m in _iter_tool_calls(text):
            call = _decode_call(m.group(1))
            if call is None:
                continue
            kept.append(text[pos : m.start()])
            pos = m.end()
            calls.append(call)
        kept.append(text[pos:])
        content = "".join(kept)
        if calls:
            content = content.strip()
        return Message("assistant", content, tool_calls=calls)

    def __repr__(self) -> str:
        return f"ChatFormat({'built-in' if self.builtin else 'model'} template, stop_token_ids={self.stop_token_ids})"


def _iter_tool_calls(text: str) -> Iterator[re.Match]:
    """Tool-call matches of either syntax, in text order, not overlapping."""
    found = sorted((m for r in _TOOL_CALL_RES for m in r.finditer(text)), key=lambda m: m.start())
    end = 0
    for m in found:
        if m.start() >= end:
            yield m
            end = m.end()


def _decode_call(body: str) -> ToolCall | None:
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the OpenAI form, arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else ""
    return ToolCall(obj["name"], args, call_id)


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _map_strings(obj: Any, f) -> Any:
    if isinstance(obj, str):
        return f(obj)
    if isinstance(obj, dict):
        return {f(k) if isinstance(k, str) else k: _map_strings(v, f) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, f) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The agent loop


class ChatEvent(NamedTuple):
    """What `respond` yields: ("text", str delta) | ("tool_call", ToolCall) |
    ("tool_result", str) | ("done", list[Message] appended to the conversation)."""

    kind: Literal["text", "tool_call", "tool_result", "done"]
    value: Any


@dataclass
class RespondStats:
    """Filled in by `respond` when passed as `stats=` (for speed reports)."""

    tokens: int = 0  # tokens generated, all rounds
    prompt_tokens: int = 0  # prompt length of the last round
    rounds: int = 0  # generation rounds (1 + tool rounds)
    finish: str | None = None  # the last round's finish: "stop" or "length"


class _VisibleText:
    """Streams text deltas up to the first tool-call opener (a tool call is shown as an event,
    not as raw JSON), holding back any tail that could be the start of an opener."""

    def __init__(self) -> None:
        self.text = ""
        self._shown = 0
        self._hidden = False

    def push(self, delta: str) -> str:
        self.text += delta
        if self._hidden:
            return ""
        cut = min(
            (i for i in (self.text.find(o, self._shown) for o in _TOOL_CALL_OPENERS) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            self._hidden = True
            end = cut
        else:
            end = len(self.text) - _held(self.text, self._shown)
        out = self.text[self._shown : end]
        self._shown = end
        return out

    def finish(self, *, calls: bool) -> str:
        """The rest of the text to show: none past an opener when the reply did call a tool; all
        of it when it did not (a malformed or cut-off call is shown as the text it is)."""
        if self._hidden and calls:
            return ""
        out = self.text[self._shown :]
        self._shown = len(self.text)
        return out


def _held(text: str, shown: int) -> int:
    held = 0
    for o in _TOOL_CALL_OPENERS:
        for n in range(min(len(o) - 1, len(text) - shown), held, -1):
            if text.endswith(o[:n]):
                held = n
                break
    return held


def tools_in_prompt(provenance: Mapping[str, Any]) -> bool:
    """Whether a model expects its tools described in the prompt. twofiles' SFT teaches tool
    calls with no list in the prompt (a list costs ~400 tokens: more than a speedrun model's whole
    context) and records `"tools_in_prompt": false` in the parameters file; other models are
    given the list, as the OpenAI API does."""
    return bool(provenance.get("tools_in_prompt", True))


def _run_tool(tools: Mapping[str, Tool], call: ToolCall) -> str:
    from twofiles.tools import run_tool

    try:
        return str(run_tool(tools, call.name, call.arguments).content)
    except (
        Exception
    ) as e:  # tools report failures as results; a bug in one must not end the chat either
        return f"error: {type(e).__name__}: {e}"


def respond(
    loaded: LoadedModel,
    fmt: ChatFormat,
    messages: Sequence[Message],
    params: SamplingParams,
    *,
    tools: Mapping[str, Tool] | None = None,
    max_tool_rounds: int = 4,
    stats: RespondStats | None = None,
    describe_tools: bool = True,
) -> Iterator[ChatEvent]:
    """The agent loop: generate an assistant reply (streamed as "text" deltas, stopping on the
    template's end-of-turn ids); with `tools`, when it calls some, run them ("tool_call", then
    "tool_result"), append the tool messages and generate again, at most `max_tool_rounds` times
    (calls made after that are left unrun). Without `tools` the reply is plain text, any
    tool-call syntax included. Ends with ("done", the messages appended); `messages` itself is
    not modified. Round r samples with seed + r, so a seeded reply is reproducible.
    `describe_tools=False` leaves the tools' descriptions out of the prompt, for a model
    finetuned to call them without one (see `tools_in_prompt`): the calls still run."""
    from twofiles.engine import generate_steps
    from twofiles.tools import openai_tool_specs

    schemas = openai_tool_specs(tools) if tools and describe_tools else None
    history = list(messages)
    added: list[Message] = []
    stats = stats if stats is not None else RespondStats()
    n_calls = 0
    for round_ in range(max_tool_rounds + 1):
        ids = fmt.prompt_ids(history + added, tools=schemas)
        p = replace(
            params,
            seed=None if params.seed is None else params.seed + round_,
            stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *fmt.stop_token_ids])),
        )
        stats.prompt_tokens = len(ids)
        stats.rounds += 1
        streamed = ""
        visible = _VisibleText()
        for step in generate_steps(loaded.model, ids, p, tokenizer=loaded.tokenizer):
            stats.tokens += 1
            stats.finish = step.finish
            if not tools:  # without tools, tool-call syntax is just text: nothing runs it
                streamed += step.text
                delta = step.text
            else:
                delta = visible.push(step.text) if step.text else ""
            if delta:
                yield ChatEvent("text", delta)
        reply = fmt.parse_assistant(visible.text) if tools else Message("assistant", streamed)
        tail = visible.finish(calls=bool(reply.tool_calls))
        if tail:
            yield ChatEvent("text", tail)
        for call in reply.tool_calls:
            if not call.id:
                n_calls += 1
                call.id = f"call_{n_calls}"
        added.append(reply)
        if not reply.tool_calls or not tools or round_ == max_tool_rounds:
            break
        for call in reply.tool_calls:
            yield ChatEvent("tool_call", call)
            content = _run_tool(tools, call)
            yield ChatEvent("tool_result", content)
            added.append(Message("tool", content, tool_call_id=call.id, name=call.name))
    yield ChatEvent("done", added)


__all__ = [
    "BUILTIN_TEMPLATE",
    "ROLES",
    "ChatEvent",
    "ChatFormat",
    "Message",
    "RespondStats",
    "Role",
    "TemplateError",
    "ToolCall",
    "drop_oldest_exchange",
    "load_conversation",
    "messages_to_dicts",
    "parse_message",
    "parse_messages",
    "read_conversations",
    "respond",
    "save_conversation",
    "tools_in_prompt",
]
