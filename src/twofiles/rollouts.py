"""Verifiable tasks and rollouts: prompts whose answers a program can check, and many sampled
replies to each, with the calculator called inside a reply and the verifier's verdict on its end.

What it owns: `VerifiableTask` (a prompt as chat messages and as plain text, the answer, a
verifier, its split) and `load_tasks` for `--tasks` names:

    arithmetic        easy one-step sums and differences of small numbers, generated here, split
                      train/held-out by a stable hash of the expression (as data/skills.py does)
    skills[:K,K...]   the built-in skill tasks (data.skills), every kind but chat and identity
    gsm8k, NAME.toml  any eval task file of type generate (eval/tasks): its prompt, its
                      extractor and reference; a fixed train/held-out split by a stable hash

and `sample_rollouts`: for each task a group of G samples, all G x P rows decoded together by the
one batched decoder (decoder.BatchDecoder; identical prompts prefill once), round by round: a
reply that calls a tool (the calculator) gets the result and the model continues, for at most
`max_rounds` replies. Each rollout keeps the exact token ids the model sampled (never re-encoded
from text), the inserted tool-result and template ids between them (mask 0), the sampler's
log-probability of each sampled token, the final reply, the tool calls, and the reward: 1.0 when
the verifier accepts the final reply, else 0.0.

What it leaves to others: the decoder and sampling math (decoder.py, engine.py), chat rendering
and tool-call parsing (chat), the tools (tools), the tasks' data and checkers (data.skills,
eval.tasks, eval.extract), training on rollouts (train/rl.py). `label_pairs` turns groups of
scored rollouts into preference pairs (TRL's conversational form) for `twofiles pairs`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch

from twofiles.errors import BadInputError

if TYPE_CHECKING:
    from twofiles.chat import ChatFormat, Message
    from twofiles.engine import SamplingParams, TokenizerLike
    from twofiles.model import Transformer

Split = Literal["train", "val"]
HELD_OUT_PERCENT = 20  # of an eval task file's examples (and of the arithmetic set), held out
ARITHMETIC_MAX = 30  # operands of the built-in easy arithmetic: 0..30, + and -
ARITHMETIC_TEMPLATES = ("What is {e}?", "Compute {e}.", "{e} = ?", "Calculate {e}.")
TOOLS_MAX_ROUNDS = 3  # replies per rollout: a tool call, its result, the answer (and one spare)


@dataclass(frozen=True)
class VerifiableTask:
    """One prompt whose reply a program can check."""

    id: str  # stable identity, e.g. "arithmetic:3 + 4" (its split is a hash of it)
    source: str  # the --tasks name it came from
    prompt: str  # the user's message (chat models)
    plain: str  # the prompt for a model without a chat template
    answer: str  # the reference answer, as the verifier compares it
    verify: Callable[[str], bool] = field(compare=False, repr=False)  # final reply -> correct?
    split: Split = "train"
    stop: tuple[str, ...] = ()  # stop strings for plain prompts

    def messages(self) -> list[Message]:
        from twofiles.chat import Message

        return [Message(role="user", content=self.prompt)]


def _split_of(key: str) -> Split:
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return "val" if h % 100 < HELD_OUT_PERCENT else "train"


def _last_number_is(answer: str) -> Callable[[str], bool]:
    from twofiles.data.skills import last_number

    return lambda reply: last_number(reply) == answer


def arithmetic_tasks(split: Split) -> list[VerifiableTask]:
    """Every `a + b` and `a - b` with 0 <= a, b <= ARITHMETIC_MAX whose hash falls in `split`, in
    a fixed order; the answer is the reply's last number."""
    out = []
    for a in range(ARITHMETIC_MAX + 1):
        for b in range(ARITHMETIC_MAX + 1):
            for op in "+-":
                e = f"{a} {op} {b}"
                key = f"arithmetic:{e}"
                if _split_of(key) != split:
                    continue
                v = str(a + b if op == "+" else a - b)
                template = ARITHMETIC_TEMPLATES[(a * 31 + b) % len(ARITHMETIC_TEMPLATES)]
                q = template.format(e=e)
                out.append(
                    VerifiableTask(
                        key,
                        "arithmetic",
                        q,
                        f"Question: {q}\nAnswer:",
                        v,
                        _last_number_is(v),
                        split,
                        ("\n",),
                    )
                )
    return out


