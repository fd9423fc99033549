"""The guards of `twofiles serve`: the server's own (`--guard`), what a request adds, and where
each of the guard's hooks runs on the HTTP path.

What it owns: `ServeGuards` (the server's GuardConfig, built once per app; `for_request` is the
one place a serving Guard is constructed), `GuardOption` (the `guard` extension field of a chat
request: guards, a tool allow-list and secrets it adds; it can never remove the server's), and
`GuardRun` (one request's guard and what it did: the response's `guard` field and the /metrics
counters). What it leaves to others: what each guard does (twofiles.guard), the routes that call
the hooks (openai_routes.py: input, untrusted tool messages and passages, tool calls, output
streamed or not; core.generate_reply for the web pages).

A request's guard is the union: the server's guards plus the request's, the server's secrets
plus the request's, the server's --allow-hosts. A request can only make its reply more guarded,
so nothing here needs a key beyond the one the route already asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from twofiles.errors import BadInputError
from twofiles.guard import Guard, GuardConfig, parse_guards

if TYPE_CHECKING:
    from fastapi import FastAPI

    from twofiles.chat import Message, ToolCall
    from twofiles.chat.agent import GuardAction, OutputFilter

MAX_REQUEST_SECRETS = 32  # secrets one request may add: each is a substring search of the reply
MAX_SECRET_CHARS = 256  # the output filter holds back this much of a stream (guard._OutputFilter)


class GuardOption(BaseModel):
    """The `guard` extension field of /v1/chat/completions. "guard": "input,output" (or a list)
    is shorthand for {"guards": "input,output"}."""

    model_config = ConfigDict(strict=True, extra="forbid")

    guards: str | list[str] = ""  # added to the server's: a comma list, "all", or a list
    # tools the model may call, of those the request declares (turns the tools guard on)
    allowed_tools: list[str] | None = Field(default=None, max_length=128)
    # strings the reply must not contain, beside the server's --secret (turns the output guard on)
    secrets: list[str] = Field(default_factory=list, max_length=MAX_REQUEST_SECRETS)

    @field_validator("guards")
    @classmethod
    def _known(cls, v: str | list[str]) -> str | list[str]:
        try:
            parse_guards(v)
        except BadInputError as e:
            raise ValueError(str(e).removeprefix("--guard: ")) from None
        return v

    @field_validator("secrets")
    @classmethod
    def _secret_sizes(cls, v: list[str]) -> list[str]:
        if any(not s or len(s) > MAX_SECRET_CHARS for s in v):
            raise ValueError(f"each secret must be 1 to {MAX_SECRET_CHARS} characters")
        return v

    def names(self) -> frozenset[str]:
        extra = parse_guards(self.guards)
        if self.allowed_tools is not None:
            extra |= {"tools"}
        if self.secrets:
            extra |= {"output"}
        return extra


def action_json(act: GuardAction, index: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"guard": act.guard, "stage": act.stage, "reasons": list(act.reasons)}
    if act.score is not None:
        d["score"] = round(act.score, 4)
    if index is not None:
        d["index"] = index  # the choice it acted on; absent: the whole request
    return d


@dataclass
class GuardRun:
    """One request's guard and the actions it took, each counted in /metrics as it happens."""

    guard: Guard
    metrics: Any = None  # serve.metrics.ServerMetrics, or None
    actions: list[tuple[int | None, GuardAction]] = field(default_factory=list)
    tools: Sequence[dict[str, Any]] | None = None  # the request's tools (OpenAI form)

    def prepare(self, messages: Sequence[Message]) -> list[Message]:
        """The guard's once-per-request step (Guard.prepare): the tools' schemas for argument
        checks, the system prompt's secrets, and with spotlight the note that marked text is
        data."""
        from types import SimpleNamespace

        schemas = {
            t["function"]["name"]: SimpleNamespace(parameters=t["function"].get("parameters") or {})
            for t in self.tools or ()
        }
        return self.guard.prepare(messages, schemas)

    def mark_document(self, text: str, source: str) -> str:
        """A retrieved passage's text as the prompt carries it (datamarked under spotlight)."""
        return self._spotlit(text, self.guard.mark_document(text), source)

    def record(self, acts: Sequence[GuardAction], index: int | None = None) -> None:
        for act in acts:
            self.actions.append((index, act))
            if self.metrics is not None:
                self.metrics.guard_actions.labels(act.guard, act.stage).inc()

    def json(self, index: int | None = None, *, every: bool = False) -> list[dict[str, Any]]:
        """The actions on choice `index` (None: those on the whole request), or `every` one."""
        return [action_json(a, i) for i, a in self.actions if every or i == index]

    def check_input(self, messages: Sequence[Message]) -> str | None:
        """The refusal when the input guard blocks the request (the model must not run)."""
        blocked = self.guard.check_input(messages)
        if blocked is None:
            return None
        refusal, acts = blocked
        self.record(acts)
        return refusal

    def untrusted(self, text: str, source: str) -> str:
        """`text` from `source` (a tool's result, a retrieved document) as the model will read it."""
        return self._spotlit(text, self.guard.untrusted(text, source), source)

    def _spotlit(self, text: str, out: str, source: str) -> str:
        """`out`, the spotlight's form of `text`; recorded as an action when it differs."""
        if out != text:
            from twofiles.chat.agent import GuardAction

            self.record([GuardAction("spotlight", "tool_result", (f"{source} marked as data",))])
        return out

    def untrusted_messages(self, messages: Sequence[Message]) -> list[Message]:
        """Tool results in a request's conversation are untrusted text (a web page, a file)."""
        return [
            replace(m, content=self.untrusted(m.content, f"tool {m.name or 'result'}"))
            if m.role == "tool"
            else m
            for m in messages
        ]

    def allowed_calls(self, calls: Sequence[ToolCall], index: int) -> list[ToolCall]:
        """The calls the tool policy lets through; the others are dropped and recorded."""
        kept = []
        for call in calls:
            refused = self.guard.check_call(call)
            if refused is None:
                kept.append(call)
            else:
                self.record([refused], index)
        return kept

    def guard_reply(
        self, content: str, calls: Sequence[ToolCall], index: int
    ) -> tuple[str, list[ToolCall], bool]:
        """A finished reply through the tool policy and the output filter: (content, the calls
        kept, whether the guard removed anything)."""
        kept = self.allowed_calls(calls, index)
        content, cut = self.filter_text(content, index)
        return content, kept, cut or len(kept) < len(calls)

    def output_filter(self, index: int) -> ChoiceFilter:
        """The output filter of choice `index`, recording what it removes when it finishes."""
        return ChoiceFilter(self, index, self.guard.output_filter())

    def filter_text(self, text: str, index: int) -> tuple[str, bool]:
        """A whole reply through the output filter: (what is left, whether anything went)."""
        f = self.output_filter(index)
        head = f.push(text)
        rest, cut = f.finish()
        return head + rest, cut


