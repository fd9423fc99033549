"""The server's core: the served models, the scheduler glue, and the helpers every route shares.

What it owns: looking up a served model (404 otherwise) and its chat format, a persona's part of
a request (`with_persona`: its system message and few-shot turns; `sampling_defaults`; its
num_ctx; `engine_name`: the engine a persona shares), checking a prompt
against the server's limits, submitting requests to the scheduler (all or nothing; 429 when the
queue is full), gathering their events under a deadline and cancelling them when the client goes
away, `generate_reply` (one assistant reply, for extra routes such as the web pages),
`model_name` (the name a model spec is served under), and `RagService` / `ground_messages` (the
document index of `serve --rag`, and a request's messages grounded in what it retrieves). What it
leaves to others: the FastAPI app, middleware and error handlers (app.py), OpenAI's request and
response shapes (protocol.py, openai_routes.py), batching and sampling (twofiles.scheduler).

What it reads from the app: `app.state.models` (name -> LoadedModel), `app.state.scheduler`
(twofiles.scheduler.Scheduler), `app.state.settings` (ServeSettings), `app.state.chat_formats`,
`app.state.rag` (a RagService, or None).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from twofiles.engine import PromptTooLongError, SamplingParams
from twofiles.errors import TwofilesError
from twofiles.scheduler import GenerationEvent, QueueFullError, RequestHandle, Scheduler
from twofiles.serve.metrics import track
from twofiles.serve.protocol import ApiError
from twofiles.serve.settings import ServeSettings

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.chat import ChatFormat, Message
    from twofiles.rag import Passage

# One prompt token's score: its logprob (None for the first token) and the top alternatives
# as (token id, logprob), most likely first.
PromptTokenScore = tuple[float | None, list[tuple[int, float]]]


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


def served_model(app: FastAPI, name: str) -> LoadedModel:
    loaded = app.state.models.get(name)
    if loaded is None:
        raise ApiError(
            404,
            f"model {name!r} is not served here; GET /v1/models lists them (serving: {', '.join(app.state.models)})",
            param="model",
            code="model_not_found",
        )
    return loaded


def engine_name(app: FastAPI, model: str) -> str:
    """The served model whose engine runs `model`: itself, or the model a persona shares."""
    return getattr(app.state, "shared", {}).get(model, model)


def context_length(app: FastAPI, model: str) -> int:
    """Prompt + reply, in tokens: the engine's context, capped by a persona's num_ctx."""
    context = app.state.scheduler.engines[engine_name(app, model)].context
    persona = app.state.models[model].persona
    return min(context, persona.num_ctx) if persona and persona.num_ctx else context


def with_persona(app: FastAPI, model: str, messages: list[Message]) -> list[Message]:
    """The conversation a persona's model sees: its SYSTEM unless the request sends a system
    message first, then its few-shot MESSAGEs, then the request's messages."""
    persona = app.state.models[model].persona
    if persona is None:
        return messages
    from twofiles.chat import parse_messages

    has_system = bool(messages) and messages[0].role == "system"
    prefix = parse_messages(persona.prefix(has_system))
    return [*messages[:1], *prefix, *messages[1:]] if has_system else [*prefix, *messages]


def sampling_defaults(app: FastAPI, model: str) -> dict[str, Any]:
    """A persona's PARAMETERs as SamplingParams fields: what a request's absent fields become."""
    persona = app.state.models[model].persona
    return dict(persona.sampling) if persona is not None else {}


def prompt_limit(app: FastAPI, model: str) -> int:
    """The longest prompt `model` takes, in tokens: the server's max_prompt_tokens, and always
    one token short of the context (a reply needs at least one)."""
    settings: ServeSettings = app.state.settings
    context = context_length(app, model)
    return min(settings.max_prompt_tokens or context - 1, context - 1)


def check_prompt(app: FastAPI, model: str, ids: Sequence[int], param: str = "messages") -> None:
    limit = prompt_limit(app, model)
    if len(ids) > limit:
        what = "the conversation" if param == "messages" else "the prompt"
        raise ApiError(
            400,
            f"prompt is {len(ids)} tokens; this server accepts at most {limit} for model {model!r} (shorten {what})",
            param=param,
            code="context_length_exceeded",
        )


