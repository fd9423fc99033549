"""Running tasks against a model: prompts, batched scoring, metrics, the results table.

What it owns: turning a task's examples into requests (few-shot included), asking a backend,
and scoring: bits per byte; multiple choice by the log-likelihood of each choice (and per byte
of the choice: `accuracy_norm`); generation with answer extraction and exact match. What it
leaves to others: task files (eval/tasks.py), models (eval/backends.py), extraction rules
(eval/extract.py).

Everything is deterministic: greedy generation, few-shot examples drawn with a fixed seed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from twofiles.errors import BadInputError, TwofilesError
from twofiles.eval.backends import Backend, GenRequest
from twofiles.eval.extract import EXTRACTORS, is_match, reference_answer
from twofiles.eval.tasks import (
    Example,
    TaskSpec,
    fill,
    load_examples,
    load_spec,
    pick_shots,
    split_fewshot,
)

SAMPLES_KEPT = 5  # examples per task kept in results (prompt, reply, verdict) for reports


@dataclass
class TaskResult:
    task: str
    type: str
    metric: str  # the main metric's name
    value: float  # the main metric
    n: int  # examples scored (bits_per_byte: windows/documents)
    metrics: dict[str, float] = field(default_factory=dict)  # every metric, the main one included
    shots: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "bits_per_byte"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def run_task(
    backend: Backend,
    spec: TaskSpec,
    *,
    limit: int | None = None,
    shots: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> TaskResult:
    """Score one task. `limit`: at most this many examples (bits_per_byte: windows of seq_len
    tokens). `shots`: few-shot examples per prompt (default: the spec's)."""
    t0 = time.perf_counter()
    k = spec.shots if shots is None else shots
    examples = load_examples(spec)
    if not examples:
        raise BadInputError("the task has no examples", path=spec.path or spec.name)
    if spec.type == "bits_per_byte":
        texts = [_field(e, spec.text) for e in examples]
        bpb = backend.bits_per_byte(
            texts, seq_len=spec.seq_len, max_windows=limit, batch_size=batch_size
        )
        metrics = {
            "bits_per_byte": bpb.bits_per_byte,
            "loss": bpb.loss,
            "tokens": bpb.tokens,
            "bytes": bpb.bytes,
        }
        return TaskResult(
            spec.name,
            spec.type,
            "bits_per_byte",
            bpb.bits_per_byte,
            len(texts),
            metrics,
            0,
            time.perf_counter() - t0,
        )
    scored, pool = split_fewshot(spec, examples)
    pool = (
        scored if pool is None else pool
    )  # shots from the other examples (all of them, not just the first `limit`)
    if limit is not None:
        scored = scored[:limit]
    shots_of = [pick_shots(pool, k, e, seed, i) for i, e in enumerate(scored)]
    if spec.type == "multiple_choice":
        result = _multiple_choice(backend, spec, scored, shots_of, batch_size, progress)
    else:
        result = _generate(backend, spec, scored, shots_of, batch_size, progress)
    result.shots, result.seconds = k, time.perf_counter() - t0
    return result


def _field(e: Example, name: str) -> Any:
    if name not in e.fields:
        raise BadInputError(f"field {name!r} is missing", path=e.where)
    return e.fields[name]


def _choices(spec: TaskSpec, e: Example) -> tuple[list[str], int]:
    choices = _field(e, spec.choices)
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)
    ):
        raise BadInputError(
            f"field {spec.choices!r} must be a list of at least two strings", path=e.where
        )
    answer = _field(e, spec.answer)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise BadInputError(
            f"field {spec.answer!r} must be the right choice's index or its text", path=e.where
        )
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise BadInputError(
                f"field {spec.answer!r}={answer}: no such choice (there are {len(choices)})",
                path=e.where,
            )
        return choices, answer
    if answer not in choices:
        raise BadInputError(
            f"field {spec.answer!r}={answer!r} is not one of the choices", path=e.where
        )
    return choices, choices.index(answer)


def _choice_text(spec: TaskSpec, e: Example, choice: str) -> str:
    return fill(spec.choice_template, {**e.fields, "choice": choice}, e.where)