@dataclass
class ChoiceFilter:
    """One choice's output filter: text in as it streams, what is safe to send out."""

    run: GuardRun
    index: int
    inner: OutputFilter

    def push(self, text: str) -> str:
        return self.inner.push(text)

    def finish(self) -> tuple[str, bool]:
        """The held-back tail, and whether the filter removed anything (each act recorded)."""
        rest = self.inner.finish()
        acts = self.inner.actions()
        self.run.record(acts, self.index)
        return rest, bool(acts)


class ServeGuards:
    """The server's guard configuration (serve --guard, --secret, --allow-hosts) and the one place
    a serving Guard is built (`for_request`)."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        if "classifier" in config.guards:  # load it (and its embedder) before the first request
            Guard.from_config(config)

    def for_request(
        self,
        option: GuardOption | None,
        tools: Sequence[dict[str, Any]] | None,
        metrics: Any = None,
        persona_tools: Sequence[str] | None = None,
    ) -> GuardRun | None:
        """The guard of one request: the server's plus what `option` adds; None when no guard is
        on. The tool allow-list is the tools the request declares (a call to any other is
        dropped), narrowed by `option.allowed_tools` and by the persona's `PARAMETER tools` (as
        `chat` applies it: under the tools guard)."""
        guards = self.config.guards | (option.names() if option is not None else frozenset())
        if not guards:
            return None
        allowed = {t["function"]["name"] for t in tools or ()}
        if option is not None and option.allowed_tools is not None:
            allowed &= set(option.allowed_tools)
        if persona_tools is not None:
            allowed &= set(persona_tools)
        secrets = self.config.secrets + tuple(option.secrets if option is not None else ())
        config = replace(
            self.config, guards=guards, secrets=secrets, allowed_tools=frozenset(allowed)
        )
        # Guard.from_config loads the learned classifier (once per process, shared) when the
        # request's guards include it; a server started with it has loaded it already.
        return GuardRun(Guard.from_config(config), metrics, tools=tools)


def request_guard(
    app: FastAPI,
    option: GuardOption | None,
    tools: Sequence[dict[str, Any]] | None = None,
    model: str | None = None,
) -> GuardRun | None:
    """The guard of one request to `app` for `model` (None when neither the server, the request
    nor the model's persona has one)."""
    guards: ServeGuards = app.state.guards  # create_app's
    persona = app.state.models[model].persona if model else None
    persona_tools = persona.tools if persona is not None else None
    return guards.for_request(option, tools, app.state.metrics, persona_tools=persona_tools)


__all__ = ["ChoiceFilter", "GuardOption", "GuardRun", "ServeGuards", "action_json", "request_guard"]
