"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions.

What it owns: `add_openai_routes(app, require_api_key)`, OpenAI's response and streaming shapes
(SSE chunks ending `data: [DONE]`), logprobs in both of OpenAI's forms (chat's `content` list,
completions' legacy `tokens`/`token_logprobs`/`top_logprobs`/`text_offset`), completions'
prompt forms (text, texts, ids, lists of ids). What it leaves to others: request checking
(protocol.py), submitting and collecting (core.py), the app, its middleware and errors (app.py).

Streaming with `tools`: the reply is held until it is complete, then sent as one content delta
and/or one tool_calls delta, because a tool call's text must not reach the client as content and
cannot be told apart from content before it is complete.

Grounded replies (the `rag` extension field, with `serve --rag DB`): the response carries the
passages that were in the prompt as a top-level `sources` list ({n, id, source, location, start,
end, score, text}; a stream sends it on its first chunk), and each choice the passage numbers
its reply cited as `citations` (on the message; a stream puts it on the choice's last chunk),
with `citation_details` beside it: [{n, by, ...}], `by` saying how each was made ("model": the
reply wrote [n]; "overlap" or "constrained": attributed, by the request's `rag.cite`). When the
grounded prompt would not fit, the lowest-ranked passages are left out: `passages_dropped`.

Guards (serve --guard, the `guard` extension field; serve.guarding): where a guard is on, the
response carries `guard` (what acted: guard, stage, reasons, the choice's index), a blocked input
is answered by `_refused` without generating, and a reply the tool policy or the output filter
cut has finish_reason "content_filter" (`_reply_parts`; streams filter as they go).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from twofiles.engine import encode_prompt
from twofiles.errors import TwofilesError
from twofiles.scheduler import GenerationEvent, RequestHandle
from twofiles.serve.core import (
    DeadlinePassed,
    PromptTokenScore,
    chat_format,
    check_prompt,
    cite_reply,
    collect,
    context_length,
    engine_name,
    gather_events,
    ground_messages,
    prompt_limit,
    sampling_defaults,
    score_prompt,
    served_model,
    submit,
    with_persona,
)
from twofiles.serve.guarding import GuardRun, request_guard
from twofiles.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    sampling_params,
)

if TYPE_CHECKING:
    from twofiles.chat import ToolCall


def _token_info(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    to_bytes = getattr(tokenizer, "token_to_bytes", None)
    raw = to_bytes(token) if to_bytes is not None else b""
    text = tokenizer.decode([token])
    return text, list(raw or text.encode("utf-8"))


def _top_dict(tokenizer: Any, alternatives: Sequence[tuple[int, float]]) -> dict[str, float]:
    """The legacy form's {token text: logprob}. Two ids may decode alike (partial UTF-8 bytes both
    show as U+FFFD): the likelier one, listed first, keeps the key."""
    out: dict[str, float] = {}
    for tid, lp in alternatives:
        out.setdefault(_token_info(tokenizer, tid)[0], lp)
    return out


def _chat_logprobs(tokenizer: Any, events: Sequence[GenerationEvent]) -> dict[str, Any]:
    content = []
    for ev in events:
        if ev.token is None or ev.stop_token or ev.logprob is None:
            continue
        text, raw = _token_info(tokenizer, ev.token)
        tops = []
        for tid, lp in ev.top_logprobs:
            t, b = _token_info(tokenizer, tid)
            tops.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": ev.logprob, "bytes": raw, "top_logprobs": tops})
    return {"content": content}


def _completion_logprobs(
    tokenizer: Any, events: Sequence[GenerationEvent], offset: int
) -> dict[str, Any]:
    tokens, token_logprobs, top, offsets = [], [], [], []
    for ev in events:
        if ev.token is None or ev.stop_token or ev.logprob is None:
            continue
        text, _ = _token_info(tokenizer, ev.token)
        tokens.append(text)
        token_logprobs.append(ev.logprob)
        top.append(_top_dict(tokenizer, ev.top_logprobs))
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _prompt_logprobs(
    tokenizer: Any, ids: Sequence[int], scores: Sequence[PromptTokenScore], text: str
) -> dict[str, Any]:
    """The prompt's tokens in the legacy completions form, the first one's logprob null. Offsets
    are characters into the echoed `text`, from the tokens' bytes (special tokens add none)."""
    texts = [_token_info(tokenizer, t)[0] for t in ids]
    to_bytes = getattr(tokenizer, "token_to_bytes", None)
    pieces = [to_bytes(t) if to_bytes is not None else s.encode() for t, s in zip(ids, texts)]
    whole = b"".join(pieces)
    offsets = []
    if whole.decode("utf-8", "replace") == text:
        seen = 0
        for piece in pieces:  # a token may end inside a character: count only complete ones
            offsets.append(len(whole[:seen].decode("utf-8", "ignore")))
            seen += len(piece)
    else:  # ids given as the prompt: the echo is their decoded text, special names included
        offsets = [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    return {
        "tokens": texts,
        "token_logprobs": [lp for lp, _ in scores],
        "top_logprobs": [
            _top_dict(tokenizer, alts) if lp is not None else None for lp, alts in scores
        ],
        "text_offset": offsets,
    }


def _usage(prompt_tokens: int, handles: Sequence[RequestHandle]) -> dict[str, int]:
    completion = sum(len(h.tokens) for h in handles)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _failed_sse(last: Any) -> str:
    """A stream's row that ended in an error or was cancelled: the OpenAI error body as an event
    (the stream has already sent its 200, so the status can no longer say it)."""
    reason = last.error or last.finish_reason
    return _sse(ApiError(500, f"generation failed: {reason}", type="server_error").body())


def _tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        d = call.to_dict()
        d["id"] = call.id or f"call_{secrets.token_hex(12)}"
        out.append(d)
    return out


def _reply_parts(
    h: RequestHandle, fmt: Any, has_tools: bool, guard: GuardRun | None, index: int
) -> tuple[str, list[ToolCall], str | None]:
    """A finished reply as (content, tool calls, finish_reason), through the guard: calls the
    tool policy refuses are dropped, the content goes through the output filter. The finish is
    "tool_calls" when calls are left, "content_filter" when the guard removed something and no
    call is left (OpenAI's value for a reply its filter cut), else the generation's own."""
    content, calls, finish = h.text, [], h.finish_reason
    if has_tools:
        parsed = fmt.parse_assistant(h.text)
        if parsed.tool_calls:
            content, calls = parsed.content, list(parsed.tool_calls)
    if guard is not None:
        content, calls, removed = guard.guard_reply(content, calls, index)
        if removed:
            finish = "content_filter"
    if calls:
        finish = "tool_calls"
    return content, calls, finish


def _refused(
    base: dict[str, Any], refusal: str, n: int, stream: bool, guard: GuardRun
) -> dict[str, Any] | StreamingResponse:
    """The reply to a request the input guard blocked: an ordinary completion whose message is
    the refusal, finish_reason "content_filter", nothing generated."""
    actions = guard.json(every=True)
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not stream:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": refusal},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
            for i in range(n)
        ]
        return {
            **base,
            "object": "chat.completion",
            "choices": choices,
            "usage": usage,
            "guard": actions,
        }

    async def chunks() -> AsyncIterator[str]:
        for i in range(n):
            for delta, finish in (
                ({"role": "assistant", "content": refusal}, None),
                ({}, "content_filter"),
            ):
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                extra = {"guard": actions} if i == 0 and finish is None else {}
                yield _sse(
                    {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
                )
        yield "data: [DONE]\n\n"

    return _stream(chunks())


def _refused_completion(
    base: dict[str, Any], refusal: str, choices: int, stream: bool, guard: GuardRun
) -> dict[str, Any] | StreamingResponse:
    """/v1/completions' answer to a prompt the input guard blocked (as _refused for chat)."""
    rows = [
        {"index": i, "text": refusal, "logprobs": None, "finish_reason": "content_filter"}
        for i in range(choices)
    ]
    actions = guard.json(every=True)
    if not stream:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return {**base, "choices": rows, "usage": usage, "guard": actions}

    async def chunks() -> AsyncIterator[str]:
        for row in rows:
            yield _sse({**base, "choices": [row], "guard": actions})
        yield "data: [DONE]\n\n"

    return _stream(chunks())


def add_openai_routes(app: FastAPI, require_api_key: Any) -> None:
    """Add /v1/models, /v1/chat/completions and /v1/completions to `app`, behind
    `require_api_key` (a FastAPI dependency)."""
    settings = app.state.settings

    @app.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name, app) for name in app.state.models]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(require_api_key)])
    async def get_model(name: str) -> dict[str, Any]:
        served_model(app, name)
        return _model_card(name, app)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        from twofiles.chat import parse_messages

        loaded = served_model(app, req.model)
        fmt = chat_format(app, req.model)
        try:
            own = parse_messages(req.messages)
            messages = with_persona(app, req.model, own)
        except TwofilesError as e:
            raise ApiError(400, str(e), param="messages") from None
        tools = (
            [t.model_dump(exclude_none=True) for t in req.tools]
            if req.tools and req.tool_choice != "none"
            else None
        )
        params = sampling_params(
            req,
            settings,
            default_max_tokens=settings.default_max_tokens,
            stop_token_ids=fmt.stop_token_ids,
            defaults=sampling_defaults(app, req.model),
        )
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "created": created, "model": req.model}
        guard = request_guard(app, req.guard, tools, req.model)
        if guard is not None:
            refusal = guard.check_input(messages)
            if refusal is not None:  # the model never runs
                return _refused(base, refusal, req.n, req.stream, guard)
            messages = guard.prepare(guard.untrusted_messages(messages))
        passages: list[Any] | None = None
        rag: dict[str, Any] = {}  # how a grounded reply is cited, and what was left out
        if req.rag is not None:  # retrieved for the client's turns, not a persona's few-shot ones
            from twofiles.rag.grounding import DEFAULT_CITE, reply_room

            limit = prompt_limit(app, req.model)
            room = reply_room(params.max_tokens, context_length(app, req.model))

            def fits(grounded: list[Any]) -> bool:
                try:
                    return len(fmt.prompt_ids(grounded, tools=tools)) + room <= limit
                except TwofilesError:
                    return True  # the render below reports it

            messages, passages, dropped = await ground_messages(
                app,
                messages,
                req.rag.k,
                req.rag.mode,
                own=own,
                fits=fits,
                untrusted=guard.mark_document if guard is not None else None,
            )
            cite = req.rag.cite or app.state.rag.cite or DEFAULT_CITE
            rag = {"cite": cite, "passages_dropped": dropped}
        try:
            ids = fmt.prompt_ids(messages, tools=tools)
        except TwofilesError as e:
            raise ApiError(400, str(e), param="messages") from None
        check_prompt(app, req.model, ids)
        top = (req.top_logprobs or 0) if req.logprobs else None
        handles = submit(app, req.model, [ids], params, req.n, top)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(
                _chat_chunks(
                    handles,
                    base,
                    loaded,
                    fmt,
                    tools is not None,
                    req.logprobs,
                    include_usage,
                    len(ids),
                    settings.request_timeout_s,
                    passages,
                    _citer(app, req.model, rag.get("cite", ""), passages, ids),
                    rag.get("passages_dropped", 0),
                    guard,
                )
            )
        results = await collect(request, handles, settings.request_timeout_s)
        choices = []
        for i, (h, events) in enumerate(zip(handles, results)):
            content, calls, finish = _reply_parts(h, fmt, tools is not None, guard, i)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message = {
                    "role": "assistant",
                    "content": content or None,
                    "tool_calls": _tool_calls_json(calls),
                }
            if passages is not None:
                details = await cite_reply(app, req.model, rag["cite"], h.text, passages, ids)
                message["citations"] = [c["n"] for c in details]
                message["citation_details"] = details
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": _chat_logprobs(loaded.tokenizer, events) if req.logprobs else None,
                    "finish_reason": finish,
                }
            )
        return {
            **base,
            "object": "chat.completion",
            "choices": choices,
            "usage": _usage(len(ids), handles),
            **(
                {"sources": _sources(passages), "passages_dropped": rag["passages_dropped"]}
                if passages is not None
                else {}
            ),
            **({"guard": guard.json(every=True)} if guard is not None else {}),
        }

    @app.post("/v1/completions", dependencies=[Depends(require_api_key)])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        loaded = served_model(app, req.model)
        tok = loaded.tokenizer
        texts, prompts = _prompts(req.prompt, tok, loaded.model.config.vocab_size)
        for ids in prompts:
            check_prompt(app, req.model, ids, "prompt")
        params = sampling_params(
            req, settings, default_max_tokens=16, defaults=sampling_defaults(app, req.model)
        )
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
        guard = request_guard(app, req.guard, None, req.model)
        if guard is not None:
            from twofiles.chat import Message

            # a raw prompt is all the user's text: scanned as a user turn would be
            refusal = next(
                (r for t in texts if (r := guard.check_input([Message("user", t)])) is not None),
                None,
            )
            if refusal is not None:
                return _refused_completion(base, refusal, len(texts) * req.n, req.stream, guard)
        scored = None
        if req.echo and req.logprobs is not None:  # the prompt's own logprobs, as vLLM gives them
            scored = [
                _prompt_logprobs(tok, ids, await score_prompt(app, req.model, ids, req.logprobs), t)
                for t, ids in zip(texts, prompts)
            ]
        # max_tokens 0 (only with echo): the prompt comes back, nothing is generated
        handles = (
            []
            if req.max_tokens == 0
            else submit(app, req.model, prompts, params, req.n, req.logprobs)
        )
        echoes = [texts[i // req.n] if req.echo else "" for i in range(len(prompts) * req.n)]
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(
                _completion_chunks(
                    handles,
                    base,
                    tok,
                    req.logprobs is not None,
                    echoes,
                    include_usage,
                    prompt_tokens,
                    settings.request_timeout_s,
                    guard,
                )
            )
        results = await collect(request, handles, settings.request_timeout_s) if handles else []
        choices = []
        for i, echo in enumerate(echoes):
            h, events = (handles[i], results[i]) if handles else (None, [])
            logprobs = None
            if req.logprobs is not None:
                logprobs = _completion_logprobs(tok, events, len(echo))
                if scored is not None:
                    logprobs = {k: scored[i // req.n][k] + logprobs[k] for k in logprobs}
            text, finish = (h.text, h.finish_reason) if h else ("", "length")
            if guard is not None and h is not None:  # the echo is the client's own text
                text, cut = guard.filter_text(text, i)
                finish = "content_filter" if cut else finish
            choices.append(
                {"index": i, "text": echo + text, "logprobs": logprobs, "finish_reason": finish}
            )
        return {
            **base,
            "choices": choices,
            "usage": _usage(prompt_tokens, handles),
            **({"guard": guard.json(every=True)} if guard is not None else {}),
        }


def _sources(passages: Sequence[Any]) -> list[dict[str, Any]]:
    from twofiles.rag.grounding import passage_json

    return [passage_json(p, n) for n, p in enumerate(passages, 1)]


def _citer(
    app: FastAPI, model: str, method: str, passages: Sequence[Any] | None, ids: Sequence[int]
) -> Callable[[str], Awaitable[list[dict[str, Any]]]] | None:
    """For a stream: a reply's text -> its citations as JSON (serve.core.cite_reply)."""
    if passages is None:
        return None

    async def citations(text: str) -> list[dict[str, Any]]:
        return await cite_reply(app, model, method, text, passages, ids)

    return citations


def _model_card(name: str, app: FastAPI) -> dict[str, Any]:
    card = {
        "id": name,
        "object": "model",
        "created": app.state.started,
        "owned_by": "twofiles",
        "context_length": context_length(app, name),
    }
    persona = app.state.models[name].persona
    if persona is not None:  # vLLM's field for a model served over another's weights
        card["parent"] = engine_name(app, name) if engine_name(app, name) != name else None
        card["persona"] = {  # what the web page shows and fills its settings with
            "name": persona.name,
            "system": persona.system,
            "defaults": dict(persona.sampling),
            "few_shot": len(persona.messages),
        }
    return card


def _prompts(prompt: Any, tok: Any, vocab_size: int) -> tuple[list[str], list[list[int]]]:
    """Completions' `prompt` (text, texts, ids, or lists of ids) -> (texts, token ids). Text
    is encoded as `generate` encodes it (engine.encode_prompt); ids are used as given."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    texts, ids = [], []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            if not p:
                raise ApiError(400, f"prompt[{i}]: must not be empty", param="prompt")
            texts.append(p)
            ids.append(encode_prompt(tok, p))
        else:
            if not p:
                raise ApiError(400, f"prompt[{i}]: must not be empty", param="prompt")
            bad = next((t for t in p if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise ApiError(
                    400,
                    f"prompt[{i}]: token id {bad} is outside the vocabulary (0..{vocab_size - 1})",
                    param="prompt",
                )
            texts.append(tok.decode(p))
            ids.append(list(p))
    return texts, ids


def _stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _chat_chunks(
    handles,
    base,
    loaded,
    fmt,
    has_tools: bool,
    logprobs: bool,
    include_usage: bool,
    prompt_tokens: int,
    timeout: float,
    passages: Sequence[Any] | None = None,
    citer: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
    passages_dropped: int = 0,
    guard: GuardRun | None = None,
) -> AsyncIterator[str]:
    tok = loaded.tokenizer
    # one output filter per choice: it holds back a tail that could still grow into a secret or
    # a link, so what was sent never has to be taken back
    filters = [guard.output_filter(i) for i in range(len(handles))] if guard is not None else None

    def chunk(
        i: int,
        delta: dict[str, Any],
        finish: str | None = None,
        lp: Any = None,
        extra: dict[str, Any] | None = None,
        cites: list[dict[str, Any]] | None = None,
    ) -> str:
        choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
        if cites is not None:
            choice["citations"] = [c["n"] for c in cites]
            choice["citation_details"] = cites
        return _sse(
            {**base, "object": "chat.completion.chunk", "choices": [choice], **(extra or {})}
        )

    try:
        for i in range(len(handles)):
            first: dict[str, Any] = {}
            if passages is not None and i == 0:
                first = {"sources": _sources(passages), "passages_dropped": passages_dropped}
            if guard is not None and i == 0:
                first["guard"] = guard.json()  # what acted on the request (spotlighting)
            yield chunk(i, {"role": "assistant", "content": ""}, extra=first or None)
        async for i, events in gather_events(handles, time.monotonic() + timeout):
            last = events[-1]
            if last.finish_reason in ("error", "cancelled"):
                yield _failed_sse(last)
                continue
            text = "".join(ev.text for ev in events)
            if filters is not None and not has_tools:
                text = filters[i].push(text)
            lp = _chat_logprobs(tok, events) if logprobs else None
            if lp is not None and not lp["content"]:
                lp = None
            if not has_tools and (text or lp):
                yield chunk(i, {"content": text}, lp=lp)
            elif has_tools and lp:
                yield chunk(i, {}, lp=lp)
            if last.finish_reason is None:
                continue
            finish: str | None = last.finish_reason
            if has_tools:
                content, calls, finish = _reply_parts(handles[i], fmt, True, guard, i)
                if content:
                    yield chunk(i, {"content": content})
                if calls:
                    calls_json = [{"index": k, **c} for k, c in enumerate(_tool_calls_json(calls))]
                    yield chunk(i, {"tool_calls": calls_json})
            elif filters is not None:
                rest, cut = filters[i].finish()
                if rest:
                    yield chunk(i, {"content": rest})
                if cut:
                    finish = "content_filter"
            cites = await citer(handles[i].text) if citer is not None else None
            acted = {"guard": guard.json(i)} if guard is not None else None
            yield chunk(i, {}, finish, cites=cites, extra=acted)
        if include_usage:
            yield _sse(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(prompt_tokens, handles),
                }
            )
    except DeadlinePassed:
        yield _sse(
            ApiError(
                504,
                f"the request took longer than this server's limit of {timeout:g} s and was cancelled",
                type="timeout_error",
                code="timeout",
            ).body()
        )
    yield "data: [DONE]\n\n"


async def _completion_chunks(
    handles,
    base,
    tok,
    logprobs: bool,
    echoes: list[str],
    include_usage: bool,
    prompt_tokens: int,
    timeout: float,
    guard: GuardRun | None = None,
) -> AsyncIterator[str]:
    offsets = [len(e) for e in echoes]
    filters = [guard.output_filter(i) for i in range(len(handles))] if guard is not None else None

    def chunk(i: int, text: str, finish: str | None = None, lp: Any = None) -> str:
        extra = {"guard": guard.json(i)} if guard is not None and finish is not None else {}
        return _sse(
            {
                **base,
                "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}],
                **extra,
            }
        )

    try:
        for i, echo in enumerate(echoes):
            if echo:
                yield chunk(i, echo)
        async for i, events in gather_events(handles, time.monotonic() + timeout):
            last = events[-1]
            if last.finish_reason in ("error", "cancelled"):
                yield _failed_sse(last)
                continue
            text = "".join(ev.text for ev in events)
            lp = _completion_logprobs(tok, events, offsets[i]) if logprobs else None
            offsets[i] += len(text)
            finish = last.finish_reason
            if filters is not None:
                text = filters[i].push(text)
                if finish is not None:
                    rest, cut = filters[i].finish()
                    text += rest
                    finish = "content_filter" if cut else finish
            if text or finish or (lp and lp["tokens"]):
                yield chunk(i, text, finish, lp)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, handles)})
    except DeadlinePassed:
        yield _sse(
            ApiError(
                504,
                f"the request took longer than this server's limit of {timeout:g} s and was cancelled",
                type="timeout_error",
                code="timeout",
            ).body()
        )
    yield "data: [DONE]\n\n"


__all__ = ["add_openai_routes"]
