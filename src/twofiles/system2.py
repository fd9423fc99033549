"""System 2 thinking: spend more computation on one question to get a better answer.

A model answers in one pass of "System 1" token-by-token sampling. Given more time, it can
instead sample many independent reasoning paths and aggregate them:

- self-consistency (Wang et al. 2022, arXiv:2203.11171): sample N chains of thought, extract each
  one's final answer, return the majority answer;
- best-of-N: sample N answers and keep the one a scorer (a reward model, a verifier, the model's
  own likelihood) rates highest.

What it owns: the aggregation (`self_consistency`, `best_of_n`, `vote`), a sampler that draws the
N samples of one prompt as one batch through `decoder.generate_batch` (the one batched decoder:
identical prompts prefill once, so N rows cost one prefill and N-wide decode steps, not N
separate runs),
and `mean_logprob_scorer`, the model's own average token log-probability as a scorer. What it
leaves to others: rendering the prompt (chat.ChatFormat), extracting answers (answers.py),
measuring (bench/system2.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from twofiles.answers import extract_number, majority_vote

if TYPE_CHECKING:
    from twofiles.engine import SamplingParams, TokenizerLike
    from twofiles.model import Transformer

__all__ = [
    "SampleFn",
    "Vote",
    "best_of_n",
    "make_sampler",
    "mean_logprob_scorer",
    "sample_texts",
    "self_consistency",
    "think",
    "vote",
]

SampleFn = Callable[[int], list[str]]  # n -> n independent samples (texts) for one fixed prompt


@dataclass
class Vote:
    answer: str | None  # the majority answer (None if no sample had one)
    votes: dict[str, int]  # answer -> how many samples gave it, most voted first
    answers: list[str | None]  # each sample's extracted answer, in sample order
    texts: list[str]  # the samples
    tokens: int = 0  # tokens generated for all samples (when known)

    @property
    def reply(self) -> str:
        """The sample to show: the first one that reached the majority answer (else the first)."""
        if not self.texts:
            return ""
        return (
            self.texts[self.answers.index(self.answer)]
            if self.answer is not None
            else self.texts[0]
        )

    @property
    def agreement(self) -> float:
        """Share of samples that gave the winning answer (a rough confidence)."""
        return (
            self.votes.get(self.answer, 0) / len(self.texts)
            if self.answer is not None and self.texts
            else 0.0
        )


def vote(texts: Sequence[str], extract: Callable[[str], str | None] = extract_number) -> Vote:
    """Extract an answer from every text and take the majority (ties: the first seen wins)."""
    answers = [extract(t) for t in texts]
    counts = Counter(a for a in answers if a is not None)
    ordered = {a: counts[a] for a in sorted(counts, key=lambda a: (-counts[a], answers.index(a)))}
    return Vote(majority_vote(answers), ordered, answers, list(texts))


def self_consistency(
    sample_fn: SampleFn, n: int, *, extract: Callable[[str], str | None] = extract_number
) -> tuple[str | None, dict[str, int]]:
    """Sample n reasoning paths, extract their answers, majority-vote: (answer, votes)."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample")
    v = vote(sample_fn(n), extract)
    return v.answer, v.votes


def best_of_n(
    sample_fn: SampleFn, scorer: Callable[[str], float], n: int
) -> tuple[str, list[float]]:
    """Sample n texts, score each, return (the highest-scoring text, every score in sample
    order). Ties go to the earliest sample."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample")
    texts = sample_fn(n)
    scores = [float(scorer(t)) for t in texts]
    best = max(range(len(texts)), key=lambda i: (scores[i], -i))
    return texts[best], scores


def _text(tokenizer: TokenizerLike, ids: list[int], end_ids: set[int], stop: Sequence[str]) -> str:
    while ids and ids[-1] in end_ids:
        ids = ids[:-1]
    text = tokenizer.decode(ids)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _sample(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    n: int,
    batch_size: int,
) -> tuple[list[str], int]:
    from twofiles.decoder import generate_batch

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    end_ids = (
        set(params.stop_token_ids)
        | {tokenizer.bos_id}
        | set(getattr(tokenizer, "eos_ids", []) or [])
    )
    texts: list[str] = []
    tokens = 0
    while len(texts) < n:
        rows = min(batch_size, n - len(texts))
        # row i of a batch samples with seed + i: each chunk starts past the seeds used so far,
        # or it would repeat earlier samples
        seeded = params if params.seed is None else replace(params, seed=params.seed + len(texts))
        for ids in generate_batch(model, [list(prompt_ids)] * rows, seeded, tokenizer=tokenizer):
            tokens += len(ids)
            texts.append(_text(tokenizer, list(ids), end_ids, params.stop))
    return texts, tokens


def sample_texts(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    n: int,
    *,
    batch_size: int = 16,
) -> list[str]:
    """n sampled continuations of one prompt, decoded, without their end token or stop string.
    Rows run batch_size at a time (one prefill per batch: the rows share the prompt's length)."""
    return _sample(model, tokenizer, prompt_ids, params, n, batch_size)[0]


def think(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    n: int,
    *,
    extract: Callable[[str], str | None] = extract_number,
    batch_size: int = 16,
) -> Vote:
    """Self-consistency with everything kept: n batched samples of one prompt and their vote
    (Vote.reply is the sample to show)."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample")
    texts, tokens = _sample(model, tokenizer, prompt_ids, params, n, batch_size)
    v = vote(texts, extract)
    v.tokens = tokens
    return v


def make_sampler(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    batch_size: int = 16,
) -> SampleFn:
    """A SampleFn for one prompt (what self_consistency and best_of_n take)."""
    return lambda n: sample_texts(model, tokenizer, prompt_ids, params, n, batch_size=batch_size)


def mean_logprob_scorer(
    model: Transformer, tokenizer: TokenizerLike, prompt_ids: Sequence[int]
) -> Callable[[str], float]:
    """Scores a continuation of `prompt_ids` by the model's mean log-probability per token: the
    model's own confidence, the simplest verifier (no extra model needed)."""
    import torch

    from twofiles.engine import model_device

    device = model_device(model)  # not lm_head.weight: a quantized or packed head has none

    @torch.inference_mode()
    def score(text: str) -> float:
        ids = tokenizer.encode(text)
        if not ids:
            return float("-inf")
        seq = torch.tensor([list(prompt_ids) + ids], dtype=torch.long, device=device)
        logits = model(seq[:, :-1]).float()  # [1, T-1, V]
        logp = logits.log_softmax(-1)[
            0, len(prompt_ids) - 1 :
        ]  # the rows that predict the continuation
        target = seq[0, len(prompt_ids) :]
        return float(logp.gather(-1, target[:, None]).mean())

    return score
