"""Reading a prepared data directory: memory-mapped token shards and the resumable batch loader
used by pretraining (the manifest itself is read by `prepare.load_manifest`).

What it owns: random access into a split's token stream across shard files, the order in which
training windows are visited (a seeded permutation per epoch), and the loader's position as a
small dict for checkpoints. What it leaves to others: writing shards and the manifest (prepare.py), the model.

The loader is exactly resumable and rank-aware: a global micro-step consumes `batch_size *
world_size` windows; rank r takes the r-th block of them. So 1 process with batch 2B sees the same
windows in one step as 2 processes with batch B each (the DDP-equivalence contract).
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any

import numpy as np

from twofiles.data.prepare import load_manifest
from twofiles.errors import BadInputError


class TokenStream:
    """One split's shards as a single read-only token sequence (memory-mapped, so larger than RAM
    is fine)."""

    def __init__(
        self, data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None
    ) -> None:
        data_dir = Path(data_dir)
        manifest = manifest or load_manifest(data_dir)
        if split not in manifest.get("splits", {}):
            raise BadInputError(
                f"manifest has no '{split}' split", path=str(data_dir / "manifest.json")
            )
        self.shards: list[np.ndarray] = []
        for shard in manifest["splits"][split]["shards"]:
            f = data_dir / shard["file"]
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BadInputError(f"cannot read shard: {e}", path=str(f)) from None
            if arr.ndim != 1 or len(arr) != shard["tokens"]:
                raise BadInputError(
                    f"shard has {len(arr)} tokens, manifest says {shard['tokens']}", path=str(f)
                )
            if len(arr):
                self.shards.append(arr)
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.vocab_size = int(manifest["vocab_size"])
        self.bos_id = int(manifest["bos_id"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, crossing shard boundaries as needed."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < length:
            local = start + filled - int(self.offsets[i])
            take = min(length - filled, len(self.shards[i]) - local)
            out[filled : filled + take] = self.shards[i][local : local + take]
            filled += take
            i += 1
        return out


class BatchLoader:
    """Training windows of seq_len+1 tokens (inputs and shifted targets), non-overlapping,
    visited in a seeded random order that changes every epoch."""

    def __init__(
        self,
        stream: TokenStream,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.stream, self.batch_size, self.seq_len = stream, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n_windows = (len(stream) - 1) // seq_len
        self.per_step = batch_size * world_size
        if self.n_windows < self.per_step:
            raise BadInputError(
                f"training split has {len(stream)} tokens: too few for {self.per_step} windows of {seq_len + 1} tokens; "
                "use more data, a smaller --batch-size or a shorter --seq-len"
            )
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each [batch_size, seq_len] int64, for this rank."""
        if self.pos + self.per_step > self.n_windows:  # drop the remainder, start a new epoch
            self.epoch += 1
            self.pos = 0
            self._order = self._permutation(self.epoch)
        mine = self._order[
            self.pos + self.rank * self.batch_size : self.pos + (self.rank + 1) * self.batch_size
        ]
        self.pos += self.per_step
        rows = np.stack([self.stream.get(int(w) * self.seq_len, self.seq_len + 1) for w in mine])
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "per_step": self.per_step,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seq_len") != self.seq_len or state.get("per_step") != self.per_step:
            raise BadInputError(
                f"checkpoint's data position was taken with seq_len={state.get('seq_len')}, "
                f"{state.get('per_step')} windows per step; this run uses {self.seq_len} and {self.per_step}"
            )
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])
        self._order = self._permutation(self.epoch)

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.n_windows


def eval_windows(
    stream: Sized, seq_len: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Consecutive (start, length) windows covering the split (or its first max_tokens targets);
    every target token is scored exactly once, the last window may be shorter."""
    n_targets = len(stream) - 1
    if max_tokens is not None:
        n_targets = min(n_targets, max_tokens)
    return [(s, min(seq_len, n_targets - s)) for s in range(0, n_targets, seq_len)]
