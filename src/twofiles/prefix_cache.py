"""The prefix cache: keys and values already computed for token prefixes, kept for the next request.

What it owns: `PrefixCache`, fixed-size blocks of `block_size` tokens of keys and values (every
layer) in one pool tensor of the KV cache's own dtype and device, found by a chain of block keys,
evicted least-recently-used under a byte cap. `match` finds the longest cached run of a prompt's
full blocks, `load` copies blocks into a row of a KV cache (`load_prompt` does both for a prompt,
the one way the engine and the decoder use it), `store` copies a row's full blocks in.
What it leaves to others: which prefixes to look up and when to store (decoder.py, engine.py),
the KV cache layout itself (model.py).

Why blocks with chained keys (vLLM's automatic prefix caching) rather than a radix tree
(SGLang): the decoder's KV cache is one static buffer per row, so cached keys and values are
copied in and out, never shared in place; fixed-size blocks make that one indexed copy per layer
for any run of blocks, make every unit of memory the same size (the cap is a block count, an
eviction frees exactly one block), and make lookup one dict probe per block. A radix tree would
match to the token rather than to the block, which saves at most block_size - 1 tokens of
prefill per request: not worth a variable-size allocator. A block's key is (its parent block's
id, its own token ids), compared exactly, so no hash collision can ever hand one prompt another
prompt's keys (why vLLM moved its block hashes to SHA-256).

Eviction keeps every chain whole: whenever a block is used, its ancestors are marked used after
it, so a parent is always more recent than its children and the least recently used block is
always a leaf. A prompt's last token is never served from the cache: its logits are needed, so
it is recomputed even when the whole prompt is cached (`match` takes a token limit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_BLOCK_SIZE = 16  # tokens per block (vLLM's default): a hit is rounded down to a multiple
_FIRST_CAPACITY = 64  # blocks allocated on first use; the pool doubles up to the cap as it fills
# the counters `stats` reports, in its order (the scheduler reports zeros for them when off)
PREFIX_STATS = (
    "prefix_lookup_tokens",
    "prefix_hit_tokens",
    "prefix_cache_bytes",
    "prefix_cache_blocks",
    "prefix_evictions",
)


@dataclass
class CachedBlock:
    id: int  # unique, never reused: the key of this block's children
    slot: int  # index in the pool
    key: tuple[int, tuple[int, ...]]  # (parent id, token ids)


class PrefixCache:
    """Cached keys and values of token blocks for one model, at most `max_bytes` of them.
    Not thread-safe: one thread (the one that runs the model) uses it."""

    def __init__(self, max_bytes: int, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size < 1 or max_bytes < 0:
            raise ValueError(f"block_size={block_size} must be >= 1 and max_bytes={max_bytes} >= 0")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], CachedBlock] = (
            OrderedDict()
        )  # LRU first
        self._ids = 0  # the root's id is 0
        self._k: torch.Tensor | None = None  # [layers, capacity, kv_heads, block_size, head_dim]
        self._v: torch.Tensor | None = None
        self._free: list[int] = []
        self.block_bytes = 0  # known once the first block is stored
        self.evictions = 0
        # what the decoder or engine reports through `count`
        self.lookup_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # prompt tokens served from the cache

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    @property
    def bytes(self) -> int:
        return len(self._blocks) * self.block_bytes

    def stats(self) -> dict[str, int]:
        values = (self.lookup_tokens, self.hit_tokens, self.bytes, self.blocks, self.evictions)
        return dict(zip(PREFIX_STATS, values, strict=True))

    def match(self, ids: Sequence[int], limit: int | None = None) -> list[CachedBlock]:
        """The cached blocks of the longest run of full blocks that starts `ids[:limit]`, marked
        as just used (a prompt's caller passes limit len(prompt) - 1: its last token must be
        computed for its logits)."""
        n = len(ids) if limit is None else min(limit, len(ids))
        bs, parent = self.block_size, 0
        chain: list[CachedBlock] = []
        for start in range(0, n - bs + 1, bs):
            block = self._blocks.get((parent, tuple(ids[start : start + bs])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        self._touch(chain)
        return chain

    def load_prompt(
        self,
        prompt: Sequence[int],
        ks: Sequence[torch.Tensor],
        vs: Sequence[torch.Tensor],
        row: int,
        have: int = 0,
    ) -> int:
        """Copy the cached blocks of `prompt` past the `have` tokens `row` already holds (a
        multiple of block_size) into it, never the prompt's last token (its logits are needed);
        count them as hits and return the tokens copied."""
        chain = self.match(prompt, len(prompt) - 1)
        got = self.load(chain, ks, vs, row, have // self.block_size)
        self.hit_tokens += got
        return got

    @torch.inference_mode()  # the pool and the KV caches are inference tensors
    def load(
        self,
        chain: Sequence[CachedBlock],
        ks: Sequence[torch.Tensor],
        vs: Sequence[torch.Tensor],
        row: int,
        start: int = 0,
    ) -> int:
        """Copy `chain[start:]` into slots start*block_size.. of `row` in every layer's buffers
        ks / vs [rows, kv_heads, slots, head_dim]; return the tokens copied."""
        blocks = chain[start:]
        if not blocks or self._k is None or self._v is None:
            return 0
        bs = self.block_size
        slots = torch.tensor([b.slot for b in blocks], device=self._k.device)
        a, z = start * bs, (start + len(blocks)) * bs
        for layer, (k, v) in enumerate(zip(ks, vs)):
            H, D = k.shape[1], k.shape[3]
            # [n, H, bs, D] -> [H, n * bs, D]
            k[row, :, a:z] = self._k[layer, slots].transpose(0, 1).reshape(H, z - a, D)
            v[row, :, a:z] = self._v[layer, slots].transpose(0, 1).reshape(H, z - a, D)
        return z - a

    @torch.inference_mode()
    def store(
        self, ids: Sequence[int], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], row: int
    ) -> int:
        """Keep the full blocks of `ids`, whose keys and values `row` of ks / vs holds at slots
        0..len(ids)-1 (blocks already cached are only marked used). Evicts the least recently used
        blocks to stay under the cap. Returns the blocks added."""
        bs = self.block_size
        n_blocks = len(ids) // bs
        if n_blocks == 0:
            return 0
        if self._k is None:
            self._allocate(ks, vs)
        cap = self.max_bytes // self.block_bytes
        chain = self.match(ids)  # marked used: eviction below spares the cached part
        new = min(n_blocks, cap) - len(chain)
        if new <= 0:
            return 0
        parent = chain[-1].id if chain else 0
        while len(self._blocks) + new > cap:
            _, old = self._blocks.popitem(last=False)
            self._free.append(old.slot)
            self.evictions += 1
        self._reserve(new)
        first = len(chain)
        added = []
        for i in range(first, first + new):
            self._ids += 1
            key = (parent, tuple(ids[i * bs : (i + 1) * bs]))
            block = CachedBlock(self._ids, self._free.pop(), key)
            self._blocks[key] = block
            added.append(block)
            parent = block.id
        assert self._k is not None and self._v is not None
        slots = torch.tensor([b.slot for b in added], device=self._k.device)
        a, z = first * bs, (first + new) * bs
        for layer, (k, v) in enumerate(zip(ks, vs)):
            H, D = k.shape[1], k.shape[3]
            # [H, new * bs, D] -> [new, H, bs, D]
            self._k[layer, slots] = k[row, :, a:z].reshape(H, new, bs, D).transpose(0, 1)
            self._v[layer, slots] = v[row, :, a:z].reshape(H, new, bs, D).transpose(0, 1)
        self._touch(chain + added)
        return new

    def clear(self) -> None:
        """Forget every block (the pool's memory goes too)."""
        self._blocks.clear()
        self._k = self._v = None
        self._free = []

    def _touch(self, chain: Sequence[CachedBlock]) -> None:
        for block in reversed(chain):  # leaf first, root last: parents stay the more recent
            self._blocks.move_to_end(block.key)

    def _allocate(self, ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor]) -> None:
        k = ks[0]
        H, D = k.shape[1], k.shape[3]
        self.block_bytes = 2 * len(ks) * H * self.block_size * D * k.element_size()
        cap = self.max_bytes // self.block_bytes
        first = min(cap, _FIRST_CAPACITY)
        shape = (len(ks), first, H, self.block_size, D)
        self._k = torch.empty(shape, dtype=k.dtype, device=k.device)
        self._v = torch.empty(shape, dtype=vs[0].dtype, device=vs[0].device)
        self._free = list(range(first - 1, -1, -1))

    def _reserve(self, n: int) -> None:
        """Grow the pool (doubling, up to the cap) until n slots are free."""
        assert self._k is not None and self._v is not None
        if len(self._free) >= n:
            return
        old = self._k.shape[1]
        cap = self.max_bytes // self.block_bytes
        size = old
        while size - old + len(self._free) < n:
            size = min(cap, size * 2)
        grow = size - old
        extra = list(self._k.shape)
        extra[1] = grow
        self._k = torch.cat([self._k, self._k.new_empty(extra)], dim=1)
        self._v = torch.cat([self._v, self._v.new_empty(extra)], dim=1)
        self._free.extend(range(size - 1, old - 1, -1))


def cache_from_mb(megabytes: float, *, block_size: int = DEFAULT_BLOCK_SIZE) -> PrefixCache | None:
    """A cache of at most `megabytes` MB (10**6 bytes), or None for 0 (caching off)."""
    if megabytes < 0:
        raise ValueError(f"prefix cache size {megabytes} MB: must be >= 0 (0 = off)")
    if megabytes == 0:
        return None
    return PrefixCache(int(megabytes * 1_000_000), block_size=block_size)


__all__ = ["DEFAULT_BLOCK_SIZE", "PREFIX_STATS", "CachedBlock", "PrefixCache", "cache_from_mb"]
