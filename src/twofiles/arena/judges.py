"""Who decides a battle: a person at the terminal, a reference answer, a judge model, a reward model.

What it owns: the `Judge` protocol and its implementations. A judge sees the prompt and the two
replies as side A and side B, never the models' names (the arena is anonymous). What it leaves to
others: generating the replies and storing votes (arena/battle.py, arena/store.py).

- `HumanJudge`: prints both replies and reads a vote (a / b / t = tie / x = both bad).
- `ReferenceJudge`: checks each reply against the prompt's reference answer with the
  evaluation's extractors (exact match; numbers as numbers): one right wins; both right is a tie;
  both wrong is "both bad".
- `ModelJudge`: asks a judge model which reply is better, twice, the second time with the sides
  swapped (LLM judges favour a position, Zheng et al. 2023, "Judging LLM-as-a-Judge"); only a
  verdict that survives the swap counts, otherwise it is a tie. A local judge is read by the
  log-likelihood of " A" versus " B" after the question; an endpoint judge by its text reply.
- `ScoreJudge`: any function scoring (prompt, reply) -> float, e.g. a reward model: the higher
  score wins, within `margin` it is a tie.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from twofiles.arena.store import Winner
from twofiles.errors import TwofilesError


@dataclass
class Verdict:
    winner: Winner
    detail: dict[str, Any] = field(default_factory=dict)  # why: stored in the battle's meta


class Judge(Protocol):
    name: str  # stored with each vote ("human", "reference", "model:SPEC", ...)

    def judge(
        self, prompt: str, reply_a: str, reply_b: str, reference: str | None = None
    ) -> Verdict: ...


class QuitVoting(Exception):
    """The person at the terminal asked to stop."""


@dataclass
class HumanJudge:
    input_fn: Callable[[str], str] = input
    out: TextIO = sys.stdout
    name: str = "human"

    KEYS = {
        "a": "a",
        "b": "b",
        "t": "tie",
        "tie": "tie",
        "x": "both_bad",
        "bad": "both_bad",
        "both_bad": "both_bad",
    }

    def judge(
        self, prompt: str, reply_a: str, reply_b: str, reference: str | None = None
    ) -> Verdict:
        rule = "─" * 60
        print(
            f"\n{rule}\nPROMPT\n{prompt}\n{rule}\nA\n{reply_a}\n{rule}\nB\n{reply_b}\n{rule}",
            file=self.out,
            flush=True,
        )
        while True:
            answer = (
                self.input_fn("which is better? [a] A  [b] B  [t] tie  [x] both bad  [q] quit: ")
                .strip()
                .lower()
            )
            if answer in ("q", "quit"):
                raise QuitVoting
            if answer in self.KEYS:
                return Verdict(self.KEYS[answer])  # type: ignore[arg-type]
            print(f"not a vote: {answer!r}", file=self.out)


@dataclass
class ReferenceJudge:
    extract: str = "number"  # an extractor of twofiles.eval.extract (number, exact, first_line)
    name: str = "reference"

    def judge(
        self, prompt: str, reply_a: str, reply_b: str, reference: str | None = None
    ) -> Verdict:
        from twofiles.eval.extract import EXTRACTORS, is_match

        if reference is None:
            raise TwofilesError(
                "the reference judge needs a reference answer for every prompt (a 'reference' field)"
            )
        got_a, got_b = EXTRACTORS[self.extract](reply_a), EXTRACTORS[self.extract](reply_b)
        ok_a, ok_b = (
            is_match(got_a, reference, self.extract),
            is_match(got_b, reference, self.extract),
        )
        winner: Winner = (
            "tie" if ok_a and ok_b else "both_bad" if not (ok_a or ok_b) else "a" if ok_a else "b"
        )
        return Verdict(winner, {"reference": reference, "extracted_a": got_a, "extracted_b": got_b})


JUDGE_PROMPT = (
    "You are judging two answers to the same question. Pick the answer that is more correct, more helpful and clearer.\n\n"
    "Question:\n{prompt}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
    "Which answer is better, A or B? Reply with one letter."
)


@dataclass
class ModelJudge:
    """A judge model behind an eval backend (twofiles.eval.backends: LocalBackend or
    EndpointBackend). `margin`: nats by which one letter must beat the other to count."""

    backend: Any
    name: str = "model"
    margin: float = 0.0

    def _ask(self, prompt: str, first: str, second: str) -> tuple[str, dict[str, Any]]:
        """'a' (the first shown), 'b', or 'tie' for one ordering."""
        from twofiles.eval.backends import GenRequest, LocalBackend

        question = JUDGE_PROMPT.format(prompt=prompt, first=first, second=second)
        messages = [{"role": "user", "content": question}]
        if isinstance(self.backend, LocalBackend):
            # a chat model's reply starts right after its turn header; a base model's after "one letter." and a space
            letters = ["A", "B"] if self.backend.is_chat else [" A", " B"]
            la, lb = self.backend.choice_loglikelihoods(
                GenRequest(messages, question + "\nAnswer:"), letters
            )
            pick = "a" if la > lb + self.margin else "b" if lb > la + self.margin else "tie"
            return pick, {"logp_A": la, "logp_B": lb}
        text = (
            self.backend.generate([GenRequest(messages, question)], max_tokens=4)[0].strip().upper()
        )
        pick = "a" if text.startswith("A") else "b" if text.startswith("B") else "tie"
        return pick, {"text": text}

    def judge(
        self, prompt: str, reply_a: str, reply_b: str, reference: str | None = None
    ) -> Verdict:
        first, d1 = self._ask(prompt, reply_a, reply_b)
        swapped, d2 = self._ask(prompt, reply_b, reply_a)
        second = {"a": "b", "b": "a", "tie": "tie"}[swapped]  # back to the battle's sides
        winner: Winner = first if first == second else "tie"  # type: ignore[assignment]
        return Verdict(
            winner,
            {"as_shown": first, "swapped": second, "as_shown_detail": d1, "swapped_detail": d2},
        )


@dataclass
class ScoreJudge:
    """The hook for a reward model: `score(prompt, reply)` -> higher is better."""

    score: Callable[[str, str], float]
    name: str = "score"
    margin: float = 0.0

    def judge(
        self, prompt: str, reply_a: str, reply_b: str, reference: str | None = None
    ) -> Verdict:
        sa, sb = float(self.score(prompt, reply_a)), float(self.score(prompt, reply_b))
        winner: Winner = "a" if sa > sb + self.margin else "b" if sb > sa + self.margin else "tie"
        return Verdict(winner, {"score_a": sa, "score_b": sb})
