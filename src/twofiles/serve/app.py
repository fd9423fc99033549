"""`create_app`: the OpenAI-compatible API over the continuous-batching scheduler.

What it owns: the routes (POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
GET /health), OpenAI's response and streaming shapes (SSE chunks ending `data: [DONE]`), API
keys, the body-size limit, per-request timeouts, turning every error into a 4xx/5xx with an
OpenAI-style body, and cancelling a request whose client went away (its slot is freed at once).
What it leaves to others: the limits' values (settings.py), request checking (protocol.py),
batching and sampling (twofiles.scheduler), chat rendering and tool-call parsing (twofiles.chat),
the web pages and their routes (twofiles.serve.web, attached when that module exists).

For extra routes (the web pages) the app exposes `app.state.models` (name -> LoadedModel),
`app.state.scheduler` (twofiles.scheduler.Scheduler; `submit(model, prompt_ids, params)` returns
a handle to `async for`), `app.state.settings` (ServeSettings), and `chat_format(app, model)` /
`generate_reply(app, model, messages, params)` below.

Streaming with `tools`: the reply is held until it is complete, then sent as one content delta
and/or one tool_calls delta, because a tool call's text must not reach the client as content and
cannot be told apart from content before it is complete.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twofiles.engine import PromptTooLongError, SamplingParams, encode_prompt
from twofiles.errors import TwofilesError
from twofiles.scheduler import GenerationEvent, QueueFullError, RequestHandle, Scheduler
from twofiles.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    pydantic_message,
    sampling_params,
)
from twofiles.serve.settings import ServeSettings

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.chat import ChatFormat, Message


# ---------------------------------------------------------------------------------------------
# Limits that sit below the routes


class _BodyLimit:
    """Pure ASGI middleware: a body over `max_bytes` gets 413 before anything parses it, whether
    the client declared its length or streams it in chunks."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = ApiError(
            413,
            f"request body is larger than this server's limit of {self.max_bytes} bytes",
            code="body_too_large",
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await JSONResponse(too_big.body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(
                        413, too_big.message
                    )  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited, send)


def _auth(settings: ServeSettings):
    keys = [k.encode() for k in settings.api_keys]

    async def require_api_key(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.strip().encode(), k) for k in keys
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key


# ---------------------------------------------------------------------------------------------
# Helpers shared by the routes (and by extra routes, e.g. the web pages)


def chat_format(app: FastAPI, model: str) -> ChatFormat:
    """The model's ChatFormat, built once (ApiError 400 when the model has no usable template)."""
    from twofiles.chat import ChatFormat

    cache: dict[str, Any] = app.state.chat_formats
    if model not in cache:
        try:
            cache[model] = ChatFormat.for_model(app.state.models[model])
        except TwofilesError as e:
            cache[model] = ApiError(400, f"model {model!r} cannot chat: {e}", param="model")
    found = cache[model]
    if isinstance(found, ApiError):
        raise found
    return found


def _model(app: FastAPI, name: str) -> LoadedModel:
    loaded = app.state.models.get(name)
    if loaded is None:
        raise ApiError(
            404,
            f"model {name!r} is not served here; GET /v1/models lists them (serving: {', '.join(app.state.models)})",
            param="model",
            code="model_not_found",
        )
    return loaded


def _check_prompt(app: FastAPI, model: str, ids: Sequence[int], param: str = "messages") -> None:
    settings: ServeSettings = app.state.settings
    context = app.state.scheduler.engines[model].context
    limit = min(settings.max_prompt_tokens or context - 1, context - 1)
    if len(ids) > limit:
        what = "the conversation" if param == "messages" else "the prompt"
        raise ApiError(
            400,
            f"prompt is {len(ids)} tokens; this server accepts at most {limit} for model {model!r} (shorten {what})",
            param=param,
            code="context_length_exceeded",
        )


