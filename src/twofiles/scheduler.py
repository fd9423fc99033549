"""Continuous batching: many requests share one model, one batched KV cache and one forward per step.

What it owns: `Scheduler`, a background thread that serves generation requests for one or more
models. Each model gets a `BatchEngine` over the one batched decoder (decoder.py: a fixed number
of rows over one static KV cache, rows of different lengths decoded in one forward). Requests
wait in a bounded queue; whenever a slot is free a newcomer joins at once (its prompt is
prefilled, several newcomers in one forward), and every step decodes all active rows in one
forward, whatever their lengths. A request that finishes or is cancelled frees its slot before
the next step. Prompts are prefilled in chunks of at most `prefill_chunk` tokens, one chunk
between two decode steps, so a long newcomer delays the running requests' next tokens by one
chunk's forward, not by its whole prompt. Each model keeps a prefix cache (prefix_cache.py): the
keys and values of prompts and of finished requests (prompt + reply), so a shared system prompt
or a chat's history is loaded, not computed again. Each request keeps its own SamplingParams and its own seeded generator, so its
tokens do not depend on what else shares the batch. What it leaves to others: the batched
forward, sampling and stop rules (decoder.py, engine.py), HTTP and chat rendering (serve/), the
model math (model.py).

Events reach the caller through a RequestHandle: iterate it in a thread, or `async for` it in an
event loop (the handle remembers the loop it was created in and is fed with call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from twofiles.decoder import BatchDecoder, DecodedToken, DecodeRow
from twofiles.engine import SamplingParams
from twofiles.errors import TwofilesError
from twofiles.prefix_cache import PREFIX_STATS, cache_from_mb

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

# Defaults; the server takes its own values from ServeSettings.
DEFAULT_MAX_SEQS = 8  # sequence slots per model (rows of the batched KV cache)
DEFAULT_MAX_QUEUE = 64  # requests that may wait for a slot, per model; more are refused
DEFAULT_MAX_CONTEXT = (
    2048  # cache length per slot (prompt + output), capped by the model's max_seq_len
)
DEFAULT_PREFIX_CACHE_MB = 512  # prefix cache per model; 0 = off
DEFAULT_PREFILL_CHUNK = 512  # most prompt tokens prefilled between two decode steps; 0 = no limit
_IDLE_WAIT_S = 0.5  # the worker's longest sleep with nothing to do (it is woken on submit anyway)


class QueueFullError(TwofilesError):
    """Every slot is busy and the waiting queue is full: try again later."""


@dataclass
class GenerationEvent:
    """One generated token (or the end of a request). The last event of a request has
    `finish_reason` set: "stop" (a stop token or stop string), "length" (max_tokens or the
    context), "cancelled", or "error" (then `error` says why)."""

    token: int | None  # the id generated; None on a cancel/error event that carries no token
    text: str = ""  # text that became safe to show with this token (never part of a stop string)
    logprob: float | None = (
        None  # log-probability of `token` under the model (temperature 1, no filters)
    )
    top_logprobs: list[tuple[int, float]] = field(
        default_factory=list
    )  # most likely (id, logprob), if asked
    finish_reason: str | None = None
    stop_token: bool = False  # `token` is an end-of-turn/eos token: it counts, but has no text
    error: str | None = None


_ids = itertools.count(1)


class RequestHandle:
    """A submitted request: its events, its state, and `cancel()`.

    Iterate it (blocking, in a thread) or `async for` it (in the event loop that submitted it);
    either way the iteration ends after the event that carries a finish_reason."""

    def __init__(
        self, model: str, prompt_ids: Sequence[int], params: SamplingParams, logprobs: int | None
    ) -> None:
        self.id = next(_ids)
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.logprobs = (
            logprobs  # None: no logprobs; k: the chosen token's logprob + k alternatives
        )
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        # rows already decoding when this request's prompt was prefilled (0: it started a batch
        # of its own); more than 0 means it joined other requests mid-generation
        self.joined_beside: int | None = None
        self._cancelled = threading.Event()
        self._done = threading.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._aqueue: asyncio.Queue[GenerationEvent] | None = (
            asyncio.Queue() if self._loop is not None else None
        )
        self._queue: queue.SimpleQueue[GenerationEvent] = queue.SimpleQueue()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating: the slot is freed before the next step; a last event says "cancelled"."""
        self._cancelled.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has finished; False on timeout."""
        return self._done.wait(timeout)

    def _record(self, event: GenerationEvent) -> None:
        """Update the handle's state (worker thread only); delivery is separate, see _deliver."""
        if event.token is not None:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.tokens.append(event.token)
        self.text += event.text
        if event.finish_reason is not None:
            self.finish_reason, self.error = event.finish_reason, event.error
            self.finished_at = time.perf_counter()

    def _emit(self, event: GenerationEvent) -> None:
        self._record(event)
        _deliver([(self, event)])

    def drain_nowait(self) -> list[GenerationEvent]:
        """Events already delivered and not yet consumed (async handles), without waiting: lets
        a slow consumer send several tokens at once instead of falling further behind."""
        out: list[GenerationEvent] = []
        while self._aqueue is not None and not self._aqueue.empty():
            out.append(self._aqueue.get_nowait())
            if out[-1].finish_reason is not None:
                break
        return out

    def __iter__(self) -> Iterator[GenerationEvent]:
        if self._loop is not None:
            raise RuntimeError("this request was submitted from an event loop: use `async for`")
        while True:
            event = self._queue.get()
            yield event
            if event.finish_reason is not None:
                return

    async def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        if self._aqueue is None:
            raise RuntimeError(
                "this request was submitted outside an event loop: iterate it in a thread"
            )
        while True:
            event = await self._aqueue.get()
            yield event
            if event.finish_reason is not None:
                return


