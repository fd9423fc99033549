"""Packing conversations into training rows, and the resumable loader that serves them.

What it owns: turning rendered conversations (token ids + loss mask, from ChatFormat.render) into
fixed-length rows of (inputs, targets, positions, segment ids); packing several short
conversations into one row without letting them see each other (a block-diagonal causal mask,
positions restarting at 0 for each conversation, so every token computes exactly what it would
alone); and a loader with a seeded order per epoch whose position goes into checkpoints.

What it leaves to others: rendering (twofiles.chat), the model (which takes `positions` and
`attn_mask`), the training loop (train/sft.py).

Targets are the next token where the loss mask says the model should learn to write it, -1
(ignored) elsewhere: prompt tokens, user turns, tool results, padding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Example:
    """One conversation as the model trains on it: inputs and targets of equal length."""

    inputs: np.ndarray  # int64 [n]: token ids[:-1]
    targets: np.ndarray  # int64 [n]: ids[1:] where the loss mask is 1, else -1

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def n_targets(self) -> int:
        return int((self.targets >= 0).sum())


def make_example(ids: Sequence[int], mask: Sequence[int], max_len: int) -> Example | None:
    """The (inputs, targets) of one rendered conversation, cut to `max_len` positions. None when
    nothing is left to learn (no assistant token within the first max_len + 1 tokens)."""
    if len(ids) != len(mask):
        raise ValueError(f"ids ({len(ids)}) and mask ({len(mask)}) differ in length")
    ids_a = np.asarray(ids[: max_len + 1], dtype=np.int64)
    mask_a = np.asarray(mask[: max_len + 1], dtype=bool)
    if len(ids_a) < 2:
        return None
    targets = np.where(mask_a[1:], ids_a[1:], -1)
    if not (targets >= 0).any():
        return None
    return Example(ids_a[:-1], targets)


def pack(lengths: Sequence[int], order: Sequence[int], seq_len: int) -> list[list[int]]:
    """Rows of example indices: take examples in `order`, start a new row when the next one does
    not fit in `seq_len` (next-fit: keeps the order, so a seeded shuffle decides the rows)."""
    rows: list[list[int]] = []
    row: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} positions, more than a row's {seq_len}")
        if row and used + n > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


@dataclass
class Batch:
    inputs: torch.Tensor  # int64 [B, T]
    targets: torch.Tensor  # int64 [B, T], -1 = no loss
    positions: torch.Tensor  # int64 [B, T]: position within its own conversation
    segments: torch.Tensor  # int64 [B, T]: which conversation of the row (-1: padding)

    def attn_mask(self) -> torch.Tensor:
        """bool [B, 1, T, T]: query i may see key j iff same conversation and j <= i. Padding
        positions (segment -1) see earlier padding only, never a conversation, and always
        themselves (a query that sees nothing would give NaN)."""
        same = self.segments[:, :, None] == self.segments[:, None, :]
        T = self.segments.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.segments.device).tril()
        return (same & causal)[:, None]

    @property
    def n_targets(self) -> int:
        return int((self.targets >= 0).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device, non_blocking=True)
                for t in (self.inputs, self.targets, self.positions, self.segments)
            )
        )


def collate(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int
) -> Batch:
    """One Batch of the given rows (each a list of example indices), right-padded to the longest
    row (at most `seq_len`)."""
    B = len(rows)
    seq_len = min(seq_len, max(sum(len(examples[i]) for i in row) for row in rows))
    x = np.full((B, seq_len), pad_id, dtype=np.int64)
    y = np.full((B, seq_len), -1, dtype=np.int64)
    pos = np.zeros((B, seq_len), dtype=np.int64)
    seg = np.full((B, seq_len), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            ex = examples[i]
            n = len(ex)
            x[r, at : at + n], y[r, at : at + n] = ex.inputs, ex.targets
            pos[r, at : at + n] = np.arange(n)
            seg[r, at : at + n] = s
            at += n
    return Batch(*(torch.from_numpy(a) for a in (x, y, pos, seg)))


class PackedLoader:
    """Batches of packed rows for training: each epoch shuffles the examples with (seed, epoch),
    packs them (or, with pack=False, one example per row) and serves `batch_size` rows at a time.
    A batch never mixes epochs: the last partial batch of an epoch is served as it is.
    `state_dict()` is the position (epoch, row), enough to resume exactly."""

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seq_len: int,
        pad_id: int,
        *,
        seed: int = 0,
        pack_rows: bool = True,
    ) -> None:
        if not examples:
            raise ValueError("no examples to train on")
        self.examples = list(examples)
        self.batch_size, self.seq_len, self.pad_id, self.seed, self.pack_rows = (
            batch_size,
            seq_len,
            pad_id,
            seed,
            pack_rows,
        )
        self.lengths = [len(e) for e in self.examples]
        self.epoch, self.row = 0, 0
        self._rows: list[list[int]] | None = None

    def rows_of_epoch(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.examples)))
        random.Random(f"sft/{self.seed}/{epoch}").shuffle(order)
        return pack(self.lengths, order, self.seq_len) if self.pack_rows else [[i] for i in order]

    def _epoch_rows(self) -> list[list[int]]:
        if self._rows is None:
            self._rows = self.rows_of_epoch(self.epoch)
        return self._rows

    def next_batch(self) -> Batch:
        rows = self._epoch_rows()
        if self.row >= len(rows):
            self.epoch, self.row, self._rows = self.epoch + 1, 0, None
            rows = self._epoch_rows()
        chunk = rows[self.row : self.row + self.batch_size]
        self.row += len(chunk)
        return collate(self.examples, chunk, self.seq_len, self.pad_id)

    def rows_per_epoch(self) -> int:
        return len(self._epoch_rows())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "row": self.row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.row, self._rows = int(state["epoch"]), int(state["row"]), None


def eval_batches(
    examples: Sequence[Example], batch_size: int, seq_len: int, pad_id: int
) -> list[Batch]:
    """Every example exactly once, packed in a fixed order (for held-out loss)."""
    rows = pack([len(e) for e in examples], range(len(examples)), seq_len)
    return [
        collate(examples, rows[i : i + batch_size], seq_len, pad_id)
        for i in range(0, len(rows), batch_size)
    ]


__all__ = ["Batch", "Example", "PackedLoader", "collate", "eval_batches", "make_example", "pack"]
