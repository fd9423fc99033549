"""The engine: turn a model's next-token logits into text, one seeded roll of the die at a time.

What it owns: sampling (repetition penalty, temperature, top-k, top-p, min-p) as pure functions
on a logits tensor; KV-cached generation (prefill the prompt in one forward, then one token per
step; with a prefix cache, the prompt's cached blocks are loaded instead and the prompt and reply
are stored for the next call); stop rules (stop token ids, stop strings); incremental detokenisation that never shows
half a UTF-8 character or the start of a stop string; per-step probabilities for "show me the
die". What it leaves to others: the model math (model.py), loading a model (formats/resolve.py),
batches of sequences (decoder.py, the one batched decoder, built on the sampling here), device
choice (the caller, via runtime.py; the engine follows the model's device), HTTP (serve), chat
rendering (chat/).

Rules worth knowing:
- Sampling draws only from a `torch.Generator` seeded from `SamplingParams.seed`, never from the
  global RNG, so the same seed gives the same tokens whatever else the process does.
- The die: each step the logits go through repetition penalty -> temperature -> top-k -> top-p ->
  min-p -> softmax. Temperature 0 is greedy: the most likely face of the temperature-1 die.
- Stop: generation halts right after the token that is a stop token or that completes a stop
  string. That token is the last one yielded (as an EOS token is, in Hugging Face / vLLM), but
  text never includes the stop string or the stop token.
- Length: prompt + output never exceeds the model's max_seq_len. A prompt that leaves no room
  for one new token raises `PromptTooLongError` rather than being silently cut: what to drop
  (the oldest turn? the system prompt?) is the caller's decision, not the engine's.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from twofiles.errors import TwofilesError
from twofiles.model import KVWrites

if TYPE_CHECKING:
    from twofiles.model import Transformer
    from twofiles.prefix_cache import PrefixCache


class TokenizerLike(Protocol):
    """All the engine needs from a tokenizer."""

    bos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class PromptTooLongError(TwofilesError):
    """The prompt leaves no room in the model's context for even one new token."""