def submit(
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
    context = context_length(app, model)
    try:
        for ids in prompts:
            for j in range(n):
                p = (
                    params
                    if params.seed is None or j == 0
                    else replace(params, seed=params.seed + j)
                )
                if p.max_tokens > context - len(ids):  # a persona's num_ctx: the engine's is wider
                    p = replace(p, max_tokens=max(1, context - len(ids)))
                handles.append(scheduler.submit(engine_name(app, model), ids, p, logprobs=logprobs))
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
    track(app, model, prompts, handles)
    return handles


class DeadlinePassed(Exception):
    pass


async def gather_events(
    handles: Sequence[RequestHandle], deadline: float
) -> AsyncIterator[tuple[int, list[GenerationEvent]]]:
    """(choice index, events) from all handles as they come, in order within each handle: the
    next event and whatever else that handle already has waiting (so a busy loop sends several
    tokens in one chunk rather than falling behind). Past `deadline` every handle is cancelled
    and DeadlinePassed raised; a cancelled consumer (client gone) cancels them too."""
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
                raise DeadlinePassed
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


async def collect(
    request: Request, handles: Sequence[RequestHandle], timeout: float
) -> list[list[GenerationEvent]]:
    """Every handle's events, for a non-streamed response."""
    out: list[list[GenerationEvent]] = [[] for _ in handles]
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handles))
    try:
        async for i, events in gather_events(handles, time.monotonic() + timeout):
            out[i].extend(events)
    except DeadlinePassed:
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
    the parsed Message and {"prompt_tokens", "completion_tokens", "finish_reason", "seconds",
    "guard"}. The server's guards run as on /v1/chat/completions ("guard": what acted; a blocked
    input is answered with the refusal, finish_reason "content_filter", nothing generated).
    Raises ApiError like the API routes do."""
    from twofiles.chat import Message, parse_messages
    from twofiles.serve.guarding import request_guard

    served_model(app, model)
    fmt = chat_format(app, model)
    guard = request_guard(app, None, tools, model)
    try:
        conversation = with_persona(app, model, parse_messages(list(messages)))
        if guard is not None:
            refusal = guard.check_input(conversation)
            if refusal is not None:
                return Message("assistant", refusal), {
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "finish_reason": "content_filter",
                    "seconds": 0.0,
                    "guard": guard.json(every=True),
                }
            conversation = guard.prepare(guard.untrusted_messages(conversation))
        ids = fmt.prompt_ids(conversation, tools=tools)
    except TwofilesError as e:
        raise ApiError(400, str(e)) from None
    check_prompt(app, model, ids)
    params = replace(
        params, stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *fmt.stop_token_ids]))
    )
    (h,) = submit(app, model, [ids], params, 1, None)
    t0 = time.perf_counter()
    try:
        async for _ in gather_events(
            [h], time.monotonic() + (timeout or app.state.settings.request_timeout_s)
        ):
            pass
    except DeadlinePassed:
        raise ApiError(
            504, "the reply took too long and was cancelled", type="timeout_error"
        ) from None
    if h.finish_reason == "error":
        raise ApiError(500, f"generation failed: {h.error}", type="server_error")
    reply, finish = fmt.parse_assistant(h.text), h.finish_reason
    if guard is not None:
        content, calls, removed = guard.guard_reply(reply.content, reply.tool_calls, 0)
        if removed:
            finish = "content_filter"
        reply = replace(reply, content=content, tool_calls=calls)
    return reply, {
        "prompt_tokens": h.prompt_tokens,
        "completion_tokens": len(h.tokens),
        "finish_reason": finish,
        "seconds": time.perf_counter() - t0,
        "guard": guard.json(every=True) if guard is not None else [],
    }


PROMPT_SCORE_ROWS = (
    512  # prompt positions per lm_head call when scoring: [rows, vocab] floats at once
)


def _score_tokens(model: Any, ids: Sequence[int], top: int) -> list[PromptTokenScore]:
    import torch

    from twofiles.engine import model_device

    device = model_device(model)
    out: list[PromptTokenScore] = [(None, [])]  # the first token has no context to be scored in
    with torch.inference_mode():
        x = torch.tensor([list(ids[:-1])], dtype=torch.long, device=device)
        h = model.hidden_states(x)[0]  # [T-1, dim]: position t predicts token t+1
        target = torch.tensor(list(ids[1:]), dtype=torch.long, device=device)
        for start in range(0, len(target), PROMPT_SCORE_ROWS):
            logp = model.lm_head(h[start : start + PROMPT_SCORE_ROWS]).float().log_softmax(-1)
            chosen = logp.gather(-1, target[start : start + PROMPT_SCORE_ROWS, None])[:, 0]
            if top > 0:
                values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)
                alts = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
            else:
                alts = [[] for _ in range(len(chosen))]
            out.extend(zip(chosen.tolist(), alts))
    return out


async def score_prompt(
    app: FastAPI, model: str, ids: Sequence[int], top: int
) -> list[PromptTokenScore]:
    """(log P(token | the tokens before it), the `top` most likely ids with their logprobs) for
    each prompt token; the first gets (None, []). One forward over the prompt, the way evaluation
    scores log-likelihoods (eval.backends.loglikelihood_tokens), so an endpoint evaluation
    matches a local one.

    It runs beside the scheduler's thread, not through it: the scheduler samples, this only reads
    the weights (a forward is a pure function of them), and it needs no KV-cache slot. A lock
    keeps scoring requests to one at a time, so they cannot pile up beside decoding."""
    loaded = served_model(app, model)
    lock: threading.Lock = app.state.score_lock

    def score() -> list[PromptTokenScore]:
        with lock:
            return _score_tokens(loaded.model, ids, top)

    return await asyncio.to_thread(score)


class RagService:
    """The server's document index (`serve --rag DB`, opened at start-up) with the server's
    defaults for grounded requests. A RagIndex is read whole when opened and holds no database
    connection, and its searches are safe from several threads at once (tests/test_rag.py), so
    requests search it directly from the worker threads they already run on
    (asyncio.to_thread), never on the event loop. `search` and `passage` make it a
    grounding.Searcher, so the retrieve tool runs over it too."""

    def __init__(self, index: Any, *, k: int = 5, cite: str | None = None) -> None:
        self.index = index  # a RagIndex, or anything with its search, passage, info and close
        self.k = k  # passages per grounded request when the request gives none
        self.cite = cite  # how a reply's citations are made when the request says not (rag.cite)

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Passage]:
        return self.index.search(query, k, mode)

    def passage(self, chunk_id: int) -> Passage:
        return self.index.passage(chunk_id)

    def info(self) -> dict[str, Any]:
        return dict(self.index.info)

    def close(self) -> None:
        self.index.close()


async def ground_messages(
    app: FastAPI,
    messages: Sequence[Message],
    k: int | None,
    mode: str,
    *,
    own: Sequence[Message] | None = None,
    fits: Callable[[list[Message]], bool],
    untrusted: Callable[[str, str], str] | None = None,
) -> tuple[list[Message], list[Passage], int]:
    """A request's messages grounded in the `k` passages (None: the server's default) retrieved
    for its last user message and the one before it (grounding.rag_query over `own`, the
    client's messages, when a persona added turns of its own), those passages, and how many
    were dropped: `fits` is the rendered prompt's length check, and the lowest-ranked passages
    are left out until the prompt fits (grounding.fit_grounded; the client's own messages are
    never dropped: a conversation too long by itself gets the usual 400). ApiError 400 when this
    server has no index or the conversation has no user message. `untrusted` (the spotlight
    guard's hook: text, source -> what the model reads) wraps each passage's text in the prompt;
    the passages returned are the ones retrieved, as they are."""
    from twofiles.rag.grounding import fit_grounded, rag_query

    rag: RagService | None = getattr(app.state, "rag", None)
    if rag is None:
        raise ApiError(
            400,
            "rag: this server has no document index (start it with twofiles serve MODEL --rag DB)",
            param="rag",
        )
    query = rag_query(messages if own is None else own)
    if not query:
        raise ApiError(400, "rag: needs a user message to retrieve for", param="rag")
    try:
        passages = await asyncio.to_thread(rag.search, query, k or rag.k, mode)
    except TwofilesError as e:
        raise ApiError(400, f"rag: {e}", param="rag") from None
    shown = passages
    if untrusted is not None:
        shown = [replace(p, text=untrusted(p.text, f"document {p.source}")) for p in passages]
    fitted = fit_grounded(messages, shown, fits, drop_exchanges=False)
    # the lowest-ranked go first: those kept are the first len(kept) retrieved
    return fitted.prompt, passages[: len(fitted.passages)], fitted.passages_dropped


async def cite_reply(
    app: FastAPI,
    model: str,
    method: str,
    text: str,
    passages: Sequence[Passage],
    prompt_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """The citations of a grounded reply as JSON ({n, by, ...}: grounding.cite). "constrained"
    runs one forward beside the scheduler, as score_prompt does and under its lock, and only
    when the reply wrote no [n] itself (its own citations win: the forward would be wasted)."""
    from twofiles.rag.grounding import choose_citation, cite, parse_citations

    choose = None
    if method == "constrained" and text.strip() and not parse_citations(text, len(passages)):
        loaded = served_model(app, model)
        lock: threading.Lock = app.state.score_lock

        def run() -> Any:
            with lock:
                return choose_citation(
                    loaded.model, loaded.tokenizer, prompt_ids, text, len(passages)
                )

        chosen = await asyncio.to_thread(run)

        def choose() -> Any:
            return chosen

    return [c.to_json() for c in cite(text, passages, method, choose=choose)]


def load_models(
    specs: Mapping[str, str],
    *,
    device: Any = "cpu",
    personas: bool = True,
    on_load: Callable[[str, str, LoadedModel, float], None] | None = None,
) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """The models to serve (name -> spec) loaded, and which personas share an engine: returns
    (models, shared), shared mapping a persona to the served model whose weights and engine it
    runs on. A persona without adapters whose FROM is a model named here is a view of it
    (formats.resolve.persona_view), not a second copy; with `personas`, every registered persona
    over a model named here is served too, as NAME (its tag when not `latest`). `on_load` sees
    each model actually loaded (name, spec, model, seconds), to prepare it for inference."""
    import os

    from twofiles.formats import persona
    from twofiles.formats.resolve import persona_view, resolve_model, served_key

    records = {
        name: persona.find(spec) if not os.path.exists(spec) and persona.is_name(spec) else None
        for name, spec in specs.items()
    }
    loaded: dict[str, LoadedModel] = {}
    by_key: dict[str, str] = {}  # what a plain model loads -> the name it is served under
    shared: dict[str, str] = {}
    # plain models first, so that the personas over them can share their engines
    for name in sorted(specs, key=lambda n: records[n] is not None):
        spec, record = specs[name], records[name]
        key = served_key(spec, record)
        if record is not None and key in by_key:
            shared[name] = by_key[key]
            loaded[name] = persona_view(loaded[shared[name]], record)
            continue
        t0 = time.perf_counter()
        loaded[name] = resolve_model(spec, device=device)
        if record is None:
            by_key.setdefault(key, name)
        if on_load is not None:
            on_load(name, spec, loaded[name], time.perf_counter() - t0)
    models = {name: loaded[name] for name in specs}
    if personas:
        # a persona the user named (`serve Mario`) is served under that name, not twice
        named = {record["name"] for record in records.values() if record is not None}
        for record in persona.list_records():
            name, key = record["name"].removesuffix(":latest"), served_key(record["name"], record)
            if name not in models and record["name"] not in named and key in by_key:
                shared[name] = by_key[key]
                models[name] = persona_view(models[shared[name]], record)
    return models, shared


def model_name(spec: str) -> str:
    """The name a model is served under when the user gives none: an alias as it is, a file's
    stem, or the directory's name for a directory or a file called model.safetensors."""
    path = Path(spec.rstrip("/\\"))
    if path.name == "model.safetensors" and path.parent.name:
        return path.parent.name
    return path.stem if path.suffix in (".safetensors", ".gguf") else path.name


__all__ = [
    "DeadlinePassed",
    "RagService",
    "chat_format",
    "check_prompt",
    "cite_reply",
    "collect",
    "context_length",
    "engine_name",
    "gather_events",
    "generate_reply",
    "ground_messages",
    "load_models",
    "model_name",
    "prompt_limit",
    "sampling_defaults",
    "score_prompt",
    "served_model",
    "submit",
    "with_persona",
]