def _submit(
    app: FastAPI,
    model: str,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    n: int,
    logprobs: int | None,
) -> list[RequestHandle]:
    """n handles per prompt (seeded requests get seed, seed+1, ...: n identical samples would
    be pointless). All or nothing: a refused one cancels those already queued."""
    scheduler: Scheduler = app.state.scheduler
    handles: list[RequestHandle] = []
    try:
        for ids in prompts:
            for j in range(n):
                p = (
                    params
                    if params.seed is None or j == 0
                    else replace(params, seed=params.seed + j)
                )
                handles.append(scheduler.submit(model, ids, p, logprobs=logprobs))
    except QueueFullError as e:
        for h in handles:
            h.cancel()
        retry = str(app.state.settings.retry_after_s)
        raise ApiError(
            429,
            f"{e}; retry after {retry} s",
            type="rate_limit_error",
            code="server_busy",
            headers={"Retry-After": retry},
        ) from None
    except PromptTooLongError as e:
        for h in handles:
            h.cancel()
        raise ApiError(400, str(e), code="context_length_exceeded") from None
    except TwofilesError as e:
        for h in handles:
            h.cancel()
        raise ApiError(400, str(e)) from None
    return handles


class _Timeout(Exception):
    pass


async def _events(
    handles: Sequence[RequestHandle], deadline: float
) -> AsyncIterator[tuple[int, list[GenerationEvent]]]:
    """(choice index, events) from all handles as they come, in order within each handle: the
    next event and whatever else that handle already has waiting (so a busy loop sends several
    tokens in one chunk rather than falling behind). Past `deadline` every handle is cancelled
    and _Timeout raised; a cancelled consumer (client gone) cancels them too."""
    iters = [h.__aiter__() for h in handles]
    pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iters)}
    try:
        while pending:
            done, _ = await asyncio.wait(
                pending,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                raise _Timeout
            for task in sorted(done, key=lambda t: pending[t]):
                i = pending.pop(task)
                try:
                    events = [task.result()]
                except StopAsyncIteration:
                    continue
                if events[0].finish_reason is None:
                    events += handles[i].drain_nowait()
                yield i, events
                if events[-1].finish_reason is None:
                    pending[asyncio.ensure_future(anext(iters[i]))] = i
    finally:
        for task in pending:
            task.cancel()
        for h in handles:
            h.cancel()  # no-op for finished ones; frees the slot of the others


async def _cancel_on_disconnect(request: Request, handles: Sequence[RequestHandle]) -> None:
    """The body is already read, so the next message is the client leaving."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for h in handles:
                h.cancel()
            return


async def _collect(
    request: Request, handles: Sequence[RequestHandle], timeout: float
) -> list[list[GenerationEvent]]:
    """Every handle's events, for a non-streamed response."""
    out: list[list[GenerationEvent]] = [[] for _ in handles]
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handles))
    try:
        async for i, events in _events(handles, time.monotonic() + timeout):
            out[i].extend(events)
    except _Timeout:
        raise ApiError(
            504,
            f"the request took longer than this server's limit of {timeout:g} s and was cancelled",
            type="timeout_error",
            code="timeout",
        ) from None
    finally:
        watcher.cancel()
    for h in handles:
        if h.finish_reason == "error":
            raise ApiError(500, f"generation failed: {h.error}", type="server_error")
        if h.finish_reason == "cancelled":
            raise ApiError(499, "the request was cancelled", type="cancelled")
    return out