@dataclass
class SamplingParams:
    temperature: float = 1.0  # divides the logits; 0 = greedy (always the most likely token)
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    top_p: float = (
        1.0  # nucleus: keep the smallest set of tokens whose probability reaches p; 1 = off
    )
    min_p: float = (
        0.0  # drop tokens less likely than min_p * (probability of the top token); 0 = off
    )
    repetition_penalty: float = (
        1.0  # CTRL (Keskar et al. 2019): >1 discourages tokens already in prompt+output; 1 = off
    )
    seed: int | None = None  # seeds the sampler's own generator; None = a fresh random seed
    max_tokens: int = 256  # most new tokens to generate
    stop: list[str] = field(
        default_factory=list
    )  # text never shown past (or including) any of these
    stop_token_ids: list[int] = field(
        default_factory=list
    )  # ids that end generation (e.g. end of turn)

    def validate(self) -> SamplingParams:
        """Raise TwofilesError naming the first bad field; return self."""

        def bad(name: str, why: str) -> TwofilesError:
            return TwofilesError(f"{name}={getattr(self, name)!r}: {why}")

        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and self.temperature >= 0
        ):
            raise bad("temperature", "must be a finite number >= 0 (0 = greedy)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be an integer >= 0 (0 = off)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise bad("top_p", "must be in (0, 1] (1 = off)")
        if not (isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1):
            raise bad("min_p", "must be in [0, 1] (0 = off)")
        if not (
            isinstance(self.repetition_penalty, (int, float))
            and math.isfinite(self.repetition_penalty)
            and self.repetition_penalty > 0
        ):
            raise bad("repetition_penalty", "must be a finite number > 0 (1 = off)")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise bad("seed", "must be an integer or None")
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise bad("max_tokens", "must be an integer >= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "stop strings must be non-empty strings")
        return self


# ---------------------------------------------------------------------------------------------
# The die: pure functions on logits [..., V] (fp32). Removed tokens get -inf.


def apply_repetition_penalty(
    logits: torch.Tensor, token_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty for every token id in `token_ids` [B, N] (prompt + output so far):
    positive logits are divided by `penalty`, negative ones multiplied, so a penalty > 1 always
    lowers a seen token's probability. logits: [B, V]."""
    if penalty == 1.0 or token_ids.numel() == 0:
        return logits
    seen = logits.gather(-1, token_ids)  # [B, N]; duplicates gather and scatter the same value
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, token_ids, seen)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T. T -> 0 is the point mass on the argmax, which is what T == 0 returns."""
    if temperature == 0:
        keep = F.one_hot(logits.argmax(-1), logits.shape[-1]).bool()
        return logits.masked_fill(~keep, -math.inf)
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits (ties broken by index, as torch.topk does)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    idx = logits.topk(k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    return logits.masked_fill(~keep, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    total probability reaches p. The top token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens strictly more likely
    drop_sorted = mass_before >= p  # already reached p without this token
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): drop tokens whose probability is below min_p times the top
    token's. The threshold scales with the model's confidence, unlike top-p."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(-1)
    threshold = probs.amax(-1, keepdim=True) * min_p
    return logits.masked_fill(probs < threshold, -math.inf)


def token_distribution(
    logits: torch.Tensor, params: SamplingParams, history: torch.Tensor | None = None
) -> torch.Tensor:
    """The die for the next token: probabilities [B, V] after every filter in `params`.
    With temperature 0 this is the temperature-1 die (greedy then takes its most likely face).
    history: token ids [B, N] seen so far, for the repetition penalty."""
    logits = logits.float()
    if history is not None:
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    logits = apply_temperature(logits, params.temperature or 1.0)
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    logits = min_p_filter(logits, params.min_p)
    return logits.softmax(-1)


def roll(probs: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row [B] from probs [B, V]: argmax when temperature is 0, otherwise a draw.
    The draw is argmax(p / q) with q ~ Exp(1), which picks i with probability p_i (the
    exponential-race form of the Gumbel-max trick, as in gpt-fast): no host sync, no CDF search."""
    if temperature == 0:
        return probs.argmax(-1)
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / q.clamp_min_(torch.finfo(q.dtype).tiny)).argmax(-1)


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    history: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token ids [B] for logits [B, V]. Same generator state -> same tokens."""
    return roll(token_distribution(logits, params, history), params.temperature, generator)


def _top(probs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely (id, prob) of a 1-D probability vector, most likely first."""
    values, ids = probs.topk(min(k, probs.shape[-1]))
    return list(zip(ids.tolist(), values.tolist()))


def top_candidates(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely next tokens of a 1-D logits vector [V] with their softmax probabilities."""
    return _top(logits.float().softmax(-1), k)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own for sampling; None draws a fresh seed from the OS."""
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else secrets.randbits(63))
    return g


# ---------------------------------------------------------------------------------------------
# Generation


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's tensors live (its first parameter or buffer). Not `lm_head.weight.device`:
    a quantized Linear (twofiles.quant) keeps its weight in buffers of other names."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def max_new_tokens(model: Transformer, prompt_len: int, params: SamplingParams) -> int:
    """How many tokens this prompt may get: max_tokens, capped so prompt + output <= max_seq_len."""
    limit = model.config.max_seq_len
    if prompt_len == 0:
        raise TwofilesError("empty prompt: give at least one token (e.g. the tokenizer's bos_id)")
    if prompt_len >= limit:
        raise PromptTooLongError(
            f"prompt is {prompt_len} tokens; the model's context is {limit} tokens, which leaves no room to generate (shorten the prompt)"
        )
    return min(params.max_tokens, limit - prompt_len)


def _prefill_logits(
    model: Transformer, prompt: torch.Tensor, caches: list, pos: int = 0
) -> torch.Tensor:
    """Logits [B, V] after the prompt (its tokens at positions pos..), filling the caches. Only
    the last position goes through lm_head: the others' logits would be thrown away, and for a
    small model with a large vocabulary (smollm2: 49k x 576) that matmul is a large share of the
    prompt's cost."""
    hidden_states = getattr(model, "hidden_states", None)
    if hidden_states is None:  # a model that only offers forward (e.g. a test double)
        return model(prompt, caches=caches, pos=pos)[:, -1]
    return model.lm_head(hidden_states(prompt, caches, pos)[:, -1]).float()


def cache_length(needed: int, limit: int) -> int:
    """KV cache slots for a generation that writes `needed` positions: the next power of two above
    it (at least 64), capped at the model's context `limit`. Cache sizes then come in few shapes,
    so a torch.compile'd model reuses one graph across requests of different lengths instead of
    recompiling for each (and never sees a cache filled exactly to its end, another recompile)."""
    return min(limit, max(64, 1 << needed.bit_length()))


@torch.inference_mode()
def _decode(
    model: Transformer,
    prompt: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    steps: int,
    prefix_cache: PrefixCache | None = None,
) -> Generator[tuple[torch.Tensor, torch.Tensor]]:
    """The cached loop for prompt [B, T] (one shared length): yields (tokens [B], probs [B, V])
    `steps` times, all on the model's device. Nothing here syncs with the host, except for the
    prefix cache (one sequence): the prompt's cached blocks are loaded rather than computed, and
    the prompt and the tokens fed are stored when the loop ends, however it ends."""
    B, T = prompt.shape
    caches = model.new_caches(
        B, cache_length(T + steps - 1, model.config.max_seq_len)
    )  # the last sampled token is never fed back
    seq = torch.empty(
        B, T + steps, dtype=torch.long, device=prompt.device
    )  # prompt + output, for the penalty
    seq[:, :T] = prompt
    hit = 0
    if not all(isinstance(c, KVWrites) for c in caches):
        prefix_cache = None  # a test double's own caches: nothing to copy
    if prefix_cache is not None:
        ks, vs = [c.k for c in caches], [c.v for c in caches]
        hit = prefix_cache.load_prompt(prompt[0].tolist(), ks, vs, 0)
        prefix_cache.lookup_tokens += T
    fed = hit  # tokens whose keys and values are in the caches (a prefill cut short adds none)
    try:
        logits = _prefill_logits(model, prompt[:, hit:], caches, hit)  # [B, V]
        fed = T
        for i in range(steps):
            history = seq[:, : T + i] if params.repetition_penalty != 1.0 else None
            probs = token_distribution(logits, params, history)
            tokens = roll(probs, params.temperature, generator)
            seq[:, T + i] = tokens
            yield tokens, probs
            if i + 1 < steps:
                logits = model(tokens[:, None], caches=caches, pos=T + i)[:, -1]
                fed = T + i + 1
    finally:
        if prefix_cache is not None:
            prefix_cache.store(seq[0, :fed].tolist(), ks, vs, 0)


_MAX_HELD = 16  # tokens a trailing U+FFFD may hold the text stream back


class TextStream:
    """Tokens in, text deltas out. Holds back text until it is whole UTF-8 and cannot be the start
    of a stop string; cuts exactly before the first stop string and then reports `stopped`.

    Decoding is incremental the vLLM way: decode a short window of recent ids with and without
    the new ones and take the difference, so a token's text can depend on its left neighbours
    (SentencePiece's leading space, bytes of a character split over tokens) and the cost per
    token stays constant."""

    def __init__(
        self, tokenizer: TokenizerLike, stop: Sequence[str] = (), context: Sequence[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        ctx = list(context[-4:])
        if ctx and tokenizer.decode(ctx).endswith("\ufffd"):
            ctx = []  # context that ends mid-character would make the differences wrong
        self._ids = ctx
        self._prefix = 0  # window start
        self._read = len(ctx)  # ids before this are already in `text`
        self.text = ""  # every whole character decoded so far (cut at the stop string, if any)
        self._shown = 0  # characters of `text` already returned
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; return the text that is now safe to show ("" while held back)."""
        if self.stopped:
            return ""
        self._ids.append(int(token))
        self._advance(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended: return what was held back (partial characters as U+FFFD)."""
        if self.stopped:
            return ""
        self._advance(final=True)
        return self._release(final=True)

    def _advance(self, final: bool) -> None:
        if self._read == len(self._ids):
            return
        before = self.tokenizer.decode(self._ids[self._prefix : self._read])
        after = self.tokenizer.decode(self._ids[self._prefix :])
        # A trailing U+FFFD is usually a character whose remaining bytes are still to come, so
        # wait. Past _MAX_HELD tokens the held bytes are invalid, not a character in progress
        # (one is <= 4 bytes): show them as U+FFFD rather than stall on a model emitting junk.
        clean = not after.endswith("\ufffd") or len(self._ids) - self._read > _MAX_HELD
        if final or (len(after) > len(before) and clean):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.text.find(s, self._shown) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            self.text, self.stopped = self.text[:end], True
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - self._held_back()
        out = self.text[self._shown : end]
        self._shown = end
        return out

    def _held_back(self) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text) - self._shown), held, -1):
                if self.text.endswith(s[:n]):
                    held = n
                    break
        return held