def skill_tasks(split: Split, kinds: Sequence[str], per_kind: int) -> list[VerifiableTask]:
    """The built-in skill tasks (data.skills) of the given kinds, interleaved kind by kind."""
    from twofiles.data import skills

    per = {k: skills.skill_tasks(k, split, per_kind, seed=0) for k in kinds}
    out = []
    for i in range(per_kind):
        for kind, tasks in per.items():
            t = tasks[i]
            out.append(
                VerifiableTask(
                    f"skills:{kind}:{t.prompt}",
                    f"skills:{kind}",
                    t.prompt,
                    f"Question: {t.prompt}\nAnswer:",
                    t.answer,
                    partial(skills.check, t),
                    split,
                    ("\n",),
                )
            )
    return out


def _extract_match(extractor: str, reference: str, reply: str) -> bool:
    from twofiles.eval.extract import EXTRACTORS, is_match

    return is_match(EXTRACTORS[extractor](reply), reference, extractor)


def eval_file_tasks(name: str, split: Split) -> list[VerifiableTask]:
    """The examples of an eval task file of type generate, in file order, with its extractor."""
    from twofiles.eval.extract import EXTRACTORS, reference_answer
    from twofiles.eval.tasks import fill, load_examples, load_spec

    spec = load_spec(name)
    if spec.type != "generate" or spec.extract not in EXTRACTORS:
        raise BadInputError(
            f"--tasks {name}: RL needs a generative task with a program-checked answer "
            f"(type = generate, extract one of {', '.join(EXTRACTORS)}), not type={spec.type!r} "
            f"extract={spec.extract!r}"
        )
    out = []
    for ex in load_examples(spec):
        if spec.target not in ex.fields:
            raise BadInputError(f"{spec.target}: missing", path=ex.where)
        q = fill(spec.prompt, ex.fields, ex.where)
        key = f"{spec.name}:{q}"
        if _split_of(key) != split:
            continue
        ref = reference_answer(spec.reference, ex.fields[spec.target])
        user = str(ex.fields.get("question", q))
        out.append(
            VerifiableTask(
                key,
                spec.name,
                user,
                q,
                ref,
                partial(_extract_match, spec.extract, ref),
                split,
                tuple(spec.stop),
            )
        )
    return out


def load_tasks(
    names: str | Sequence[str], split: Split, *, per_kind: int = 200
) -> list[VerifiableTask]:
    """The tasks of every name in `names` (comma-separated or a list), for one split; kinds and
    sources interleaved so a prefix of the list covers all of them. `per_kind` bounds each skill
    kind."""
    from twofiles.data.skills import SKILL_KINDS

    if isinstance(names, str):
        names = split_task_names(names)
    if not names:
        raise BadInputError("--tasks: name at least one task (arithmetic, skills, gsm8k, ...)")
    lists: list[list[VerifiableTask]] = []
    for name in names:
        if name == "arithmetic":
            lists.append(arithmetic_tasks(split))
        elif name == "skills" or name.startswith("skills:"):
            kinds = [k for k in name.partition(":")[2].split(",") if k] or [
                k for k in SKILL_KINDS if k not in ("chat", "identity")
            ]
            for k in kinds:
                if k not in SKILL_KINDS:
                    raise BadInputError(
                        f"--tasks {name}: unknown skill kind {k!r}; choose from "
                        f"{', '.join(SKILL_KINDS)}"
                    )
            lists.append(skill_tasks(split, kinds, per_kind))
        else:
            lists.append(eval_file_tasks(name, split))
    out: list[VerifiableTask] = []
    for i in range(max(len(tl) for tl in lists)):
        out.extend(tl[i] for tl in lists if i < len(tl))
    if not out:
        raise BadInputError(f"--tasks {','.join(names)}: no {split} task")
    return out


def split_task_names(value: str) -> list[str]:
    """`--tasks` as names: commas separate names, except inside `skills:K,K` (kinds)."""
    out: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if out and out[-1].startswith("skills:") and re.fullmatch(r"[a-z_]+", part):
            from twofiles.data.skills import SKILL_KINDS

            if part in SKILL_KINDS:
                out[-1] += "," + part
                continue
        out.append(part)
    return out


