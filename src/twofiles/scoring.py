"""Reward models: the file, the scalar head, and scoring replies with them.

A reward model is a Transformer whose language-model head gives way to a scalar head: `score`, a
Linear(dim, 1) without bias, read from the final-norm hidden state at the last token of prompt +
reply (for a chat model the reply's end-of-turn token). It is the layout of Hugging Face's
`LlamaForSequenceClassification` with one label, so the names map 1:1 (`model.*`, `score.weight`).

What it owns:

- `RewardModel`: backbone + head; one forward over right-padded rows gives one reward per row (a
  causal model's real tokens never see the padding after them, so no mask is needed);
- the reward file (`reward.safetensors`): the parameters file's layout (artifact.py) with its own
  format, "twofiles-reward", `score.weight` beside the weights and a "reward" metadata field (how
  replies are rendered: "chat" or "plain"); self-contained like a model file (config, tokenizer,
  chat template, provenance), and refused by name where a model is expected;
- rendering (prompt, reply) exactly as training rendered the pairs (ChatFormat.render through the
  reply's end-of-turn token, or the plain-text form of data/preferences.py);
- `RewardScorer` (`score(prompt, reply)`, `score_batch`) and `load_reward_scorer(path)`: what
  `chat --scorer`, `arena battle --judge` and `pairs --judge` take as `reward:PATH`.

What it leaves to others: training (train/reward.py), the model math (model.py), device choice
(runtime), the judges and best-of-N that use a scorer (arena/judges.py, system2.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from twofiles.errors import BadInputError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.chat import ChatFormat, Message
    from twofiles.model import Transformer
    from twofiles.tokenizer import Tokenizer

REWARD_FORMAT = "twofiles-reward"
HEAD = "score.weight"
SPEC_PREFIX = "reward:"  # how a verb's flag names a reward model: reward:PATH
Form = Literal["chat", "plain"]  # chat: ChatFormat.render; plain: text pairs for base models
HEAD_INIT_STD = 0.02  # Hugging Face's initializer_range for a fresh LlamaForSequenceClassification


class RewardModel(nn.Module):
    """A Transformer backbone and a scalar head on its last token."""

    def __init__(self, backbone: Transformer, *, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        w = backbone.model.embed_tokens.weight
        self.score = nn.Linear(backbone.config.dim, 1, bias=False, device=w.device, dtype=w.dtype)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(
                torch.randn(self.score.weight.shape, generator=g) * HEAD_INIT_STD
            )

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards [B] (fp32) of right-padded rows idx [B, T], each read at its token
        lengths[b] - 1."""
        h = self.backbone.hidden_states(idx)  # [B, T, dim]
        last = h[torch.arange(idx.shape[0], device=idx.device), lengths - 1]  # [B, dim]
        return self.score(last).squeeze(-1).float()


def pad_rows(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T] right-padded with pad_id, lengths [B])."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every row needs at least one token")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids.to(device), lengths.to(device)


# ----------------------------------------------------------------------------------- the file