@dataclass
class Step:
    """One roll of the die."""

    token: int  # the id chosen
    prob: float  # its probability under the die it was drawn from
    top: list[tuple[int, float]] = field(
        default_factory=list
    )  # most likely (id, prob), if asked for
    text: str = ""  # text that became safe to show with this token (needs a tokenizer)
    finish: str | None = None  # on the last step: "stop" (stop token/string) or "length"


def _end_ids(tokenizer: TokenizerLike) -> set[int]:
    """Tokens that end generation: the document separator, and an imported model's eos tokens."""
    return {tokenizer.bos_id, *getattr(tokenizer, "eos_ids", ())}


def generate_steps(
    model: Transformer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    tokenizer: TokenizerLike | None = None,
    top: int = 0,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[Step]:
    """Generate after `prompt_ids`, one Step per token, with the `top` most likely alternatives.
    With a tokenizer each step carries its text delta, stop strings apply, and the tokenizer's
    bos_id (a base model's "this document is over") and its eos ids are stop tokens too. With a
    `prefix_cache`, the prompt's cached prefix is not computed again, and the prompt and the
    reply are kept for the next call (a chat's next turn starts with them)."""
    params.validate()
    if params.stop and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    steps = max_new_tokens(model, len(prompt_ids), params)
    device = model_device(model)
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    generator = make_generator(params.seed, device)
    stop_ids = set(params.stop_token_ids) | (
        _end_ids(tokenizer) if tokenizer is not None else set()
    )
    stream = (
        TextStream(tokenizer, params.stop, context=prompt_ids) if tokenizer is not None else None
    )
    decoded = _decode(model, prompt, params, generator, steps, prefix_cache)
    try:
        for i, (tokens, probs) in enumerate(decoded):
            token = int(tokens[0])  # the one host sync per step: the caller wants the id now
            step = Step(token, float(probs[0, token]), _top(probs[0], top) if top else [])
            if token in stop_ids:
                step.finish = "stop"
                if stream is not None:
                    step.text = stream.finish()
            elif stream is not None:
                step.text = stream.push(token)
                if stream.stopped:
                    step.finish = "stop"
            if step.finish is None and i + 1 == steps:
                step.finish = "length"
                if stream is not None:
                    step.text += stream.finish()
            yield step
            if step.finish is not None:
                return
    finally:
        decoded.close()  # now, not whenever it is collected: the prefix cache stores on close


def generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    tokenizer: TokenizerLike | None = None,
) -> Iterator[int]:
    """Token ids after `prompt_ids` (KV-cached); see generate_steps for stop rules."""
    for step in generate_steps(model, prompt_ids, params, tokenizer=tokenizer):
        yield step.token