# ------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One sampled reply to a task, possibly over several rounds with tool results between."""

    task: VerifiableTask
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # every id after the prompt, in order
    mask: list[int] = field(default_factory=list)  # 1: the model sampled it; 0: inserted
    logprobs: list[float] = field(default_factory=list)  # the sampler's, per id (0.0 if mask 0)
    messages: list[Message] = field(default_factory=list)  # assistant and tool messages
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # name, arguments, result
    reply: str = ""  # the final reply's text (what the verifier reads)
    finish: str = ""  # the last round's: "stop" or "length"
    correct: bool = False
    reward: float = 0.0

    @property
    def n_model_tokens(self) -> int:
        return sum(self.mask)


def _decode(
    model: Transformer,
    tokenizer: TokenizerLike | None,
    prompts: Sequence[list[int]],
    params: Sequence[SamplingParams],
    max_rows: int,
) -> list[tuple[list[int], list[float], str, str]]:
    """(tokens, their log-probabilities under the model at temperature 1, text, finish) per
    prompt, through the one batched decoder: at most `max_rows` rows at once, a finished row's
    slot taken by the next prompt."""
    from twofiles.decoder import BatchDecoder, DecodeRow

    rows = [
        DecodeRow(list(p), sp, key=i, logprobs=0) for i, (p, sp) in enumerate(zip(prompts, params))
    ]
    logps: list[list[float]] = [[] for _ in rows]
    context = min(
        model.config.max_seq_len, max(len(p) for p in prompts) + max(p.max_tokens for p in params)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = BatchDecoder(
                model, tokenizer, max_rows=min(max_rows, len(rows)), context=context
            )
            waiting = list(rows)
            while waiting or decoder.rows:
                got = []
                if waiting and decoder.free_slots:
                    k = decoder.free_slots
                    got += decoder.admit(waiting[:k])
                    waiting = waiting[k:]
                got += decoder.step()
                for d in got:
                    logps[d.row.key].append(float(d.logprob))  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    return [(r.tokens, lp, r.text, r.finish or "length") for r, lp in zip(rows, logps)]


def _continuation(
    fmt: ChatFormat, history: list[Message], n_before: int, closed: bool
) -> list[int] | None:
    """The template's ids from the end of the last assistant message through the next
    generation prompt (tool results included), or None when the template renders the earlier
    conversation differently once more follows (then a rollout cannot keep its sampled ids).
    `history` ends with the assistant message and its tool results; `n_before` messages precede
    the assistant message. A message the token limit cut (not `closed` by its end-of-turn
    token) gets the template's end-of-turn token first, as an inserted id."""
    asst_ids, mask = fmt.render(history[: n_before + 1])
    end = max(i for i, m in enumerate(mask) if m) + 1  # through the end-of-turn token
    full = fmt.prompt_ids(history)
    if full[:end] != asst_ids[:end]:
        return None
    return full[end if closed else end - 1 :]


def sample_rollouts(
    model: Transformer,
    tokenizer: Any,
    fmt: ChatFormat | None,
    tasks: Sequence[VerifiableTask],
    params: SamplingParams,
    *,
    group: int = 1,
    max_rounds: int = TOOLS_MAX_ROUNDS,
    max_rows: int = 64,
    seed: int = 0,
) -> list[Rollout]:
    """`group` rollouts of each task (task-major: rollouts[i * group + j] is task i's j-th), all
    decoded together round by round. Sampled rollouts are seeded: member j of a task's group
    draws from its own generator seeded from (seed, task id, j, round), so its tokens do not
    depend on what else is in the batch.
    With `fmt` None (a model without a chat template) the prompt is the task's plain text, stop
    strings are the task's and no tool is called. A prompt that leaves no room in the model's
    context gives an empty rollout (reward 0, finish "length")."""
    from twofiles.chat import Message
    from twofiles.tools import run_tool
    from twofiles.tools.calculator import Calculator

    tools = {"calculator": Calculator()}
    outs: list[Rollout] = []
    histories: list[list[Message]] = []
    for t in tasks:
        if fmt is not None:
            prompt = fmt.prompt_ids(t.messages())
        else:
            prompt = [tokenizer.bos_id] * getattr(tokenizer, "add_bos", 1) + tokenizer.encode(
                t.plain
            )
        for _ in range(group):
            outs.append(Rollout(t, prompt))
            histories.append(t.messages())
    stop_ids = list(fmt.stop_token_ids) if fmt is not None else []
    active = [k for k, r in enumerate(outs) if len(r.prompt_ids) < model.config.max_seq_len]
    for r in outs:
        r.finish = "length"
    for round_ in range(max_rounds if fmt is not None else 1):
        if not active:
            break
        room = [
            model.config.max_seq_len - len(outs[k].prompt_ids) - len(outs[k].ids) for k in active
        ]
        active = [k for k, n in zip(active, room) if n > 0]
        if not active:
            break
        per_row = []
        for k in active:
            r = outs[k]
            p = replace(
                params,
                stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *stop_ids])),
                stop=list(params.stop)
                if fmt is not None
                else list(dict.fromkeys([*params.stop, *r.task.stop])),
                seed=None
                if params.temperature == 0
                else _row_seed(seed, r.task.id, k % group, round_),
            )
            per_row.append(p)
        results = _decode(
            model, tokenizer, [outs[k].prompt_ids + outs[k].ids for k in active], per_row, max_rows
        )
        still = []
        for k, (tokens, logps, text, finish) in zip(active, results):
            r = outs[k]
            r.ids += tokens
            r.mask += [1] * len(tokens)
            r.logprobs += logps
            r.finish = finish
            if fmt is None:
                r.reply = text
                r.messages = [Message(role="assistant", content=text)]
                continue
            body = [t for t in tokens if t not in stop_ids]
            msg = fmt.parse_assistant(tokenizer.decode(body))
            n_before = len(histories[k])
            histories[k].append(msg)
            r.messages.append(msg)
            r.reply = msg.content
            # a call cut off by the token limit is still run (parse_assistant reads it), as an
            # agent would run it
            if not msg.tool_calls or round_ == max_rounds - 1:
                continue
            for call in msg.tool_calls:
                result = run_tool(tools, call.name, call.arguments)
                r.tool_calls.append(
                    {"name": call.name, "arguments": call.arguments, "result": result.content}
                )
                tool_msg = Message(
                    role="tool", content=result.content, tool_call_id=call.id, name=call.name
                )
                histories[k].append(tool_msg)
                r.messages.append(tool_msg)
            closed = bool(tokens) and tokens[-1] in stop_ids
            cont = _continuation(fmt, histories[k], n_before, closed)
            if cont is None:  # the template re-renders the past: the rollout ends here
                continue
            r.ids += cont
            r.mask += [0] * len(cont)
            r.logprobs += [0.0] * len(cont)
            still.append(k)
        active = still
    for r in outs:
        r.correct = bool(r.ids) and r.task.verify(r.reply)
        r.reward = float(r.correct)
    return outs


