"""The one batched decoder: many sequences of different lengths, one KV cache, one forward a step.

What it owns: `BatchDecoder`, a fixed number of rows over one static KV cache [rows, kv_heads,
context, head_dim] per layer. `admit` gives newcomers their slots and prefills them (several in
one forward; identical prompts once: N samples of one question cost one prefill) and samples
their first tokens; `step` decodes one token for every row past its prompt in one forward,
whatever their lengths; a row that ends frees its slot at once, so a newcomer can join before the
next step (continuous batching). Each row keeps its own SamplingParams and its own seeded
generator, so its tokens do not depend on what else shares the batch: row by row, greedy or
seeded, the tokens are those of `engine.generate`. `decode_batch` runs a list of prompts to their
ends through one decoder (evaluation's generative tasks, SFT's skill scoring, `generate_batch`
for System 2's samples); the server's scheduler drives the same decoder step by step, with
`admit(prefill=False)` and `prefill(budget)`: a long prompt goes in chunks between decode steps
(chunked prefill), so the running rows are not stalled for its whole length. What it leaves to
others: the sampling math and text streaming (engine.py), requests, queues and threads
(scheduler.py), the model math (model.py: `positions`, `attn_mask`, `KVCache.update_at`), the
cached blocks themselves (prefix_cache.py).

With a prefix cache: a row's prefill loads the cached blocks of its prompt before computing
(never its last token: its logits are needed); each prefill chunk stores its full blocks at once, so a row
whose next block an earlier row is computing waits a forward and loads it (16 requests sharing a
system prompt compute it once); a row that ends or is cancelled stores its prompt and the tokens
it fed, so the next turn of a chat (prompt + reply + a new message) finds them.

How rows of different lengths share a batch (no padding leaks into any row):
- Active rows live in slots 0..n-1, so a step runs on a view of the first n rows of the cache, not
  on all of them; when row i finishes, the last row's cache is copied into slot i.
- Every token is fed with its own position (RoPE angle and cache slot), and a boolean mask lets
  each query see exactly its own row's slots 0..position. Slots past a row's length hold stale
  keys from an earlier occupant (or padding); the mask never shows them.
- Prompt chunks are right-padded to the longest among them and prefilled together, each token
  at its own position: a real token never sees a pad (pads come after it), and the pads' cache
  slots are overwritten by that row's own tokens before any query may see them.
- Rows still prefilling ride along in decode steps on a dummy token at their next slot, which
  their own prompt token overwrites later: one token of waste per row, and no cache moves.
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
    from twofiles.prefix_cache import PrefixCache

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
    cached: int = 0  # prompt tokens whose keys and values came from the prefix cache
    block_hashes: list[int] = field(default_factory=list)  # the prompt's full blocks, chained


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
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        if max_rows < 1:
            raise TwofilesError(f"max_rows={max_rows}: must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.context = min(context, model.config.max_seq_len)
        self.device = model_device(model)
        self.prefix_cache = prefix_cache
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

    @property
    def prefilling(self) -> list[DecodeRow]:
        """Rows admitted whose prompts are not all in the cache yet (no token sampled)."""
        return [r for r in self.rows if not r.tokens]

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

    def admit(self, rows: Sequence[DecodeRow], *, prefill: bool = True) -> list[DecodedToken]:
        """Give newcomers (at most free_slots) their slots, then prefill them to the end (each
        starting with whatever prefix of its prompt the prefix cache holds) and sample each one's
        first token. `prefill=False` leaves the prompts to `prefill` calls (chunked prefill)."""
        if not rows:
            return []
        if len(rows) > self.free_slots:
            raise ValueError(f"{len(rows)} rows, {self.free_slots} free slots")
        for r in rows:
            self.check_prompt(len(r.prompt))
            if r.params.stop and self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer")
        cache = self.prefix_cache
        for r in rows:
            n, params = len(r.prompt), r.params
            r.length, r.cached, r.steps = 0, 0, min(params.max_tokens, self.context - n)
            r.generator = make_generator(params.seed, self.device)
            if self.tokenizer is not None:
                r.stream = TextStream(self.tokenizer, params.stop, context=r.prompt)
            if params.repetition_penalty != 1.0:
                r.history = torch.empty(1, n + r.steps, dtype=torch.long, device=self.device)
                r.history[0, :n] = torch.tensor(r.prompt)
            if cache is not None:
                cache.lookup_tokens += n
                r.block_hashes = _chain_hashes(r.prompt, cache.block_size)
            self.rows.append(r)
        out: list[DecodedToken] = []
        while prefill and self.prefilling:
            out += self.prefill()
        return out

    def _load_cached(self, slot: int, r: DecodeRow) -> None:
        """Extend the row's cache with the prefix cache's blocks past its length (never its
        prompt's last token: its logits are needed)."""
        cache = self.prefix_cache
        if cache is None or r.length % cache.block_size:
            return
        got = cache.load_prompt(r.prompt, self._k, self._v, slot, r.length)
        r.length += got
        r.cached += got

    def prefill(self, budget: int | None = None) -> list[DecodedToken]:
        """One forward over the prompts still to prefill, at most `budget` tokens of them (None:
        no limit), oldest rows first; sample the first token of each row whose prompt is now
        done. Rows with the same prompt at the same point are computed once and copied. With
        the prefix cache, a row whose next block an earlier row is computing waits for it (and
        then loads it) rather than compute it too: N requests sharing a system prompt prefill
        it once."""
        cache = self.prefix_cache
        pending: set[int] = set()  # blocks that earlier rows will compute
        reps: list[tuple[int, DecodeRow, int]] = []  # (slot, row, end) computed in this forward
        followers: list[list[tuple[int, DecodeRow]]] = []
        groups: dict[tuple[tuple[int, ...], int], int] = {}
        left = budget
        for slot, r in enumerate(self.rows):
            if r.tokens:
                continue
            self._load_cached(slot, r)  # blocks an earlier forward stored
            start = r.length
            key = (tuple(r.prompt), start)
            if key in groups:
                followers[groups[key]].append((slot, r))
                continue
            if cache is not None:
                mine = r.block_hashes[start // cache.block_size :]
                waits = bool(mine) and mine[0] in pending
                pending.update(mine)
                if waits:
                    continue
            if left is not None and left <= 0:
                continue
            end = len(r.prompt) if left is None else min(len(r.prompt), start + left)
            if end < len(r.prompt) and cache is not None:
                # whole blocks, so that what this chunk computes can be cached and found
                aligned = end - end % cache.block_size
                end = aligned if aligned > start else end
            if left is not None:
                left -= end - start
            groups[key] = len(reps)
            reps.append((slot, r, end))
            followers.append([])
        if not reps:
            return []
        hidden = self._prefill_forward(reps)  # [len(reps), T, dim]
        finished: list[tuple[int, int]] = []  # (rep, its prompt's last position in the chunk)
        done: list[DecodeRow] = []
        source: list[int] = []  # done[j]'s logits are those of finished[source[j]]
        for i, (slot, r, end) in enumerate(reps):
            start = r.length
            for fslot, f in followers[i]:
                for k, v in zip(self._k, self._v):
                    k[fslot, :, start:end] = k[slot, :, start:end]
                    v[fslot, :, start:end] = v[slot, :, start:end]
                f.length = end
            r.length = end
            if cache is not None:
                cache.store(r.prompt[:end], self._k, self._v, slot)
            if end == len(r.prompt):
                finished.append((i, end - 1 - start))
                for row in (r, *(f for _, f in followers[i])):
                    done.append(row)
                    source.append(len(finished) - 1)
        if not done:
            return []
        at = torch.tensor(finished, device=self.device)
        # only each finished prompt's last position needs logits: [k, V], not [k, T, V]
        logits = self.model.lm_head(hidden[at[:, 0], at[:, 1]])
        return self._sample(done, logits[torch.tensor(source, device=self.device)].float())

    def _prefill_forward(self, reps: Sequence[tuple[int, DecodeRow, int]]) -> torch.Tensor:
        """Hidden states [k, T, dim] of prompt tokens length..end of each (slot, row, end), their
        keys and values written into the rows' slots. Chunks are right-padded to the longest:
        a pad sits past its row's real tokens, is never seen by them, and its slot is
        overwritten by the row's own token before any query may see it."""
        k, device = len(reps), self.device
        starts = [r.length for _, r, _ in reps]
        T = max(end - s for (_, _, end), s in zip(reps, starts))
        idx = torch.zeros(k, T, dtype=torch.long)
        for i, ((_, r, end), s) in enumerate(zip(reps, starts)):
            idx[i, : end - s] = torch.tensor(r.prompt[s:end])  # right padding with id 0
        idx = idx.to(device)
        positions = (torch.tensor(starts)[:, None] + torch.arange(T)).clamp_max(self.context - 1)
        positions = positions.to(device)
        L = int(positions.max()) + 1
        own = torch.arange(L, device=device)[None, None, :] <= positions[:, :, None]  # [k, T, L]
        slots = [slot for slot, _, _ in reps]
        if slots == list(range(slots[0], slots[0] + k)):  # contiguous: write in place
            return self.model.hidden_states(
                idx,
                self._views(slots[0], slots[0] + k, L),
                positions=positions,
                attn_mask=own[:, None],
            )
        # scattered slots: run on a copy of those rows, then write the new entries back
        at = torch.tensor(slots, device=device)
        views = [_RowsView(kk[at, :, :L], vv[at, :, :L]) for kk, vv in zip(self._k, self._v)]
        hidden = self.model.hidden_states(idx, views, positions=positions, attn_mask=own[:, None])
        for view, kk, vv in zip(views, self._k, self._v):
            for i, ((slot, _, end), s) in enumerate(zip(reps, starts)):
                kk[slot, :, s:end] = view.k[i, :, s:end]
                vv[slot, :, s:end] = view.v[i, :, s:end]
        return hidden

    def step(self) -> list[DecodedToken]:
        """Decode one token for every row that has sampled one, in one forward. Rows still
        prefilling ride along on a dummy token at their next slot (which their own prompt token
        overwrites before anyone may see it): cheaper than moving caches to keep rows apart."""
        decoding = [i for i, r in enumerate(self.rows) if r.tokens]
        if not decoding:
            return []
        n = len(self.rows)
        lengths = torch.tensor([r.length for r in self.rows], device=self.device)
        L = int(lengths.max()) + 1
        idx = torch.tensor(
            [[r.tokens[-1] if r.tokens else 0] for r in self.rows],
            dtype=torch.long,
            device=self.device,
        )
        own = (
            torch.arange(L, device=self.device)[None, :] <= lengths[:, None]
        )  # [n, L]: 0..position
        hidden = self.model.hidden_states(
            idx, self._views(0, n, L), positions=lengths[:, None], attn_mask=own[:, None, None, :]
        )
        rows = [self.rows[i] for i in decoding]
        for r in rows:
            r.length += 1
        if len(decoding) < n:
            hidden = hidden[torch.tensor(decoding, device=self.device)]
        return self._sample(rows, self.model.lm_head(hidden[:, -1]).float())

    def remove(self, row: DecodeRow) -> None:
        """Give the row's slot back (a row that ended is removed by the decoder itself), its
        prompt and tokens kept in the prefix cache: the last row moves into the slot, so active
        rows stay 0..n-1."""
        i, last = self.rows.index(row), len(self.rows) - 1
        if self.prefix_cache is not None:
            seq = [*row.prompt, *row.tokens][: row.length]  # the last token was never fed
            self.prefix_cache.store(seq, self._k, self._v, i)
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


def _chain_hashes(ids: Sequence[int], block_size: int) -> list[int]:
    """A hash per full block of `ids`, each covering every block before it: equal hashes mean
    (barring a collision, harmless here: it only makes a row wait a forward) equal prefixes."""
    out, h = [], 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        h = hash((h, tuple(ids[start : start + block_size])))
        out.append(h)
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