def _deliver(items: Sequence[tuple[RequestHandle, GenerationEvent]]) -> None:
    """Hand recorded events to their consumers: one wake-up per event loop for a whole step's
    events (not one per token), a plain queue put for thread consumers."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, GenerationEvent]]] = {}
    for handle, event in items:
        if handle._loop is not None:
            by_loop.setdefault(handle._loop, []).append((handle, event))
        else:
            handle._queue.put(event)
        if event.finish_reason is not None:
            handle._done.set()
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for handle, _ in batch:
                handle._cancelled.set()


def _put_all(batch: list[tuple[RequestHandle, GenerationEvent]]) -> None:
    for handle, event in batch:
        handle._aqueue.put_nowait(event)  # type: ignore[union-attr]


class BatchEngine:
    """One model's requests over one BatchDecoder (decoder.py): rows are requests, decoded tokens
    become GenerationEvents. Not thread-safe: only the Scheduler's worker thread calls `admit`
    and `step`."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_seqs: int = DEFAULT_MAX_SEQS,
        max_context: int = DEFAULT_MAX_CONTEXT,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_seqs = max_seqs
        self.prefill_chunk = prefill_chunk or None
        self.prefix_cache = cache_from_mb(prefix_cache_mb)
        self.decoder = BatchDecoder(
            self.model,
            self.tokenizer,
            max_rows=max_seqs,
            context=max_context,
            prefix_cache=self.prefix_cache,
        )
        self.context = self.decoder.context
        self.outbox: list[
            tuple[RequestHandle, GenerationEvent]
        ] = []  # recorded, not yet delivered (see flush)

    @property
    def rows(self) -> list[DecodeRow]:
        """Active rows; each row's `key` is its RequestHandle."""
        return self.decoder.rows

    @property
    def free_slots(self) -> int:
        return self.decoder.free_slots

    def check_prompt(self, prompt_len: int) -> None:
        self.decoder.check_prompt(prompt_len)

    def admit(self, handles: Sequence[RequestHandle]) -> None:
        """Give newcomers (at most free_slots) their slots; `prefill` computes their prompts."""
        rows = [DecodeRow(h.prompt_ids, h.params, key=h, logprobs=h.logprobs) for h in handles]
        for h in handles:
            h.joined_beside = len(self.decoder.rows)
        self._emit_decoded(self.decoder.admit(rows, prefill=False))

    def prefill(self) -> None:
        """Prefill the next chunk of the waiting prompts in one forward; emit the first token of
        each prompt that is done."""
        if self.decoder.prefilling:
            self._emit_decoded(self.decoder.prefill(self.prefill_chunk))

    def cache_stats(self) -> dict[str, int]:
        """The prefix cache's counters (zeros when it is off)."""
        if self.prefix_cache is None:
            return dict.fromkeys(PREFIX_STATS, 0)
        return self.prefix_cache.stats()

    def step(self) -> None:
        """Cancel what was cancelled, then decode one token for every active row in one forward."""
        for row in [r for r in self.rows if r.key.cancelled]:
            self._emit(row.key, GenerationEvent(None, finish_reason="cancelled"))
            self.decoder.remove(row)
        self._emit_decoded(self.decoder.step())

    def _emit_decoded(self, decoded: Sequence[DecodedToken]) -> None:
        for d in decoded:
            event = GenerationEvent(
                d.token,
                d.text,
                d.logprob,
                d.top_logprobs,
                finish_reason=d.finish,
                stop_token=d.stop_token,
            )
            self._emit(d.row.key, event)

    def fail_all(self, message: str) -> None:
        for r in self.rows:
            self._emit(r.key, GenerationEvent(None, finish_reason="error", error=message))
        self.decoder.clear()

    def _emit(self, handle: RequestHandle, event: GenerationEvent) -> None:
        handle._record(event)
        self.outbox.append((handle, event))

    def flush(self) -> None:
        """Deliver this step's events."""
        items, self.outbox = self.outbox, []
        _deliver(items)