def _multiple_choice(
    backend: Backend,
    spec: TaskSpec,
    scored: list[Example],
    shots_of: list[list[Example]],
    batch_size: int,
    progress: bool,
) -> TaskResult:
    requests: list[tuple[str, str]] = []
    spans: list[tuple[int, int, int]] = []  # (first request, number of choices, right choice)
    for e, shots in zip(scored, shots_of):
        context = ""
        for s in shots:  # each shot: its prompt, its right choice
            shot_choices, shot_right = _choices(spec, s)
            context += (
                fill(spec.prompt, s.fields, s.where)
                + _choice_text(spec, s, shot_choices[shot_right])
                + spec.fewshot_separator
            )
        context += fill(spec.prompt, e.fields, e.where)
        choices, right = _choices(spec, e)
        spans.append((len(requests), len(choices), right))
        requests += [(context, _choice_text(spec, e, c)) for c in choices]
    with _bar(len(requests), spec.name, progress) as bar:
        scores = backend.loglikelihood(requests, batch_size=batch_size, progress=bar.update)
    correct = correct_norm = 0
    samples: list[dict[str, Any]] = []
    for (start, n, right), _entry in zip(spans, scored):
        ll = [scores[start + j][0] for j in range(n)]
        per_byte = [ll[j] / max(len(requests[start + j][1].encode("utf-8")), 1) for j in range(n)]
        pick, pick_norm = _argmax(ll), _argmax(per_byte)
        correct += pick == right
        correct_norm += pick_norm == right
        if len(samples) < SAMPLES_KEPT:
            samples.append(
                {
                    "prompt": requests[start][0],
                    "choices": [requests[start + j][1] for j in range(n)],
                    "loglikelihoods": ll,
                    "answer": right,
                    "picked": pick,
                    "correct": pick == right,
                }
            )
    n = len(scored)
    metrics = {"accuracy": correct / n, "accuracy_norm": correct_norm / n}
    metrics["stderr"] = _stderr(metrics[spec.metric], n)
    return TaskResult(
        spec.name, spec.type, spec.metric, metrics[spec.metric], n, metrics, samples=samples
    )


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])  # ties go to the first choice


def _generate(
    backend: Backend,
    spec: TaskSpec,
    scored: list[Example],
    shots_of: list[list[Example]],
    batch_size: int,
    progress: bool,
) -> TaskResult:
    requests = []
    for e, shots in zip(scored, shots_of):
        messages: list[dict[str, str]] = []
        text = ""
        for s in shots:
            q, a = (
                fill(spec.prompt, s.fields, s.where),
                fill(spec.fewshot_answer, s.fields, s.where),
            )
            messages += [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a.strip()},
            ]
            text += q + " " + a.strip() + spec.fewshot_separator
        q = fill(spec.prompt, e.fields, e.where)
        requests.append(
            GenRequest(messages=messages + [{"role": "user", "content": q}], text=text + q)
        )
    with _bar(len(requests), spec.name, progress) as bar:
        replies = backend.generate(
            requests,
            max_tokens=spec.max_tokens,
            stop=spec.stop,
            batch_size=batch_size,
            progress=bar.update,
        )
    correct = 0
    samples: list[dict[str, Any]] = []
    for e, req, reply in zip(scored, requests, replies):
        if spec.extract == "skills":
            from twofiles.data.skills import check

            if e.obj is None:
                raise TwofilesError("extract = 'skills' works only with data = 'skills:...'")
            reference, extracted = str(_field(e, "answer")), None
            ok = check(e.obj, reply)
        else:
            reference = reference_answer(spec.reference, _field(e, spec.target))
            extracted = EXTRACTORS[spec.extract](reply)
            ok = is_match(extracted, reference, spec.extract)
        correct += ok
        if len(samples) < SAMPLES_KEPT:
            prompt = req.messages if backend.is_chat else req.text
            samples.append(
                {
                    "prompt": prompt,
                    "reply": reply,
                    "extracted": extracted,
                    "reference": reference,
                    "correct": bool(ok),
                }
            )
    n = len(scored)
    acc = correct / n
    return TaskResult(
        spec.name,
        spec.type,
        "accuracy",
        acc,
        n,
        {"accuracy": acc, "stderr": _stderr(acc, n)},
        samples=samples,
    )


def evaluate(
    backend: Backend,
    tasks: Sequence[str | TaskSpec],
    *,
    limit: int | None = None,
    shots: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list[TaskResult]:
    """Run several tasks (built-in names, spec paths or specs) in order."""
    specs = [
        t if isinstance(t, TaskSpec) else load_spec(t) for t in tasks
    ]  # every spec checked before any model time is spent
    return [
        run_task(
            backend,
            s,
            limit=limit,
            shots=shots,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        for s in specs
    ]


def format_results(results: Sequence[TaskResult], model: str = "") -> str:
    """The results as a Markdown table."""
    lines = [
        f"| task | metric | {model or 'value'} | ± | n | shots | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        err = r.metrics.get("stderr")
        pm = f"{err:.3f}" if err is not None and math.isfinite(err) else ""
        lines.append(
            f"| {r.task} | {r.metric} | {r.value:.4f} | {pm} | {r.n} | {r.shots} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def summary(results: Sequence[TaskResult]) -> dict[str, dict[str, Any]]:
    """Per task: the main metric under its own name and as `value`, plus `accuracy` where the task
    has one (the --json contract)."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        d: dict[str, Any] = {
            "metric": r.metric,
            "value": r.value,
            "n": r.n,
            "shots": r.shots,
            "seconds": round(r.seconds, 3),
        }
        d.update({k: v for k, v in r.metrics.items()})
        out[r.task] = d
    return out
