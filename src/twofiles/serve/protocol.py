"""What an OpenAI client sends, checked: pydantic request models and the one validation function.

What it owns: the request bodies of /v1/chat/completions and /v1/completions (fields, types and
ranges, strict: a string where a number belongs is an error, not a guess; unknown fields are
errors, so a typo such as "temprature" is not silently ignored), `ApiError` (an HTTP status with
an OpenAI-style error body), and `sampling_params`, which turns a request into the engine's
SamplingParams under the server's limits. What it leaves to others: routes and responses (app.py),
rendering messages (twofiles.chat).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twofiles.engine import SamplingParams
from twofiles.serve.guarding import GuardOption
from twofiles.serve.settings import ServeSettings


class ApiError(Exception):
    """An error response: status, message, and OpenAI's error type / param / code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with the usage, and empty choices


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)  # JSON schema of the arguments
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"] = "function"
    function: FunctionSpec


def _lone_surrogate(obj: Any, where: str) -> str | None:
    """Where a string holds a lone surrogate ("\\ud800" is valid JSON but not text: no tokenizer
    can encode it), or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found = _lone_surrogate(k, where) or _lone_surrogate(
                v, f"{where}.{k}" if where else str(k)
            )
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _lone_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


class _Sampling(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _text_is_text(cls, data: Any) -> Any:
        where = _lone_surrogate(data, "")
        if where is not None:
            raise ValueError(
                f"{where or 'body'}: a string holds a lone UTF-16 surrogate, which is not text"
            )
        return data

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # extension (vLLM's name)
    min_p: float | None = Field(default=None, ge=0, le=1)  # extension
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)  # extension
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2
    )  # accepted only as 0: see sampling_params
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None  # accepted and ignored, as a courtesy to clients that always send it
    # extension: guards added to the server's (serve.guarding.GuardOption); "input,output" or a
    # list is shorthand for {"guards": ...}
    guard: GuardOption | None = None

    @model_validator(mode="before")
    @classmethod
    def _guard_shorthand(cls, data: Any) -> Any:
        # turned into the object here so that a bad object's error names its field
        if isinstance(data, dict) and isinstance(data.get("guard"), str | list):
            data = {**data, "guard": {"guards": data["guard"]}}
        return data


MAX_RAG_K = 20  # passages per grounded request: k chunks of ~256 tokens must fit the context


class RagOption(_Strict):
    """The `rag` extension field: retrieve from the server's index (serve --rag) for the last user
    message and ground the reply; the passages come back in the response's `sources`."""

    k: int | None = Field(default=None, ge=1, le=MAX_RAG_K)  # passages (None: serve's --rag-k)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"  # how the index ranks them
    # how a reply that writes no [n] itself is cited (twofiles.rag.grounding.cite); None: the
    # default, grounding.DEFAULT_CITE; "model": only the citations the model wrote
    cite: Literal["overlap", "constrained", "model"] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[Any] = Field(
        min_length=1
    )  # checked field by field by twofiles.chat.parse_messages
    max_completion_tokens: int | None = Field(
        default=None, ge=1
    )  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto"] | None = (
        None  # "required" / a named function cannot be forced here
    )
    parallel_tool_calls: bool | None = None
    rag: RagOption | None = None  # extension: true = RagOption(), false = None (see below)

    @model_validator(mode="before")
    @classmethod
    def _rag_shorthand(cls, data: Any) -> Any:
        # "rag": true / false as shorthands, turned into the object here so that a bad object's
        # error names its field (rag.k) instead of listing both forms of a union
        if isinstance(data, dict) and isinstance(data.get("rag"), bool):
            data = {**data, "rag": {} if data["rag"] else None}
        return data


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)  # 0 with echo: score the prompt only
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    suffix: None = None  # fill-in-the-middle is not supported: only null is accepted
    best_of: int | None = Field(default=None, ge=1)


