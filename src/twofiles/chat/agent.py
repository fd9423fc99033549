"""The agent loop: generate a reply, run the tools it calls, feed the results back, go again.

What it owns: `respond` (bounded tool rounds, streamed text deltas that never show a tool call's
raw syntax, seeded rounds), its events (`ChatEvent`) and counters (`RespondStats`), and
`tools_in_prompt` (whether a model expects its tools described in the prompt). What it leaves
to others: rendering and parsing (chat/templates.py), sampling (engine.py), the tools themselves
(twofiles.tools).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from twofiles.chat.messages import Message, ToolCall
from twofiles.chat.templates import TOOL_CALL_OPENERS, ChatFormat

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.engine import SamplingParams, Step
    from twofiles.prefix_cache import PrefixCache
    from twofiles.tools import Tool


class ChatEvent(NamedTuple):
    """What `respond` yields: ("text", str delta) | ("tool_call", ToolCall) |
    ("tool_result", str) | ("guard", GuardAction) | ("done", list[Message] appended to the
    conversation)."""

    kind: Literal["text", "tool_call", "tool_result", "guard", "done"]
    value: Any


@dataclass(frozen=True)
class GuardAction:
    """A guard acted on this turn: which one (`guard`), on what (`stage`), and why."""

    guard: str  # e.g. "input", "classifier", "spotlight", "tools", "output"
    stage: Literal["input", "tool_call", "tool_result", "output"]
    reasons: tuple[str, ...] = ()
    score: float | None = None


class OutputFilter(Protocol):
    """Filters a reply as it streams: `push` takes a delta and returns what may be shown now
    (holding back any tail that could still become something to remove), `finish` the rest."""

    def push(self, delta: str) -> str: ...

    def finish(self) -> str: ...

    def actions(self) -> list[GuardAction]: ...  # what it removed so far, and why


class GenerateSteps(Protocol):
    """What generates a round: engine.generate_steps or a stand-in with its signature."""

    def __call__(
        self,
        model: Any,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        tokenizer: Any = None,
        prefix_cache: PrefixCache | None = None,
    ) -> Iterator[Step]: ...


class TurnGuard(Protocol):
    """The hooks `respond` calls when a guard is on (implemented by twofiles.guard.Guard; the
    chat layer only defines where they are called).

    - `check_input(messages)`: before anything is generated; a non-None (refusal text, actions)
      blocks the turn: that text is the reply and the model never runs.
    - `untrusted(text, source)`: a tool's result on its way into the prompt (source = the tool's
      name), returned as the text the model will read (spotlighting: delimiters, datamarking).
    - `check_call(call)`: before a tool runs; a non-None action blocks it and the model reads
      "blocked by policy: <reasons>" as the tool's result.
    - `output_filter()`: a fresh filter for one round's visible text.
    - `prepare(messages, tools)`: once per turn after `check_input`, before the first round:
      the messages the prompt is rendered from (e.g. a note added to the system message).
    """

    def check_input(self, messages: Sequence[Message]) -> tuple[str, list[GuardAction]] | None: ...

    def untrusted(self, text: str, source: str) -> str: ...

    def check_call(self, call: ToolCall) -> GuardAction | None: ...

    def output_filter(self) -> OutputFilter: ...

    def prepare(
        self, messages: Sequence[Message], tools: Mapping[str, Tool] | None
    ) -> list[Message]: ...


@dataclass
class RespondStats:
    """Filled in by `respond` when passed as `stats=` (for speed reports)."""

    tokens: int = 0  # tokens generated, all rounds
    prompt_tokens: int = 0  # prompt length of the last round
    rounds: int = 0  # generation rounds (1 + tool rounds)
    prompt_tokens_seen: int = 0  # prompt tokens of every round
    prompt_tokens_reused: int = 0  # of those, served from the prefix cache (not computed again)
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
            (i for i in (self.text.find(o, self._shown) for o in TOOL_CALL_OPENERS) if i >= 0),
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
    for o in TOOL_CALL_OPENERS:
        for n in range(min(len(o) - 1, len(text) - shown), held, -1):
            if text.endswith(o[:n]):
                held = n
                break
    return held


def tools_in_prompt(provenance: Mapping[str, Any]) -> bool:
    """Whether a model expects its tools described in the prompt. twofiles' SFT teaches tool
    calls with no list in the prompt (a list costs ~400 tokens: more than a speedrun model's whole
    context) and records `"tools_in_prompt": false` in the parameters file; a model tuned further
    from it (DPO, RL) keeps what its base learned, so the base's provenance answers when the
    model's own does not say; other models are given the list, as the OpenAI API does."""
    p: Any = provenance
    while isinstance(p, Mapping) and p:
        if "tools_in_prompt" in p:
            return bool(p["tools_in_prompt"])
        p = p.get("base_provenance")
    return True


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
    prefix_cache: PrefixCache | None = None,
    guard: TurnGuard | None = None,
    generate: GenerateSteps | None = None,
) -> Iterator[ChatEvent]:
    """The agent loop: generate an assistant reply (streamed as "text" deltas, stopping on the
    template's end-of-turn ids); with `tools`, when it calls some, run them ("tool_call", then
    "tool_result"), append the tool messages and generate again, at most `max_tool_rounds` times
    (calls made after that are left unrun). Without `tools` the reply is plain text, any
    tool-call syntax included. Ends with ("done", the messages appended); `messages` itself is
    not modified. Round r samples with seed + r, so a seeded reply is reproducible.
    `describe_tools=False` leaves the tools' descriptions out of the prompt, for a model
    finetuned to call them without one (see `tools_in_prompt`): the calls still run.
    With a `prefix_cache` kept across calls, each round and each turn computes only the tokens
    the conversation added: the earlier prompt and reply are loaded from it.
    With a `guard` (see `TurnGuard`), the input may be refused before the model runs, the
    prompt's messages are prepared once (e.g. a note added to the system message), tool
    calls are checked before they run, tool results are marked as untrusted data, and the
    visible text is filtered; each act is yielded as a ("guard", GuardAction) event. The stored
    reply is the filtered text, so a removed secret never comes back in a later turn.
    `generate` replaces engine.generate_steps for every round (same signature): a caller that
    plays many conversations can serve repeated prompts from a memo (twofiles.redteam)."""
    from twofiles.engine import generate_steps
    from twofiles.tools import openai_tool_specs

    schemas = openai_tool_specs(tools) if tools and describe_tools else None
    history = list(messages)
    added: list[Message] = []
    stats = stats if stats is not None else RespondStats()
    n_calls = 0
    if guard is not None:
        blocked = guard.check_input(history)
        if blocked is not None:
            text, acts = blocked
            for act in acts:
                yield ChatEvent("guard", act)
            yield ChatEvent("text", text)
            stats.finish = "guard"
            yield ChatEvent("done", [Message("assistant", text)])
            return
        history = guard.prepare(history, tools)
    for round_ in range(max_tool_rounds + 1):
        ids = fmt.prompt_ids(history + added, tools=schemas)
        p = replace(
            params,
            seed=None if params.seed is None else params.seed + round_,
            stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *fmt.stop_token_ids])),
        )
        stats.prompt_tokens = len(ids)
        stats.prompt_tokens_seen += len(ids)
        stats.rounds += 1
        hits_before = prefix_cache.hit_tokens if prefix_cache is not None else 0
        streamed = ""
        visible = _VisibleText()
        shown = guard.output_filter() if guard is not None else None
        steps = (generate or generate_steps)(
            loaded.model, ids, p, tokenizer=loaded.tokenizer, prefix_cache=prefix_cache
        )
        for step in steps:
            stats.tokens += 1
            stats.finish = step.finish
            if not tools:  # without tools, tool-call syntax is just text: nothing runs it
                streamed += step.text
                delta = step.text
            else:
                delta = visible.push(step.text) if step.text else ""
            if shown is not None and delta:
                delta = shown.push(delta)
            if delta:
                yield ChatEvent("text", delta)
        if prefix_cache is not None:
            stats.prompt_tokens_reused += prefix_cache.hit_tokens - hits_before
        reply = fmt.parse_assistant(visible.text) if tools else Message("assistant", streamed)
        tail = visible.finish(calls=bool(reply.tool_calls))
        if guard is not None and shown is not None:
            tail = shown.push(tail) + shown.finish() if tail else shown.finish()
            reply = _filtered(reply, guard)
            for act in shown.actions():
                yield ChatEvent("guard", act)
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
            refused = guard.check_call(call) if guard is not None else None
            if refused is not None:
                yield ChatEvent("guard", refused)
                content = "blocked by policy: " + ("; ".join(refused.reasons) or refused.guard)
            else:
                content = _run_tool(tools, call)
                if guard is not None:
                    content = guard.untrusted(content, call.name)
            yield ChatEvent("tool_result", content)
            added.append(Message("tool", content, tool_call_id=call.id, name=call.name))
    yield ChatEvent("done", added)


def _filtered(reply: Message, guard: TurnGuard) -> Message:
    """The reply as it is kept in the conversation: its text run through a fresh output filter
    whole (the streamed pieces were filtered as they came; the kept text must match them)."""
    if not reply.content:
        return reply
    f = guard.output_filter()
    content = f.push(reply.content) + f.finish()
    return replace(reply, content=content) if content != reply.content else reply


__all__ = [
    "ChatEvent",
    "GenerateSteps",
    "GuardAction",
    "OutputFilter",
    "RespondStats",
    "TurnGuard",
    "respond",
    "tools_in_prompt",
]
