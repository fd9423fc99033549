"""The one batched decoder: many sequences of different lengths, one KV cache, one forward a step.

What it owns: `BatchDecoder`, a fixed number of rows over one static KV cache [rows, kv_heads,
context, head_dim] per layer. `admit` prefills newcomers together in one forward (identical
prompts once: N samples of one question cost one prefill) and samples their first tokens; `step`
decodes one token for every active row in one forward, whatever their lengths; a row that ends
frees its slot at once, so a newcomer can join before the next step (continuous batching). Each
row keeps its own SamplingParams and its own seeded generator, so its tokens do not depend on
what else shares the batch: row by row, greedy or seeded, the tokens are those of
`engine.generate`. `decode_batch` runs a list of prompts to their ends through one decoder
(evaluation's generative tasks, SFT's skill scoring, `generate_batch` for System 2's samples);
the server's scheduler drives the same decoder step by step. What it leaves to others: the
sampling math and text streaming (engine.py), requests, queues and threads (scheduler.py), the
model math (model.py: `positions`, `attn_mask`, `KVCache.update_at`).

How rows of different lengths share a batch (no padding leaks into any row):
- Active rows live in slots 0..n-1, so a step runs on a view of the first n rows of the cache, not
  on all of them; when row i finishes, the last row's cache is copied into slot i.
- Every token is fed with its own position (RoPE angle and cache slot), and a boolean mask lets
  each query see exactly its own row's slots 0..position. Slots past a row's length hold stale
  keys from an earlier occupant (or padding); the mask never shows them.
- Newcomers are right-padded to the longest prompt among them and prefilled together with a
  plain causal mask: a real token never sees a pad (pads come after it), and the pads' cache
  slots are overwritten by that row's own generated tokens before any query may see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from twofiles.engine import (
    PromptTooLongError,
    SamplingParams,
    TextStream,
    TokenizerLike,
    make_generator,
    model_device,
    token_distribution,
)
from twofiles.errors import TwofilesError
from twofiles.model import KVWrites

if TYPE_CHECKING:
    from twofiles.model import Transformer

DEFAULT_MAX_ROWS = 16  # rows decoded together by decode_batch


@dataclass(eq=False)  # rows are found by identity: their fields hold tensors and generators
class DecodeRow:
    """One sequence: what to generate (prompt, params), and what came out so far."""

    prompt: list[int]
    params: SamplingParams
    key: Any = None  # the caller's handle for this row (the scheduler's RequestHandle)
    logprobs: int | None = None  # None: none; k: the chosen token's logprob + k alternatives
    tokens: list[int] = field(default_factory=list)  # generated ids, a stop token included
    text: str = ""  # generated text (with a tokenizer): never a stop string, nor a stop token's
    finish: str | None = None  # "stop" (stop token or string) or "length", once it has ended
    # the decoder's bookkeeping
    length: int = 0  # tokens in this row's cache
    steps: int = 0  # most tokens it may generate (max_tokens, capped by the context)
    generator: torch.Generator | None = None
    stream: TextStream | None = None
    history: torch.Tensor | None = None  # [1, prompt + steps] ids, for the repetition penalty


@dataclass
class DecodedToken:
    """One token a row generated, as `admit` and `step` report it."""

    row: DecodeRow
    token: int
    text: str = ""  # text that became safe to show with this token
    logprob: float | None = None  # log-probability under the model (temperature 1, no filters)
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # most likely alternatives
    finish: str | None = None  # set on a row's last token: "stop" or "length"
    stop_token: bool = False  # `token` is a stop token: it counts, but has no text


class _RowsView(KVWrites):
    """A KV cache over some rows and the first `length` slots of a layer's full buffers. Slicing
    gives views, so the model's in-place writes land in the shared cache."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v