def _token_info(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    to_bytes = getattr(tokenizer, "token_to_bytes", None)
    raw = to_bytes(token) if to_bytes is not None else b""
    text = tokenizer.decode([token])
    return text, list(raw or text.encode("utf-8"))


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
        top.append({_token_info(tokenizer, tid)[0]: lp for tid, lp in ev.top_logprobs})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
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


def _tool_calls_json(message: Message) -> list[dict[str, Any]]:
    out = []
    for call in message.tool_calls:
        d = call.to_dict()
        d["id"] = call.id or f"call_{secrets.token_hex(12)}"
        out.append(d)
    return out


async def generate_reply(
    app: FastAPI,
    model: str,
    messages: Sequence[Message | dict],
    params: SamplingParams,
    *,
    tools: list[dict] | None = None,
    timeout: float | None = None,
) -> tuple[Message, dict[str, Any]]:
    """One assistant reply through the scheduler, for extra routes (the arena, the chat page):
    the parsed Message and {"prompt_tokens", "completion_tokens", "finish_reason", "seconds"}.
    Raises ApiError like the API routes do."""
    from twofiles.chat import parse_messages

    _model(app, model)
    fmt = chat_format(app, model)
    try:
        ids = fmt.prompt_ids(parse_messages(list(messages)), tools=tools)
    except TwofilesError as e:
        raise ApiError(400, str(e)) from None
    _check_prompt(app, model, ids)
    params = replace(
        params, stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *fmt.stop_token_ids]))
    )
    (h,) = _submit(app, model, [ids], params, 1, None)
    t0 = time.perf_counter()
    try:
        async for _ in _events(
            [h], time.monotonic() + (timeout or app.state.settings.request_timeout_s)
        ):
            pass
    except _Timeout:
        raise ApiError(
            504, "the reply took too long and was cancelled", type="timeout_error"
        ) from None
    if h.finish_reason == "error":
        raise ApiError(500, f"generation failed: {h.error}", type="server_error")
    return fmt.parse_assistant(h.text), {
        "prompt_tokens": h.prompt_tokens,
        "completion_tokens": len(h.tokens),
        "finish_reason": h.finish_reason,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# The app


def create_app(models: Mapping[str, LoadedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The server for `models` (name -> loaded model) under `settings`. The scheduler's thread
    starts with the app (lifespan) and stops with it."""
    settings = settings or ServeSettings()
    if not models:
        raise TwofilesError("no models to serve")
    scheduler = Scheduler(
        models,
        max_seqs=settings.max_seqs,
        max_queue=settings.max_queue,
        max_context=settings.max_context,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()

    app = FastAPI(
        title="twofiles",
        description="An OpenAI-compatible API for twofiles models",
        lifespan=lifespan,
    )
    app.state.models = dict(models)
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.state.chat_formats = {}
    app.state.started = int(time.time())
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    require_api_key = _auth(settings)
    app.state.require_api_key = (
        require_api_key  # a dependency for extra routes that want the same keys
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = pydantic_message(list(e.errors()))
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(
            ApiError(e.status_code, str(e.detail), type=kind).body(),
            status_code=e.status_code,
            headers=getattr(e, "headers", None),
        )

    @app.exception_handler(TwofilesError)
    async def _twofiles(request: Request, e: TwofilesError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": scheduler.stats()}

    @app.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name, app) for name in app.state.models]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(require_api_key)])
    async def get_model(name: str) -> dict[str, Any]:
        _model(app, name)
        return _model_card(name, app)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        from twofiles.chat import parse_messages

        loaded = _model(app, req.model)
        fmt = chat_format(app, req.model)
        try:
            messages = parse_messages(req.messages)
        except TwofilesError as e:
            raise ApiError(400, str(e), param="messages") from None
        tools = (
            [t.model_dump(exclude_none=True) for t in req.tools]
            if req.tools and req.tool_choice != "none"
            else None
        )
        try:
            ids = fmt.prompt_ids(messages, tools=tools)
        except TwofilesError as e:
            raise ApiError(400, str(e), param="messages") from None
        _check_prompt(app, req.model, ids)
        params = sampling_params(
            req,
            settings,
            default_max_tokens=settings.default_max_tokens,
            stop_token_ids=fmt.stop_token_ids,
        )
        top = (req.top_logprobs or 0) if req.logprobs else None
        handles = _submit(app, req.model, [ids], params, req.n, top)
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "created": created, "model": req.model}
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
                )
            )
        results = await _collect(request, handles, settings.request_timeout_s)
        choices = []
        for i, (h, events) in enumerate(zip(handles, results)):
            message: dict[str, Any] = {"role": "assistant", "content": h.text}
            finish = h.finish_reason
            if tools is not None:
                parsed = fmt.parse_assistant(h.text)
                if parsed.tool_calls:
                    message = {
                        "role": "assistant",
                        "content": parsed.content or None,
                        "tool_calls": _tool_calls_json(parsed),
                    }
                    finish = "tool_calls"
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
        }

    @app.post("/v1/completions", dependencies=[Depends(require_api_key)])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        loaded = _model(app, req.model)
        tok = loaded.tokenizer
        texts, prompts = _prompts(req.prompt, tok, loaded.model.config.vocab_size)
        for ids in prompts:
            _check_prompt(app, req.model, ids, "prompt")
        params = sampling_params(req, settings, default_max_tokens=16)
        handles = _submit(app, req.model, prompts, params, req.n, req.logprobs)
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
        echoes = [texts[i // req.n] if req.echo else "" for i in range(len(handles))]
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
                )
            )
        results = await _collect(request, handles, settings.request_timeout_s)
        choices = [
            {
                "index": i,
                "text": echoes[i] + h.text,
                "logprobs": _completion_logprobs(tok, events, len(echoes[i]))
                if req.logprobs is not None
                else None,
                "finish_reason": h.finish_reason,
            }
            for i, (h, events) in enumerate(zip(handles, results))
        ]
        return {**base, "choices": choices, "usage": _usage(prompt_tokens, handles)}

    from twofiles.serve import web

    web.attach(app)
    return app


def model_name(spec: str) -> str:
    """The name a model is served under when the user gives none: an alias as it is, a file's
    stem, or the directory's name for a directory or a file called model.safetensors."""
    path = Path(spec.rstrip("/\\"))
    if path.name == "model.safetensors" and path.parent.name:
        return path.parent.name
    return path.stem if path.suffix in (".safetensors", ".gguf") else path.name


def _model_card(name: str, app: FastAPI) -> dict[str, Any]:
    engine = app.state.scheduler.engines[name]
    return {
        "id": name,
        "object": "model",
        "created": app.state.started,
        "owned_by": "twofiles",
        "context_length": engine.context,
    }


def _prompts(prompt: Any, tok: Any, vocab_size: int) -> tuple[list[str], list[list[int]]]:
    """Completions' `prompt` (text, texts, ids, or lists of ids) -> (texts, token ids). Text
    starts with <|bos|> as in training (engine.encode_prompt); ids are used as given."""
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
) -> AsyncIterator[str]:
    tok = loaded.tokenizer

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> str:
        return _sse(
            {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}],
            }
        )

    try:
        for i in range(len(handles)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, events in _events(handles, time.monotonic() + timeout):
            last = events[-1]
            if last.finish_reason in ("error", "cancelled"):
                yield _sse(
                    ApiError(
                        500,
                        f"generation failed: {last.error or last.finish_reason}",
                        type="server_error",
                    ).body()
                )
                continue
            text = "".join(ev.text for ev in events)
            lp = _chat_logprobs(tok, events) if logprobs else None
            if lp is not None and not lp["content"]:
                lp = None
            if not has_tools and (text or lp):
                yield chunk(i, {"content": text}, lp=lp)
            elif has_tools and lp:
                yield chunk(i, {}, lp=lp)
            if last.finish_reason is None:
                continue
            finish = last.finish_reason
            if has_tools:
                parsed = fmt.parse_assistant(handles[i].text)
                if parsed.content:
                    yield chunk(i, {"content": parsed.content})
                if parsed.tool_calls:
                    calls = [{"index": k, **c} for k, c in enumerate(_tool_calls_json(parsed))]
                    yield chunk(i, {"tool_calls": calls})
                    finish = "tool_calls"
            yield chunk(i, {}, finish)
        if include_usage:
            yield _sse(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage(prompt_tokens, handles),
                }
            )
    except _Timeout:
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
) -> AsyncIterator[str]:
    offsets = [len(e) for e in echoes]

    def chunk(i: int, text: str, finish: str | None = None, lp: Any = None) -> str:
        return _sse(
            {
                **base,
                "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}],
            }
        )

    try:
        for i, echo in enumerate(echoes):
            if echo:
                yield chunk(i, echo)
        async for i, events in _events(handles, time.monotonic() + timeout):
            last = events[-1]
            if last.finish_reason in ("error", "cancelled"):
                yield _sse(
                    ApiError(
                        500,
                        f"generation failed: {last.error or last.finish_reason}",
                        type="server_error",
                    ).body()
                )
                continue
            text = "".join(ev.text for ev in events)
            lp = _completion_logprobs(tok, events, offsets[i]) if logprobs else None
            offsets[i] += len(text)
            if text or last.finish_reason or (lp and lp["tokens"]):
                yield chunk(i, text, last.finish_reason, lp)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, handles)})
    except _Timeout:
        yield _sse(
            ApiError(
                504,
                f"the request took longer than this server's limit of {timeout:g} s and was cancelled",
                type="timeout_error",
                code="timeout",
            ).body()
        )
    yield "data: [DONE]\n\n"


__all__ = ["ServeSettings", "chat_format", "create_app", "generate_reply", "model_name"]