def sampling_params(
    req: _Sampling,
    settings: ServeSettings,
    *,
    default_max_tokens: int,
    stop_token_ids: list[int] | None = None,
    defaults: dict[str, Any] | None = None,
) -> SamplingParams:
    """The one validation function past the types: a request's sampling fields under the server's
    limits -> SamplingParams. Raises ApiError(400) naming the field. `defaults` (SamplingParams
    fields: a persona's PARAMETERs) stand in for the fields the request leaves out."""
    d = defaults or {}
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if req.stop is None:
        stop = list(d.get("stop", []))
    if len(stop) > settings.max_stop:
        raise ApiError(
            400, f"stop: at most {settings.max_stop} stop strings (got {len(stop)})", param="stop"
        )
    if any(not s for s in stop):
        raise ApiError(400, "stop: stop strings must be non-empty", param="stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise ApiError(
                400,
                f"{name}: not supported (use repetition_penalty, > 1 discourages repeats)",
                param=name,
            )
    if req.n > settings.max_n:
        raise ApiError(
            400, f"n: at most {settings.max_n} choices per request (got {req.n})", param="n"
        )
    if isinstance(req, ChatCompletionRequest) and req.top_logprobs is not None:
        if not req.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs=true", param="top_logprobs")
        if req.top_logprobs > settings.max_top_logprobs:
            raise ApiError(
                400,
                f"top_logprobs: at most {settings.max_top_logprobs} (got {req.top_logprobs})",
                param="top_logprobs",
            )
    if isinstance(req, CompletionRequest):
        if req.logprobs is not None and req.logprobs > settings.max_top_logprobs:
            raise ApiError(
                400,
                f"logprobs: at most {settings.max_top_logprobs} (got {req.logprobs})",
                param="logprobs",
            )
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of: only best_of == n is supported", param="best_of")
        if req.max_tokens == 0 and not req.echo:
            raise ApiError(
                400,
                "max_tokens: 0 generates nothing; it is only useful with echo=true (to score the prompt)",
                param="max_tokens",
            )
        if req.stream and req.echo and (req.logprobs is not None or req.max_tokens == 0):
            raise ApiError(
                400,
                "stream: prompt logprobs (echo with logprobs or max_tokens 0) come in one response; send stream=false",
                param="stream",
            )
    requested = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        requested = req.max_completion_tokens
    max_tokens = max(
        1, min(requested or d.get("max_tokens", default_max_tokens), settings.max_output_tokens)
    )  # clamped, as documented in ServeSettings (0: the route generates nothing)

    def given(name: str, off: Any) -> Any:
        value = getattr(req, name)
        return value if value is not None else d.get(name, off)

    return SamplingParams(
        temperature=given("temperature", 1.0),
        top_k=given("top_k", 0),
        top_p=given("top_p", 1.0),
        min_p=given("min_p", 0.0),
        repetition_penalty=given("repetition_penalty", 1.0),
        seed=given("seed", None),
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=list(stop_token_ids or []),
    )


def pydantic_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the param for pydantic's errors: "temperature: Input should be
    ...". A union field (prompt, stop) fails once per accepted type: those are listed together."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        ctx = e.get("ctx") or {}
        return f"invalid JSON in the request body: {ctx.get('error', e.get('msg', ''))}", None
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    field = loc[0] if loc else None
    same_field = [
        x for x in errors if [str(y) for y in x.get("loc", ()) if y != "body"][:1] == loc[:1]
    ]

    def describe(err: dict[str, Any]) -> str:
        if err.get("type") == "missing":
            return "missing required field"
        if err.get("type") == "extra_forbidden":
            return "unknown field"
        return str(err.get("msg", "invalid value")).removeprefix("Value error, ")

    if len(same_field) > 1 and field is not None:
        msgs = list(dict.fromkeys(describe(x) for x in same_field))
        return f"{field}: not an accepted form ({'; or '.join(msgs[:4])})", field
    # a union member's name in the location (str, list[int], ...) says nothing to a client
    loc = [
        x
        for x in loc
        if not x.startswith(("str", "list[", "int", "float", "bool", "function-", "literal["))
    ] or loc
    param = ".".join(loc) or None
    msg = describe(e)
    if e.get("type") == "value_error" and param is None:
        return msg, None
    return (f"{param}: {msg}" if param else msg), param


__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "RagOption",
    "StreamOptions",
    "ToolSpec",
    "pydantic_message",
    "sampling_params",
]
