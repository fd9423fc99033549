"""The arithmetic coder: integer intervals in, bits out, and back.

What it owns: a 32-bit binary arithmetic coder in the classic Witten-Neal-Cleary scheme
("Arithmetic coding for data compression", CACM 1987): the interval [low, high] is narrowed to
each symbol's share of it, a leading bit is sent as soon as low and high agree on it, and when
the interval straddles the midpoint but has shrunk to its middle half the bit is not known yet:
it is counted as pending and sent, inverted, after the next decided bit (the scheme's carry
handling). A symbol is given as its cumulative frequency range [lo, hi) out of `total`; every
symbol with a frequency >= 1 is codable as long as total <= MAX_TOTAL.

The number of symbols is not coded: the caller knows it (the container's header stores it), so
no end-of-stream symbol is spent. The decoder reads zeros past the end of the bytes, which is
what the encoder's final bits rely on. What it leaves to others: where frequencies come from
(codec.py: a model's next-token probabilities), the file around the bits (container.py).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

PRECISION = 32  # bits of low / high
TOP = (1 << PRECISION) - 1
HALF = 1 << (PRECISION - 1)
QUARTER = 1 << (PRECISION - 2)
# After each renormalisation the interval is wider than a quarter of the code space, so with
# total <= QUARTER every symbol of frequency >= 1 keeps a sub-interval at least 1 wide.
MAX_TOTAL = QUARTER


def _check(lo: int, hi: int, total: int) -> None:
    if not 0 <= lo < hi <= total <= MAX_TOTAL:
        raise ValueError(f"bad symbol range [{lo}, {hi}) of total {total} (max {MAX_TOTAL})")


class Encoder:
    """Code symbols given as cumulative-frequency ranges; `finish` returns the bytes."""

    def __init__(self) -> None:
        self.low, self.high, self.pending = 0, TOP, 0
        self._out = bytearray()
        self._acc, self._nacc = 0, 0  # bits not yet making a whole byte
        self.symbols = 0

    def _bits(self, bit: int, count: int) -> None:
        acc, n, out = self._acc, self._nacc, self._out
        for _ in range(count):
            acc = (acc << 1) | bit
            n += 1
            if n == 8:
                out.append(acc)
                acc, n = 0, 0
        self._acc, self._nacc = acc, n

    def _emit(self, bit: int) -> None:
        self._bits(bit, 1)
        if self.pending:
            self._bits(bit ^ 1, self.pending)
            self.pending = 0

    def encode(self, lo: int, hi: int, total: int) -> None:
        """Code the symbol whose cumulative frequencies are [lo, hi) out of `total`."""
        _check(lo, hi, total)
        low, high = self.low, self.high
        span = high - low + 1
        high = low + span * hi // total - 1
        low = low + span * lo // total
        while True:
            if high < HALF:
                self._emit(0)
            elif low >= HALF:
                self._emit(1)
                low -= HALF
                high -= HALF
            elif low >= QUARTER and high < 3 * QUARTER:
                self.pending += 1  # the next bit is undecided: it straddles the midpoint
                low -= QUARTER
                high -= QUARTER
            else:
                break
            low = 2 * low
            high = 2 * high + 1
        self.low, self.high = low, high
        self.symbols += 1

    def finish(self) -> bytes:
        """Two more bits pin a point inside the final interval (zeros follow, as the decoder
        assumes); the last byte is padded with zeros."""
        self.pending += 1
        self._emit(0 if self.low < QUARTER else 1)
        if self._nacc:
            self._out.append(self._acc << (8 - self._nacc))
            self._acc, self._nacc = 0, 0
        return bytes(self._out)


class Decoder:
    """The encoder's mirror: `target(total)` says where the code value falls, the caller finds
    the symbol whose range holds it and `consume`s that range (or `decode` does both)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._nbits = len(data) * 8
        self._pos = 0
        self.low, self.high = 0, TOP
        value = 0
        for _ in range(PRECISION):
            value = (value << 1) | self._bit()
        self.value = value

    def _bit(self) -> int:
        pos = self._pos
        self._pos = pos + 1
        if pos >= self._nbits:
            return 0
        return (self._data[pos >> 3] >> (7 - (pos & 7))) & 1

    def target(self, total: int) -> int:
        """The cumulative frequency in [0, total) that the code value points at."""
        if not 1 <= total <= MAX_TOTAL:
            raise ValueError(f"bad total {total} (max {MAX_TOTAL})")
        span = self.high - self.low + 1
        return ((self.value - self.low + 1) * total - 1) // span

    def consume(self, lo: int, hi: int, total: int) -> None:
        """Narrow the interval to the decoded symbol's range, exactly as the encoder did."""
        _check(lo, hi, total)
        low, high, value = self.low, self.high, self.value
        span = high - low + 1
        high = low + span * hi // total - 1
        low = low + span * lo // total
        while True:
            if high < HALF:
                pass
            elif low >= HALF:
                low -= HALF
                high -= HALF
                value -= HALF
            elif low >= QUARTER and high < 3 * QUARTER:
                low -= QUARTER
                high -= QUARTER
                value -= QUARTER
            else:
                break
            low = 2 * low
            high = 2 * high + 1
            value = (value << 1) | self._bit()
        self.low, self.high, self.value = low, high, value

    def decode(self, cum: Sequence[int]) -> int:
        """The next symbol under cumulative frequencies `cum` (len = symbols + 1, cum[0] = 0,
        non-decreasing, cum[-1] = total); symbols of frequency 0 are never returned."""
        total = int(cum[-1])
        t = self.target(total)
        s = bisect_right(cum, t) - 1  # the last symbol whose range starts at or below t
        self.consume(int(cum[s]), int(cum[s + 1]), total)
        return s


def cumulative(freqs: Iterable[int]) -> list[int]:
    """[0, f0, f0+f1, ...]: the cumulative table `Decoder.decode` takes."""
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + int(f))
    return cum


def encode_symbols(symbols: Iterable[int], cum: Sequence[int]) -> bytes:
    """Code a sequence of symbols under one fixed frequency table (tests, examples)."""
    enc = Encoder()
    total = int(cum[-1])
    for s in symbols:
        enc.encode(int(cum[s]), int(cum[s + 1]), total)
    return enc.finish()


def decode_symbols(data: bytes, n: int, cum: Sequence[int]) -> list[int]:
    """The first `n` symbols coded in `data` under one fixed frequency table."""
    dec = Decoder(data)
    return [dec.decode(cum) for _ in range(n)]


__all__ = [
    "MAX_TOTAL",
    "PRECISION",
    "Decoder",
    "Encoder",
    "cumulative",
    "decode_symbols",
    "encode_symbols",
]