class Scheduler:
    """Serves generation requests for several models from one background thread.

    One thread on purpose: on a CPU the models' forwards would only compete for the same cores,
    and on one GPU they run one after another anyway; a single loop keeps the cache handling
    lock-free. Start it with `start()` (or use it as a context manager), stop it with `close()`."""

    def __init__(
        self,
        models: Mapping[str, LoadedModel],
        *,
        max_seqs: int = DEFAULT_MAX_SEQS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_context: int = DEFAULT_MAX_CONTEXT,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        if not models:
            raise TwofilesError("no models to serve")
        if max_seqs < 1 or max_queue < 0:
            raise TwofilesError(f"max_seqs={max_seqs} must be >= 1 and max_queue={max_queue} >= 0")
        if prefix_cache_mb < 0 or prefill_chunk < 0:
            raise TwofilesError(
                f"prefix_cache_mb={prefix_cache_mb} and prefill_chunk={prefill_chunk} must be >= 0 (0 = off)"
            )
        self.engines = {
            name: BatchEngine(
                m,
                max_seqs=max_seqs,
                max_context=max_context,
                prefix_cache_mb=prefix_cache_mb,
                prefill_chunk=prefill_chunk,
            )
            for name, m in models.items()
        }
        self.max_queue = max_queue
        self._pending: dict[str, deque[RequestHandle]] = {name: deque() for name in models}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0  # decode steps run (all models)
        self.error: str | None = None  # the last error that failed a batch

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Scheduler:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="twofiles-scheduler", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker; requests still waiting or running end with "cancelled"."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for name, engine in self.engines.items():
            for r in engine.rows:
                r.key._emit(GenerationEvent(None, finish_reason="cancelled"))
            engine.decoder.clear()
            while self._pending[name]:
                self._pending[name].popleft()._emit(
                    GenerationEvent(None, finish_reason="cancelled")
                )

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        logprobs: int | None = None,
    ) -> RequestHandle:
        """Queue a request; raises TwofilesError (unknown model, bad params, prompt too long) or
        QueueFullError at once rather than later."""
        engine = self.engines.get(model)
        if engine is None:
            raise TwofilesError(
                f"model {model!r} is not served here (serving: {', '.join(self.engines)})"
            )
        params.validate()
        engine.check_prompt(len(prompt_ids))
        handle = RequestHandle(model, prompt_ids, params, logprobs)
        with self._lock:
            if self._stopping or self._thread is None:
                raise TwofilesError("the scheduler is not running")
            pending = self._pending[model]
            if len(pending) >= self.max_queue + engine.free_slots:
                raise QueueFullError(
                    f"model {model!r} is busy: {len(engine.rows)} sequences running and {len(pending)} waiting"
                )
            pending.append(handle)
            self._lock.notify_all()
        return handle

    def stats(self) -> dict[str, dict[str, int]]:
        """Per model: slots, active rows, waiting requests, and the prefix cache's counters
        (PREFIX_STATS: prompt tokens looked up and served from it, its bytes and blocks, blocks
        evicted), a snapshot."""
        with self._lock:
            return {
                name: {
                    "slots": e.max_seqs,
                    "active": len(e.rows),
                    "queued": len(self._pending[name]),
                    "context": e.context,
                    **e.cache_stats(),
                }
                for name, e in self.engines.items()
            }

    # -- the worker ------------------------------------------------------------------------------

    def _take_newcomers(self, name: str, engine: BatchEngine) -> list[RequestHandle]:
        out: list[RequestHandle] = []
        pending = self._pending[name]
        while pending and len(out) < engine.free_slots:
            h = pending.popleft()
            if h.cancelled:
                h._emit(GenerationEvent(None, finish_reason="cancelled"))
            else:
                out.append(h)
        return out

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._stopping and not any(
                        e.rows or self._pending[n] for n, e in self.engines.items()
                    ):
                        self._lock.wait(_IDLE_WAIT_S)
                    if self._stopping:
                        return
                    newcomers = {n: self._take_newcomers(n, e) for n, e in self.engines.items()}
                for name, engine in self.engines.items():
                    try:
                        if engine.rows:
                            engine.step()
                            self.steps += 1
                        engine.admit(newcomers[name])
                        engine.prefill()
                    except Exception as e:
                        self.error = f"{type(e).__name__}: {e}"
                        engine.fail_all(self.error)
                        for h in newcomers[name]:
                            if h.finish_reason is None:
                                engine._emit(
                                    h,
                                    GenerationEvent(None, finish_reason="error", error=self.error),
                                )
                    finally:
                        engine.flush()


__all__ = [
    "PREFIX_STATS",
    "BatchEngine",
    "GenerationEvent",
    "QueueFullError",
    "RequestHandle",
    "Scheduler",
]
