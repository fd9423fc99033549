"""Residual-stream activations for training a sparse autoencoder, and the model's identity.

What it owns: text -> context windows of the model's tokens (`token_windows`), one hook point's
activations over those windows (`collect`: a no-grad hooked forward that stops after the hook's
block, so a middle layer of a 30-layer model costs half a forward), the shuffling buffer that
feeds training (`ActivationBuffer`, resumable exactly from its position), the normalisation scale
(`activation_scale`), and `model_id` (a hash of the weights an SAE was trained on).

BOS positions are left out everywhere: the residual stream at the first token is an attention sink
whose norm is tens to hundreds of times the others' (smollm2: ~9x at layer 3, ~130x at
layer 15), and it is not a feature of
the text; kept, it would dominate the reconstruction loss and the activation scale.

What it leaves to others: the hooked forward (inspect.hooks), reading and splitting documents
(data.prepare.split_documents), the SAE and its training (sae.model, sae.train).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from twofiles.artifact import weights_sha256
from twofiles.errors import BadInputError
from twofiles.inspect.hooks import activation_at, as_transformer
from twofiles.model import Transformer


def model_id(model: Transformer | Any) -> str:
    """The identity an SAE records (the first 16 hex digits of artifact.weights_sha256), so that
    a dashboard or a steering run can refuse another model's SAE."""
    m = as_transformer(model)
    return weights_sha256(m)[:16]


def token_windows(
    tokenizer: Any, texts: Iterable[str], context: int, *, max_windows: int | None = None
) -> np.ndarray:
    """Windows [N, context] of token ids: documents as [bos] + tokens, run on one after another,
    cut into pieces of context - 1 tokens, each window starting with bos (as SAELens prepends
    it), so every window is a context the model sees in use."""
    if context < 2:
        raise BadInputError(f"--context {context}: a window needs at least 2 tokens")
    bos = tokenizer.bos_id
    stream: list[int] = []
    step = context - 1
    for ids in _encoded(tokenizer, texts):
        stream.append(bos)
        stream.extend(ids)
        if max_windows is not None and len(stream) >= max_windows * step:
            break
    n = len(stream) // step
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        return np.zeros((0, context), dtype=np.int64)
    body = np.asarray(stream[: n * step], dtype=np.int64).reshape(n, step)
    return np.concatenate([np.full((n, 1), bos, dtype=np.int64), body], axis=1)


def _encoded(tokenizer: Any, texts: Iterable[str], batch: int = 16) -> Iterable[list[int]]:
    pending: list[str] = []
    for text in texts:
        pending.append(text)
        if len(pending) == batch:
            yield from tokenizer.encode_batch(pending)
            pending = []
    if pending:
        yield from tokenizer.encode_batch(pending)


def collect(
    model: Transformer | Any,
    windows: torch.Tensor | np.ndarray,
    hook_name: str,
    bos_id: int,
    *,
    batch: int = 8,
) -> torch.Tensor:
    """Activations [n, d] (fp32, on the model's device) at `hook_name` for every non-BOS position
    of `windows` [N, T], in window-major order; the forward of each batch of windows stops at the
    hook (the later blocks cannot change it)."""
    m = as_transformer(model)
    ids = torch.as_tensor(windows)
    device = m.rope_cos.device
    out: list[torch.Tensor] = []
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch].to(device)
        act = activation_at(m, chunk, hook_name)
        out.append(act[chunk != bos_id].float())
    if not out:
        return torch.zeros(0, m.config.dim, device=device)
    return torch.cat(out)


def activation_scale(acts: torch.Tensor) -> float:
    """The fixed scalar that brings the mean squared norm of `acts` [n, d] to d (SAELens's
    `normalize_activations="expected_average_only_in"`), so hyperparameters like the L1
    coefficient mean the same at every layer and in every model."""
    if len(acts) == 0:
        raise BadInputError("no activations to estimate the scale from (is the data empty?)")
    mean_sq = acts.double().pow(2).sum(-1).mean().item()
    return float((acts.shape[-1] / max(mean_sq, 1e-12)) ** 0.5)


class ActivationBuffer:
    """Shuffled, normalised activations in batches, mixed across many contexts.

    The buffer is filled `contexts` windows at a time (chunk c takes windows order[c*contexts:...],
    the order a fresh seeded permutation for each pass over the windows), shuffled with a
    generator seeded by (seed, fill), and served in order. With `reuse` > 1 each chunk's
    activations are served `reuse` times, reshuffled each time: on a CPU the model's forward costs
    more than an SAE step (smollm2 block 15, loaded machine: 4,096 activations took 24-58 s, a
    step on them 4-16 s), so reusing activations buys SAE steps that fresh text cannot
    (docs/LOG.md). Its position is (fill, offset), so a resumed run
    recomputes its chunk and continues at the same row: bit for bit the batches an
    uninterrupted run would have seen.
    """

    def __init__(
        self,
        model: Transformer | Any,
        windows: np.ndarray,
        hook_name: str,
        bos_id: int,
        *,
        contexts: int,
        scale: float,
        seed: int,
        forward_batch: int = 8,
        reuse: int = 1,
    ) -> None:
        if len(windows) == 0:
            raise BadInputError("no training windows: the training text is shorter than a context")
        self.model, self.windows, self.hook_name, self.bos_id = model, windows, hook_name, bos_id
        self.contexts = max(1, min(contexts, len(windows)))
        self.scale, self.seed, self.forward_batch = scale, seed, forward_batch
        self.reuse = max(1, reuse)
        self._chunk: tuple[int, torch.Tensor] | None = None  # (chunk index, its activations)
        self.fill_index = -1
        self.offset = 0
        self.rows = torch.zeros(0)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def chunk(self, c: int) -> torch.Tensor:
        """Chunk c's raw activations [n, d] (unshuffled, unscaled; the newest chunk is kept)."""
        return self._chunk_acts(c)

    def _chunk_acts(self, c: int) -> torch.Tensor:
        if self._chunk is None or self._chunk[0] != c:
            per_epoch = len(self.windows) // self.contexts  # chunks per pass (tail left out)
            epoch, j = divmod(c, per_epoch)
            picked = self._order(epoch)[j * self.contexts : (j + 1) * self.contexts]
            acts = collect(
                self.model,
                self.windows[np.sort(picked)],
                self.hook_name,
                self.bos_id,
                batch=self.forward_batch,
            )
            self._chunk = (c, acts)
        return self._chunk[1]

    def _fill(self, i: int) -> None:
        acts = self._chunk_acts(i // self.reuse)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        perm = torch.randperm(len(acts), generator=g).to(acts.device)
        self.rows = acts[perm] * self.scale
        self.fill_index, self.offset = i, 0

    def next(self, n: int) -> torch.Tensor:
        """The next `n` rows [n, d]."""
        parts: list[torch.Tensor] = []
        need = n
        while need > 0:
            if self.fill_index < 0 or self.offset >= len(self.rows):
                self._fill(self.fill_index + 1)
                continue
            take = self.rows[self.offset : self.offset + need]
            self.offset += len(take)
            need -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def buffer_tokens(self) -> int:
        """Rows in one fill (the mixing window), as last filled."""
        return len(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"fill": self.fill_index, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["fill"] >= 0:
            self._fill(int(state["fill"]))
            self.offset = int(state["offset"])
        else:
            self.fill_index, self.offset = -1, 0