# ---------------------------------------------------------------------------------------- pairs

# A judge scores replies to prompts: (user prompts, final replies) -> one score each, higher is
# better. The verifier's is 1.0 or 0.0; a reward model's (scoring.load_reward_scorer(...)
# .score_batch) is any real number.
Judge = Callable[[list[str], list[str]], list[float]]

# Why a prompt gave fewer pairs than asked, in the order reports list them.
PAIR_SKIP_REASONS: tuple[str, ...] = (
    "all_correct",
    "all_wrong",
    "tied",
    "identical",
    "empty",
    "prompt_too_long",
)


def verifier_judge(tasks: Sequence[VerifiableTask]) -> Judge:
    """The tasks' own verifiers as a judge: 1.0 for a reply its task accepts, else 0.0."""
    by_prompt = {t.prompt: t for t in tasks}
    by_prompt.update({t.plain: t for t in tasks if t.plain})

    def judge(prompts: list[str], replies: list[str]) -> list[float]:
        return [float(by_prompt[p].verify(r)) for p, r in zip(prompts, replies)]

    return judge


def _completion(r: Rollout, conversational: bool) -> Any:
    if not conversational:
        return r.reply
    return [m.to_dict() for m in r.messages]


def _empty(r: Rollout) -> bool:
    return not r.ids or not any(m.content.strip() or m.tool_calls for m in r.messages)