def encode_prompt(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Prompt ids as the model's own tokenizer settings say: the bos then the text when its
    `add_bos` is set (twofiles' models: documents start with <|bos|> in training), the text alone
    otherwise (SmolLM2's GGUF, as transformers and llama.cpp encode it). Text that encodes to
    nothing gets the bos anyway: the model needs one token to condition on (lm-eval's prefix)."""
    ids = tokenizer.encode(text)
    # A tokenizer without the flag (a test double, say) keeps the rule every model had before it.
    if getattr(tokenizer, "add_bos", True) or not ids:
        return [tokenizer.bos_id, *ids]
    return ids


def generate_text(
    model: Transformer, tokenizer: TokenizerLike, prompt: str, params: SamplingParams
) -> Iterator[str]:
    """Stream the continuation of `prompt` as text deltas (never half a character, never any
    part of a stop string)."""
    for step in generate_steps(
        model, encode_prompt(tokenizer, prompt), params, tokenizer=tokenizer
    ):
        if step.text:
            yield step.text


__all__ = [
    "PromptTooLongError",
    "SamplingParams",
    "Step",
    "TextStream",
    "apply_repetition_penalty",
    "apply_temperature",
    "encode_prompt",
    "generate",
    "generate_steps",
    "generate_text",
    "make_generator",
    "max_new_tokens",
    "min_p_filter",
    "model_device",
    "roll",
    "sample_next",
    "token_distribution",
    "top_candidates",
    "top_k_filter",
    "top_p_filter",
]
