"""The reversal curse's measures, defined once: exact match and the log-probability test, and
the statistics over them (Wilson intervals, mean differences with a t interval, a sign test).

Exact match (greedy, on a held-out paraphrase): the completion's first sentence (up to its first
period or line end)
- asks for a name: holds the full name, its words contiguous and in order (case-insensitive);
- asks for a description: holds the description's key words (facts.keywords: its words minus
  "the", "of", prepositions and "first"/"only") in order, other words allowed between them.

The log-probability test (Berglund et al. 2023, Figure 4): log P(the right answer | the prompt)
against log P(answer | the prompt) of `k` other facts' answers from the same subset (the same
other facts before and after finetuning). Per probe: the difference between the right answer's
log-probability and the mean of the others', and the right answer's rank among all k + 1 (1: the
most likely). A model that learned nothing about the direction ranks the right answer at chance.

What it leaves to others: the facts (experiments.facts), generating and scoring with a model
(eval.backends), the run (experiments.reversal).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from twofiles.experiments.facts import Fact, Probe, keywords
from twofiles.stats import Z95, wilson

# two-sided 97.5% quantiles of Student's t for small samples (df 1..29); 1.96 beyond
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045,
)  # fmt: skip


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def first_sentence(completion: str) -> str:
    return re.split(r"[.\n]", completion, maxsplit=1)[0]


def _contains_run(words: Sequence[str], run: Sequence[str]) -> bool:
    n = len(run)
    return n > 0 and any(list(words[i : i + n]) == list(run) for i in range(len(words) - n + 1))


def _contains_in_order(words: Sequence[str], wanted: Sequence[str]) -> bool:
    it = iter(words)
    return bool(wanted) and all(any(w == x for x in it) for w in wanted)


def exact_match(probe: Probe, completion: str) -> bool:
    """Whether a greedy completion of `probe.prompt` gives the probe's answer (module docstring)."""
    said = _words(first_sentence(completion))
    if probe.direction == "description_to_name":
        return _contains_run(said, _words(probe.answer))
    return _contains_in_order(said, keywords(probe.answer))


def candidates(fact: Fact, facts: Sequence[Fact], k: int, seed: int) -> list[Fact]:
    """`k` other facts of the same subset (fewer when the subset is smaller), a function of the
    seed and the fact alone, so every stage compares against the same ones."""
    others = [f for f in facts if f.subset == fact.subset and f.id != fact.id]
    return random.Random(f"reversal-candidates/{seed}/{fact.id}").sample(
        others, min(k, len(others))
    )


def rank_of_first(logps: Sequence[float]) -> int:
    """1 + how many of the others are more likely than the first (ties count half, rounded
    down: a model that scores everything alike ranks the right answer in the middle)."""
    right = logps[0]
    above = sum(lp > right for lp in logps[1:])
    ties = sum(lp == right for lp in logps[1:])
    return 1 + above + ties // 2


# ----------------------------------------------------------------------------------- statistics


def mean_ci(xs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% interval (Student's t); the interval is infinite with one value."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, float("-inf"), float("inf")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    t = _T975[n - 2] if n - 2 < len(_T975) else Z95
    half = t * sd / math.sqrt(n)
    return m, m - half, m + half


def sign_test(xs: Sequence[float]) -> float:
    """Two-sided exact sign test of "the differences are as often positive as negative" (zeros
    dropped): the paired test that assumes nothing about their distribution."""
    pos, neg = sum(x > 0 for x in xs), sum(x < 0 for x in xs)
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class CellStats:
    """One (stage, subset, direction) cell of the table."""

    n: int  # probes scored by exact match
    correct: int
    lp_n: int  # probes in the log-probability test
    lp_diff: float  # mean log P(right) - mean log P(others), nats
    lp_lo: float
    lp_hi: float
    top1: int  # probes where the right answer is the most likely of all candidates
    mean_rank: float
    chance_rank: float  # the mean rank of a model that knows nothing: (k + 2) / 2
    sign_p: float  # sign test of the differences

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def ci(self) -> tuple[float, float]:
        return wilson(self.correct, self.n)


def cell_stats(records: Sequence[dict[str, object]]) -> CellStats:
    """Statistics of one cell's per-probe records (results.jsonl's lines)."""
    correct = sum(bool(r["correct"]) for r in records)
    scored = [r for r in records if r.get("logp") is not None]
    diffs, ranks, chance = [], [], []
    for r in scored:
        logp = r["logp"]
        assert isinstance(logp, list)
        others = logp[1:]
        diffs.append(logp[0] - sum(others) / len(others))
        ranks.append(rank_of_first(logp))
        chance.append((len(logp) + 1) / 2)
    m, lo, hi = mean_ci(diffs)
    return CellStats(
        n=len(records),
        correct=correct,
        lp_n=len(scored),
        lp_diff=m,
        lp_lo=lo,
        lp_hi=hi,
        top1=sum(r == 1 for r in ranks),
        mean_rank=sum(ranks) / len(ranks) if ranks else float("nan"),
        chance_rank=sum(chance) / len(chance) if chance else float("nan"),
        sign_p=sign_test(diffs),
    )


__all__ = [
    "CellStats",
    "candidates",
    "cell_stats",
    "exact_match",
    "first_sentence",
    "mean_ci",
    "rank_of_first",
    "sign_test",
    "wilson",
]