class BatchDecoder:
    """Rows of one model over one batched KV cache. Not thread-safe: one thread admits and steps.
    With a tokenizer, rows stop on its bos and eos ids too and carry text; without one, only
    their params' stop_token_ids stop them and stop strings cannot be used."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: TokenizerLike | None = None,
        *,
        max_rows: int,
        context: int,
    ) -> None:
        if max_rows < 1:
            raise TwofilesError(f"max_rows={max_rows}: must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.context = min(context, model.config.max_seq_len)
        self.device = model_device(model)
        caches = model.new_caches(max_rows, self.context)  # the model picks dtype and device
        self._k = [c.k for c in caches]  # [rows, kv_heads, context, head_dim] per layer
        self._v = [c.v for c in caches]
        self.rows: list[DecodeRow] = []  # row i lives in cache slot i
        self._end_ids = (
            {tokenizer.bos_id, *getattr(tokenizer, "eos_ids", ())}
            if tokenizer is not None
            else set()
        )

    @property
    def free_slots(self) -> int:
        return self.max_rows - len(self.rows)

    def check_prompt(self, prompt_len: int) -> None:
        """Raise unless a prompt of this length leaves room for at least one new token."""
        if prompt_len == 0:
            raise TwofilesError("empty prompt: give at least one token")
        if prompt_len >= self.context:
            raise PromptTooLongError(
                f"prompt is {prompt_len} tokens; this context is {self.context} tokens, which leaves no room to generate (shorten the prompt)"
            )

    def _views(self, start: int, stop: int, length: int) -> list[_RowsView]:
        return [
            _RowsView(k[start:stop, :, :length], v[start:stop, :, :length])
            for k, v in zip(self._k, self._v)
        ]

    def admit(self, rows: Sequence[DecodeRow]) -> list[DecodedToken]:
        """Prefill newcomers (at most free_slots) in one forward and sample each one's first
        token. A prompt that appears more than once is prefilled once and its keys and values
        copied into the other rows."""
        if not rows:
            return []
        if len(rows) > self.free_slots:
            raise ValueError(f"{len(rows)} rows, {self.free_slots} free slots")
        for r in rows:
            self.check_prompt(len(r.prompt))
            if r.params.stop and self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer")
        first = len(self.rows)
        unique: dict[tuple[int, ...], int] = {}
        source = [unique.setdefault(tuple(r.prompt), len(unique)) for r in rows]
        prompts = list(unique)
        k, T = len(prompts), max(len(p) for p in prompts)
        idx = torch.zeros(k, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            idx[i, : len(p)] = torch.tensor(p)  # right padding with id 0: never seen by real tokens
        idx = idx.to(self.device)
        positions = torch.arange(T, device=self.device).expand(k, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()[None, None]
        hidden = self.model.hidden_states(
            idx, self._views(first, first + k, T), positions=positions, attn_mask=causal
        )  # [k, T, dim]
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        # only each prompt's last position needs logits: [k, V], not [k, T, V]
        logits = self.model.lm_head(hidden[torch.arange(k, device=self.device), lengths - 1])
        # Unique prompts went to slots first..first+k-1; row i belongs in slot first+i. Going from
        # the last row down, no slot is overwritten before the rows that copy from it have read it
        # (a row's source index is never above its own).
        for i in reversed(range(len(rows))):
            j, n = source[i], len(rows[i].prompt)
            if j != i:
                for kk, vv in zip(self._k, self._v):
                    kk[first + i, :, :n] = kk[first + j, :, :n]
                    vv[first + i, :, :n] = vv[first + j, :, :n]
        for r in rows:
            n, params = len(r.prompt), r.params
            r.length, r.steps = n, min(params.max_tokens, self.context - n)
            r.generator = make_generator(params.seed, self.device)
            if self.tokenizer is not None:
                r.stream = TextStream(self.tokenizer, params.stop, context=r.prompt)
            if params.repetition_penalty != 1.0:
                r.history = torch.empty(1, n + r.steps, dtype=torch.long, device=self.device)
                r.history[0, :n] = torch.tensor(r.prompt)
            self.rows.append(r)
        rows_logits = logits[torch.tensor(source, device=self.device)].float()
        return self._sample(list(rows), rows_logits)

    def step(self) -> list[DecodedToken]:
        """Decode one token for every active row in one forward."""
        if not self.rows:
            return []
        n = len(self.rows)
        lengths = torch.tensor([r.length for r in self.rows], device=self.device)
        L = int(lengths.max()) + 1
        idx = torch.tensor(
            [[r.tokens[-1]] for r in self.rows], dtype=torch.long, device=self.device
        )
        own = (
            torch.arange(L, device=self.device)[None, :] <= lengths[:, None]
        )  # [n, L]: 0..position
        hidden = self.model.hidden_states(
            idx, self._views(0, n, L), positions=lengths[:, None], attn_mask=own[:, None, None, :]
        )
        for r in self.rows:
            r.length += 1
        return self._sample(list(self.rows), self.model.lm_head(hidden[:, -1]).float())

    def remove(self, row: DecodeRow) -> None:
        """Give the row's slot back (a row that ended is removed by the decoder itself): the
        last row moves into it, so active rows stay 0..n-1."""
        i, last = self.rows.index(row), len(self.rows) - 1
        if i != last:
            moved = self.rows[last]
            for k, v in zip(self._k, self._v):
                k[i, :, : moved.length] = k[last, :, : moved.length]
                v[i, :, : moved.length] = v[last, :, : moved.length]
            self.rows[i] = moved
        self.rows.pop()

    def clear(self) -> None:
        """Drop every row (after a failed forward, or on shutdown)."""
        self.rows.clear()

    def _draw(self, rows: Sequence[DecodeRow], logits: torch.Tensor) -> torch.Tensor:
        """Next token ids [len(rows)]: each row rolls its own die with its own generator. Rows
        with the same filters are filtered in one batched call (the filters act row by row, so
        this equals filtering each alone); only the random draw is per row, from its generator,
        exactly as engine.roll draws it. Rows with a repetition penalty need their own history."""
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            p = r.params
            key = (p.temperature, p.top_k, p.top_p, p.min_p) if r.history is None else ("own", i)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            first = rows[idx[0]]
            p = first.params
            history = (
                first.history[:, : len(first.prompt) + len(first.tokens)]
                if first.history is not None
                else None
            )
            at = torch.tensor(idx, device=logits.device) if len(idx) < len(rows) else None
            probs = token_distribution(logits if at is None else logits[at], p, history)  # [k, V]
            if p.temperature == 0:
                drawn = probs.argmax(-1)
            else:  # engine.roll's exponential race, one generator per row
                q = torch.empty_like(probs)
                for j, i in enumerate(idx):
                    q[j].exponential_(1.0, generator=rows[i].generator)
                drawn = (probs / q.clamp_min_(torch.finfo(q.dtype).tiny)).argmax(-1)
            if at is None:
                tokens = drawn
            else:
                tokens[at] = drawn
        return tokens

    def _sample(self, rows: Sequence[DecodeRow], logits: torch.Tensor) -> list[DecodedToken]:
        """Draw each row's next token from logits [len(rows), V]; remove the rows that ended."""
        tokens = self._draw(rows, logits).tolist()  # the one host sync of the step
        out = []
        for i, (r, token) in enumerate(zip(rows, tokens)):
            if r.history is not None:
                r.history[0, len(r.prompt) + len(r.tokens)] = token
            r.tokens.append(token)
            d = DecodedToken(r, token)
            if r.logprobs is not None:
                logp = logits[i].float().log_softmax(-1)
                d.logprob = float(logp[token])
                if r.logprobs > 0:
                    values, ids = logp.topk(min(r.logprobs, logp.shape[-1]))
                    d.top_logprobs = list(zip(ids.tolist(), values.tolist()))
            if token in self._end_ids or token in r.params.stop_token_ids:
                d.finish, d.stop_token = "stop", True
                d.text = r.stream.finish() if r.stream is not None else ""
            else:
                d.text = r.stream.push(token) if r.stream is not None else ""
                if r.stream is not None and r.stream.stopped:
                    d.finish = "stop"
                elif len(r.tokens) >= r.steps:
                    d.finish = "length"
                    d.text += r.stream.finish() if r.stream is not None else ""
            r.text += d.text
            r.finish = d.finish
            out.append(d)
        for d in out:
            if d.finish is not None:
                self.remove(d.row)
        return out


