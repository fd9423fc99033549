"""Preference pairs: reading them, validating them, and rendering them into token ids.

What it owns: preference JSONL in the ecosystem's (TRL's) forms, one pair per line:

    standard         {"prompt": str, "chosen": str, "rejected": str}
    conversational   {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}
                     (`messages` is accepted for `prompt`: `twofiles feedback export` writes it)
    implicit prompt  {"chosen": [messages], "rejected": [messages]}: two whole conversations; the
                     messages they share from the start are the prompt

and rendering each pair into prompt ids + chosen ids + rejected ids. Conversational pairs go
through ChatFormat.render, the renderer SFT uses, so a completion's ids are exactly the tokens
SFT's loss mask would select for that reply (through its end-of-turn token). A conversational
completion may hold tool calls and their results (assistant, tool, ..., assistant: what
`twofiles pairs` writes when the calculator was called); its mask then marks the tokens the model
wrote, and the tool results between them are context, never learned. Standard pairs are
plain text for base models: `[bos] + prompt` (bos when the tokenizer adds one), then the
completion's text and the first eos id.

Pairs that teach nothing are skipped and counted by reason (`SKIP_REASONS`), never silently: the
same reply on both sides, an empty side (a reply with no text or tool call, or a conversational
prompt with no messages), a prompt longer than `max_prompt_len`. A completion that
does not fit `max_len` after its prompt is cut to fit (counted as "truncated", still used), and
a pair whose cut sides become equal is skipped as "identical".

What it leaves to others: the messages themselves (twofiles.chat.parse_messages), the loss and
the log-probs (train/preference.py), the training loop.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from twofiles.chat import ChatFormat, Message, parse_messages
from twofiles.errors import BadInputError
from twofiles.paths import read_jsonl
from twofiles.tokenizer import Tokenizer

# Why a pair was left out (or, "truncated", cut but kept), in the order reports list them.
SKIP_REASONS: tuple[str, ...] = ("identical", "empty", "prompt_too_long")


@dataclass(frozen=True)
class PreferencePair:
    """One validated line: plain text (all three sides str) or messages (all three lists)."""

    prompt: str | list[Message]
    chosen: str | list[Message]
    rejected: str | list[Message]
    where: str = field(default="", compare=False)  # file:line, for messages about this pair

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True)
class RenderedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the chosen completion, after prompt_ids
    rejected_ids: list[int]  # the rejected completion, after prompt_ids
    # 1 = a token the model wrote (learned), 0 = context inside the completion (a tool's result);
    # None: every token is the model's
    chosen_mask: list[int] | None = None
    rejected_mask: list[int] | None = None


@dataclass
class RenderReport:
    skipped: Counter[str]  # reason (SKIP_REASONS) -> pairs left out
    truncated: int = 0  # pairs kept with a completion cut to fit max_len

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


# ---------------------------------------------------------------------------------------------
# Reading


def _side(obj: dict, key: str, *, assistant_only: bool) -> str | list[Message]:
    value = obj[key]
    if isinstance(value, str):
        return value
    msgs = parse_messages(value, where=key)
    if assistant_only:
        for i, m in enumerate(msgs):
            if m.role not in ("assistant", "tool"):
                raise BadInputError(
                    f"{key}[{i}].role: a completion holds assistant messages (and the results of "
                    f"their tool calls) only (got {m.role!r})"
                )
        for i in (0, len(msgs) - 1) if msgs else ():
            if msgs[i].role != "assistant":
                raise BadInputError(
                    f"{key}[{i}].role: a completion starts and ends with an assistant message "
                    f"(got {msgs[i].role!r})"
                )
    return msgs


def parse_pair(obj: object, *, where: str = "pair") -> PreferencePair:
    """One JSON object -> a PreferencePair, or BadInputError naming the field at fault."""
    if not isinstance(obj, dict):
        raise BadInputError(f"expected an object, got {type(obj).__name__}")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise BadInputError(f"{key}: missing")
    prompt_key = "prompt" if "prompt" in obj else "messages" if "messages" in obj else None
    if prompt_key is None:  # implicit prompt: two whole conversations
        chosen, rejected = (
            _side(obj, "chosen", assistant_only=False),
            _side(obj, "rejected", assistant_only=False),
        )
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise BadInputError(
                "prompt: missing (plain-text pairs need a prompt; only conversations carry it inside)"
            )
        k = 0  # as TRL's extract_prompt: the messages both share from the start
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        return PreferencePair(chosen[:k], chosen[k:], rejected[k:], where)
    prompt = obj[prompt_key]
    if isinstance(prompt, str):
        for key in ("chosen", "rejected"):
            if not isinstance(obj[key], str):
                raise BadInputError(
                    f"{key}: must be a string like the prompt (got {type(obj[key]).__name__})"
                )
        return PreferencePair(prompt, obj["chosen"], obj["rejected"], where)
    msgs = parse_messages(prompt, where=prompt_key)
    sides = []
    for key in ("chosen", "rejected"):
        if not isinstance(obj[key], list):
            raise BadInputError(
                f"{key}: must be a list of assistant messages like the prompt's messages "
                f"(got {type(obj[key]).__name__})"
            )
        sides.append(_side(obj, key, assistant_only=True))
    return PreferencePair(msgs, sides[0], sides[1], where)


def read_preferences(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """Pairs from a JSONL file, one per line (blank lines skipped). Errors name file:line and the
    field, e.g. `prefs.jsonl:3: chosen[0].role: ...`."""
    path = str(path)
    out: list[PreferencePair] = []
    for lineno, obj in read_jsonl(path, "preferences file"):
        try:
            out.append(parse_pair(obj, where=f"{path}:{lineno}"))
        except BadInputError as e:
            raise BadInputError(str(e), path=path, line=lineno) from None
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _empty(side: str | list[Message]) -> bool:
    if isinstance(side, str):
        return not side.strip()
    return not any(m.content.strip() or m.tool_calls for m in side)


def _completion(
    fmt: ChatFormat, pair: PreferencePair, prompt_ids: list[int], side: list[Message]
) -> tuple[list[int], list[int] | None]:
    """The ids of `side` after the prompt's, through the last token SFT's loss mask selects, and
    that mask over them (None when every token is learned)."""
    assert isinstance(pair.prompt, list)
    ids, mask = fmt.render([*pair.prompt, *side])
    if ids[: len(prompt_ids)] != prompt_ids:
        raise BadInputError(
            "the chat template renders the prompt differently when a reply follows it"
        )
    # the prompt may hold assistant turns of its own (a tool call before the tool's result):
    # only the tokens after it are the completion's
    learned = [i for i, m in enumerate(mask) if m and i >= len(prompt_ids)]
    if not learned or learned[0] != len(prompt_ids):
        raise BadInputError(
            "the completion does not render as assistant tokens right after the prompt"
        )
    end = learned[-1] + 1
    completion_mask = [int(m) for m in mask[len(prompt_ids) : end]]
    return ids[len(prompt_ids) : end], None if all(completion_mask) else completion_mask


def _plain(tok: Tokenizer, pair: PreferencePair) -> tuple[list[int], list[int], list[int]]:
    assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str)
    assert isinstance(pair.rejected, str)
    prompt = [tok.bos_id] * tok.add_bos + tok.encode(pair.prompt)
    eos = tok.eos_ids[:1]
    return prompt, tok.encode(pair.chosen) + eos, tok.encode(pair.rejected) + eos


def _render(fmt: ChatFormat, pair: PreferencePair) -> RenderedPair:
    if not pair.conversational:
        return RenderedPair(*_plain(fmt.tokenizer, pair))
    assert isinstance(pair.prompt, list)
    assert isinstance(pair.chosen, list) and isinstance(pair.rejected, list)
    prompt = fmt.prompt_ids(pair.prompt)
    chosen, chosen_mask = _completion(fmt, pair, prompt, pair.chosen)
    rejected, rejected_mask = _completion(fmt, pair, prompt, pair.rejected)
    return RenderedPair(prompt, chosen, rejected, chosen_mask, rejected_mask)


def _cut(ids: list[int], mask: list[int] | None, room: int) -> tuple[list[int], list[int] | None]:
    if mask is None:
        return ids[:room], None
    return ids[:room], mask[:room]


def render_pairs(
    pairs: Sequence[PreferencePair],
    fmt: ChatFormat,
    *,
    max_len: int,
    max_prompt_len: int | None = None,
) -> tuple[list[RenderedPair], RenderReport]:
    """Token ids of each usable pair, and what was skipped or cut. `max_len` bounds prompt +
    completion; `max_prompt_len` (default: max_len - 1, so one completion token fits) bounds
    the prompt: a longer one is skipped rather than cut, since cutting it changes the question."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (got {max_len})")
    limit = max_len - 1 if max_prompt_len is None else min(max_prompt_len, max_len - 1)
    out: list[RenderedPair] = []
    report = RenderReport(Counter())
    for pair in pairs:
        if (
            _empty(pair.chosen)
            or _empty(pair.rejected)
            or (pair.conversational and not pair.prompt)
        ):
            report.skipped["empty"] += 1
            continue
        if pair.chosen == pair.rejected:
            report.skipped["identical"] += 1
            continue
        try:
            r = _render(fmt, pair)
        except BadInputError as e:  # name the line the pair came from
            raise BadInputError(str(e), path=pair.where or None) from None
        if len(r.prompt_ids) > limit:
            report.skipped["prompt_too_long"] += 1
            continue
        room = max_len - len(r.prompt_ids)
        if len(r.chosen_ids) > room or len(r.rejected_ids) > room:
            report.truncated += 1
            chosen, chosen_mask = _cut(r.chosen_ids, r.chosen_mask, room)
            rejected, rejected_mask = _cut(r.rejected_ids, r.rejected_mask, room)
            if chosen == rejected:
                report.skipped["identical"] += 1
                continue
            if (chosen_mask is not None and not any(chosen_mask)) or (
                rejected_mask is not None and not any(rejected_mask)
            ):  # cut to context alone: nothing of the model's left to compare
                report.skipped["empty"] += 1
                continue
            r = RenderedPair(r.prompt_ids, chosen, rejected, chosen_mask, rejected_mask)
        out.append(r)
    return out, report