def save_reward_model(
    path: str | os.PathLike[str],
    reward_model: RewardModel,
    tokenizer: Tokenizer,
    *,
    form: Form,
    chat_template: str = "",
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the reward model (plain weights: merge LoRA adapters first) to one file, atomically."""
    from twofiles.artifact import save_model
    from twofiles.lora import lora_layers

    if lora_layers(reward_model.backbone):
        raise ValueError("merge the LoRA adapters before saving a reward model")
    return save_model(
        path,
        reward_model.backbone,
        tokenizer,
        provenance=provenance,
        chat_template=chat_template,
        format=REWARD_FORMAT,
        extra={HEAD: reward_model.score.weight},
        metadata={"reward": json.dumps({"form": form})},
    )


def load_reward_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[RewardModel, LoadedModel, Form]:
    """The reward model of a reward file (eval mode, on `device`), its LoadedModel (tokenizer, chat
    template, provenance) and the form its replies are rendered in."""
    from twofiles.artifact import FORMAT, load_model
    from twofiles.paths import read_metadata

    path = str(path)
    if not os.path.isfile(path):
        raise BadInputError("no such reward model file", path=path)
    meta = read_metadata(path)
    if meta.get("format") == FORMAT:
        raise BadInputError(
            "a model, not a reward model (it has no score head): train one with "
            "`twofiles reward MODEL --data PAIRS`",
            path=path,
        )
    loaded = load_model(path, device="cpu", format=REWARD_FORMAT, extra=(HEAD,))
    try:
        form = json.loads(meta.get("reward", "{}")).get("form", "chat")
    except (json.JSONDecodeError, AttributeError):
        form = None
    if form not in ("chat", "plain"):
        raise BadInputError("metadata field 'reward' is invalid (form: chat or plain)", path=path)
    head = loaded.extra[HEAD]
    dim = loaded.model.config.dim
    if tuple(head.shape) != (1, dim):
        raise BadInputError(f"{HEAD} has shape {tuple(head.shape)}, not (1, {dim})", path=path)
    rm = RewardModel(loaded.model)
    with torch.no_grad():
        rm.score.weight.copy_(head.to(rm.score.weight.dtype))
    rm.to(device).eval()
    return rm, loaded, form


# ---------------------------------------------------------------------------------- rendering


def render_scored(
    fmt: ChatFormat, prompt: str | Sequence[Message], reply: str, form: Form
) -> list[int]:
    """The ids the head reads: prompt + reply, through the reply's end (its end-of-turn token, or
    the eos in the plain form), rendered as training rendered preference pairs. A text prompt is
    one user message for a chat reward model."""
    from twofiles.chat import Message

    tok = fmt.tokenizer
    if form == "plain":
        if not isinstance(prompt, str):
            raise BadInputError(
                "this reward model was trained on plain-text pairs: the prompt must be text"
            )
        return [tok.bos_id] * tok.add_bos + tok.encode(prompt) + tok.encode(reply) + tok.eos_ids[:1]
    msgs = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
    ids, mask = fmt.render([*msgs, Message(role="assistant", content=reply)])
    learned = [i for i, m in enumerate(mask) if m]
    return ids[: learned[-1] + 1] if learned else ids


@dataclass
class RewardScorer:
    """Scores replies with a reward model: higher is better. `score(prompt, reply)` is the shape
    arena.judges.ScoreJudge takes; `for_prompt(prompt)` the reply -> score shape of system2."""

    model: RewardModel
    fmt: ChatFormat
    form: Form = "chat"
    batch_size: int = 16  # rows per forward
    path: str = ""

    @property
    def name(self) -> str:
        return f"{SPEC_PREFIX}{self.path}"

    def score(self, prompt: str | Sequence[Message], reply: str) -> float:
        return self.score_batch([prompt], [reply])[0]

    @torch.no_grad()
    def score_batch(
        self, prompts: Sequence[str | Sequence[Message]], replies: Sequence[str]
    ) -> list[float]:
        if len(prompts) != len(replies):
            raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
        limit = self.model.backbone.config.max_seq_len
        # the head reads the last token: a row too long keeps its end
        seqs = [render_scored(self.fmt, p, r, self.form)[-limit:] for p, r in zip(prompts, replies)]
        tok = self.fmt.tokenizer
        pad_id = tok.special_ids.get("<|pad|>", tok.bos_id)
        device = self.model.score.weight.device
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together
        out = [0.0] * len(seqs)
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, lengths = pad_rows([seqs[i] for i in chunk], pad_id, device)
            for i, r in zip(chunk, self.model(ids, lengths).tolist()):
                out[i] = float(r)
        return out

    def for_prompt(self, prompt: str | Sequence[Message]) -> Callable[[str], float]:
        return lambda reply: self.score(prompt, reply)


def load_reward_scorer(
    path: str | os.PathLike[str], *, device: str | torch.device = "auto", batch_size: int = 16
) -> RewardScorer:
    """A RewardScorer for a reward file, on the device runtime picks (`auto`: a GPU if there is
    one)."""
    from twofiles.chat import ChatFormat
    from twofiles.runtime import pick_device

    dev = pick_device(device)[0] if isinstance(device, str) else device
    rm, loaded, form = load_reward_model(path, device=dev)
    return RewardScorer(rm, ChatFormat.for_model(loaded), form, batch_size, str(path))


def reward_path(spec: str, flag: str) -> str:
    """PATH of a `reward:PATH` flag value, or BadInputError naming the flag."""
    if not spec.startswith(SPEC_PREFIX) or not spec[len(SPEC_PREFIX) :]:
        raise BadInputError(f"{flag} {spec}: expected reward:PATH (a reward.safetensors file)")
    return spec[len(SPEC_PREFIX) :]


__all__ = [
    "HEAD",
    "REWARD_FORMAT",
    "SPEC_PREFIX",
    "RewardModel",
    "RewardScorer",
    "load_reward_model",
    "load_reward_scorer",
    "pad_rows",
    "render_scored",
    "reward_path",
    "save_reward_model",
]