def decode_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    tokenizer: TokenizerLike | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[DecodeRow]:
    """Run every prompt to its end (`params`: one for all, or one per prompt), at most `max_rows`
    at a time: a row that ends gives its slot to the next prompt before the next step. Returns
    the rows in prompt order, each with its tokens (ending with the stop token when a stop token
    ended it, as `engine.generate` yields them), its text (with a tokenizer) and its finish.
    The model is put in eval mode for the call and given back in the mode it was in."""
    all_params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(all_params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(all_params)} sampling params")
    for p in all_params:
        p.validate()
    if not prompts:
        return []
    longest = max(len(p) for p in prompts)
    context = min(model.config.max_seq_len, longest + max(p.max_tokens for p in all_params))
    rows = [DecodeRow(list(p), sp) for p, sp in zip(prompts, all_params)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = BatchDecoder(
                model, tokenizer, max_rows=min(max_rows, len(rows)), context=context
            )
            for r in rows:
                decoder.check_prompt(len(r.prompt))
            waiting = list(rows)
            while waiting or decoder.rows:
                if waiting and decoder.free_slots:
                    k = decoder.free_slots
                    decoder.admit(waiting[:k])
                    waiting = waiting[k:]
                decoder.step()
    finally:
        model.train(was_training)
    return rows


def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    tokenizer: TokenizerLike | None = None,
    max_rows: int | None = None,
) -> list[list[int]]:
    """Generated ids for each prompt, same stop rules as `engine.generate`, batched (all prompts
    at once unless `max_rows` says fewer). Row i samples with seed + i, so a seeded batch is
    reproducible, its rows differ, and row i equals `generate` with that seed; greedy rows equal
    unbatched greedy. Identical prompts (N samples of one question) prefill once."""
    per_row = [
        params if params.seed is None else replace(params, seed=params.seed + i)
        for i in range(len(prompts))
    ]
    rows = decode_batch(
        model, prompts, per_row, tokenizer=tokenizer, max_rows=max_rows or max(1, len(prompts))
    )
    return [r.tokens for r in rows]


__all__ = [
    "DEFAULT_MAX_ROWS",
    "BatchDecoder",
    "DecodeRow",
    "DecodedToken",
    "decode_batch",
    "generate_batch",
]