def label_pairs(
    rollouts: Sequence[Rollout],
    group: int,
    scores: Sequence[float],
    *,
    pairs_per_prompt: int = 1,
    verifier: bool = True,
    conversational: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference pairs from groups of scored rollouts (task-major, `group` per task): chosen
    from the best-scored replies, rejected from the worst, distinct replies paired first (the
    best against the worst), at most `pairs_per_prompt` per prompt and never more than the
    distinct replies allow. Nothing is dropped silently: a prompt without a pair is counted by
    reason (all right, all wrong, all tied, fewer than two non-empty replies, identical sides)."""
    skipped = dict.fromkeys(PAIR_SKIP_REASONS, 0)
    out: list[dict[str, Any]] = []
    for i in range(0, len(rollouts), group):
        rs, sc = list(rollouts[i : i + group]), list(scores[i : i + group])
        task = rs[0].task
        usable = [(s, r) for s, r in zip(sc, rs) if not _empty(r)]
        if len(usable) < len(rs) and len(usable) < 2:
            skipped["empty"] += 1
            continue
        hi, lo = max(s for s, _ in usable), min(s for s, _ in usable)
        if hi == lo:
            key = "tied" if not verifier else "all_correct" if hi > 0 else "all_wrong"
            skipped[key] += 1
            continue
        # distinct replies, best first among the chosen and worst first among the rejected;
        # shorter replies first among equals (a concise right answer, a concise wrong one)
        seen: set[str] = set()
        chosen: list[Rollout] = []
        rejected: list[Rollout] = []
        for s, r in sorted(usable, key=lambda x: (-x[0], len(x[1].ids))):
            text = json.dumps(_completion(r, conversational), sort_keys=True)
            if text in seen:
                continue
            seen.add(text)
            (chosen if s == hi else rejected if s == lo else []).append(r)
        rejected.sort(key=lambda r: len(r.ids))
        # each pair brings at least one reply no earlier pair of this prompt had
        for k in range(min(pairs_per_prompt, max(len(chosen), len(rejected)))):
            c, rj = chosen[k % len(chosen)], rejected[k % len(rejected)]
            cc, rc = _completion(c, conversational), _completion(rj, conversational)
            if cc == rc:  # a judge that scored the same reply two ways
                skipped["identical"] += 1
                continue
            prompt: Any = [m.to_dict() for m in task.messages()] if conversational else task.plain
            out.append(
                {
                    "prompt": prompt,
                    "chosen": cc,
                    "rejected": rc,
                    "task": task.id,
                    "answer": task.answer,
                    "score_chosen": sc[rs.index(c)],
                    "score_rejected": sc[rs.index(rj)],
                }
            )
    return out, skipped


def _row_seed(seed: int, task: str, j: int, round_: int) -> int:
    # one stream per (call seed, task, member of its group, round): stable across processes,
    # batch shapes and whatever else is sampled with it
    h = hashlib.sha256(f"{seed}/{task}/{j}/{round_}".encode()).digest()
    return int.from_bytes(h[:6], "little")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    p = 1.0
    for i in range(n - c + 1, n + 1):
        p *= 1.0 - k / i
    return 1.0 - p


def shuffled(items: Sequence[Any], seed: int, epoch: int) -> list[Any]:
    """`items` in the order of one epoch: the same for the same (seed, epoch)."""
    out = list(items)
    random.Random(f"rollouts/{seed}/{epoch}").shuffle(out)
    return out


__all__ = [
    "ARITHMETIC_MAX",
    "HELD_OUT_PERCENT",
    "PAIR_SKIP_REASONS",
    "Judge",
    "Rollout",
    "VerifiableTask",
    "arithmetic_tasks",
    "eval_file_tasks",
    "label_pairs",
    "load_tasks",
    "pass_at_k",
    "sample_rollouts",
    "shuffled",
    "skill_tasks",
    "split_task_names",
    "verifier_judge",
]
