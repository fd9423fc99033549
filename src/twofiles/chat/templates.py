"""Chat templates: a conversation -> token ids + the loss mask, and generated text -> a message.

What it owns: `ChatFormat`, a Jinja chat template as Hugging Face stores them (sandboxed;
`messages`, `add_generation_prompt`, `tools`, `bos_token`, `eos_token`, `raise_exception`),
either the model's own (`LoadedModel.chat_template`; SmolLM2's is ChatML) or twofiles' built-in
one (`BUILTIN_TEMPLATE`, on our special tokens). One renderer serves both and returns token ids
plus the loss mask; `parse_assistant` turns generated text back into content + tool calls, in
our tool-call syntax or Hermes' (`TOOL_CALL_OPENERS`).

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

What it leaves to others: the message types (chat/messages.py), generation and the agent loop
(engine.py, chat/agent.py), training on the ids and masks (train/).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from twofiles.chat.messages import Message, ToolCall, parse_messages
from twofiles.errors import BadInputError, TwofilesError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.tokenizer import Tokenizer

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
TOOL_CALL_OPENERS = ["<|tool_call_start|>", "<tool_call>"]

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
    raw_id = obj.get("id")
    call_id = raw_id if isinstance(raw_id, str) else ""
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


__all__ = ["BUILTIN_TEMPLATE", "TOOL_CALL_OPENERS", "ChatFormat", "TemplateError"]
