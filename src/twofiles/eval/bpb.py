"""Bits per byte: how well a model compresses held-out text, comparable across tokenizers.

What it owns: `evaluate_bpb`, scoring a token sequence in consecutive windows (every target
exactly once) as pretraining's validation does and as `twofiles eval`'s bits-per-byte tasks do
(eval/backends.py), so a run's val_bpb and an eval report's number are the same measurement.
Bits per byte is `sum(loss_nats) / ln 2 / sum(token_bytes[targets])` over targets with non-zero
bytes: special tokens (0 bytes, e.g. <|bos|>) count in neither sum. What it leaves to others:
reading shards (data/shards.py), the training loop that calls it (train/pretrain.py), device
and precision (runtime.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from twofiles.data.shards import eval_windows

if TYPE_CHECKING:
    from twofiles.runtime import Runtime


class TokenSource(Protocol):
    """A read-only token sequence: a split's shards (data.shards.TokenStream) or an array."""

    def __len__(self) -> int: ...

    def get(self, start: int, length: int) -> np.ndarray: ...


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    stream: TokenSource,
    token_bytes: torch.Tensor,
    rt: Runtime,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None,
) -> tuple[float, float]:
    """(mean loss in nats per token, bits per byte) over `stream` (its first `max_tokens`
    targets if given). Under DDP each rank scores its share of the windows and the sums are
    all-reduced. Leaves the model in training mode (the caller is usually a training loop)."""
    model.eval()
    windows = eval_windows(stream, seq_len, max_tokens)[rt.rank :: rt.world_size]
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss nats, bytes, tokens
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        L = max(n for _, n in chunk)
        x = np.zeros((len(chunk), L), dtype=np.int64)
        y = np.full((len(chunk), L), -1, dtype=np.int64)
        for r, (s, n) in enumerate(chunk):
            row = stream.get(s, n + 1)
            x[r, :n], y[r, :n] = row[:-1], row[1:]
        xt, yt = torch.from_numpy(x).to(rt.device), torch.from_numpy(y).to(rt.device)
        with rt.autocast():
            loss = model(xt, yt, reduction="none")
        nbytes = torch.where(yt >= 0, token_bytes[yt.clamp(min=0)], 0)
        counted = nbytes > 0
        sums[0] += loss[counted].double().sum()
        sums[1] += nbytes.sum().double()
        sums[2] += counted.sum().double()
    if rt.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train()
    loss_nats, nbytes, ntok = sums.tolist()
    return loss_nats / max(ntok, 1), loss_nats / math.log(2) / max(nbytes, 1)


__all__ = ["TokenSource", "evaluate_bpb"]
