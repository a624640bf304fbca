"""Exact arithmetic coding of a frame's symbols into a fixed number of bits.

Why (docs/model_card.md, "Arithmetic-coded low band"): the low band's coefficients
(codec/lowband.py) are mostly small, so a fixed 4 bits each wastes bits that, spent on finer
steps, buy PESQ. A frame's symbols are coded against one static table of integer frequencies
(:class:`SymbolTable`); the code is a number of exactly ``bits`` bits, so frames keep their
fixed size and are decoded on their own.

How: Python integers hold the whole interval, so nothing is rounded. After ``n`` symbols
``s_1 .. s_n`` the interval is ``[L, L + W)`` out of ``TOTAL ** n``, where ``W`` is the
product of their frequencies and ``L`` accumulates their cumulative frequencies
(``L <- L * TOTAL + W * cum[s]``, ``W <- W * freq[s]``; each symbol may have its own table). The code is the smallest number of
``bits`` bits whose value, shifted up to that scale, falls in the interval. The encoder takes
the symbols when ``W >= 2 ** (n * PRECISION - bits)``, which makes sure of one: that is when
their cost in bits (:meth:`SymbolTable.cost`) is at most ``bits``, so what fits can be told
from the costs alone. The decoder needs only the table and integer
arithmetic, so what it reads cannot depend on the machine's floating point; any ``bits`` bits
decode to valid symbols.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

PRECISION = 15
TOTAL = 1 << PRECISION  # the frequencies of a table sum to this


@dataclass(frozen=True)
class SymbolTable:
    """Integer frequencies of symbols ``0 .. len(freq) - 1``, each at least 1, summing to
    :data:`TOTAL`; ``cum[s]`` is the sum of those before ``s``."""

    freq: tuple[int, ...]
    cum: tuple[int, ...]

    @classmethod
    def laplace(cls, scale: float, largest: int) -> "SymbolTable":
        """Symbols ``0 .. 2 * largest`` standing for the integers ``-largest .. largest``, with
        frequencies following ``exp(-|j| / scale)`` (each at least 1; the rounding's remainder
        goes to 0)."""
        return cls._shaped(np.exp(-np.abs(np.arange(-largest, largest + 1)) / scale), zero=largest)

    @classmethod
    def geometric(cls, scale: float, largest: int) -> "SymbolTable":
        """Symbols ``0 .. largest`` standing for themselves, with frequencies following
        ``exp(-j / scale)`` (each at least 1; the rounding's remainder goes to 0)."""
        return cls._shaped(np.exp(-np.arange(largest + 1) / scale), zero=0)

    @classmethod
    def _shaped(cls, p: np.ndarray, zero: int) -> "SymbolTable":
        """Frequencies in proportion to ``p`` ``[symbols]``, each at least 1, the rounding's
        remainder added to symbol ``zero``."""
        freq = np.maximum(1, np.floor(p / p.sum() * (TOTAL - len(p)))).astype(np.int64)
        freq[zero] += TOTAL - int(freq.sum())
        return cls(tuple(int(f) for f in freq), tuple(int(c) for c in np.cumsum(freq) - freq))

    def cost(self) -> np.ndarray:
        """Each symbol's cost in bits, ``-log2(freq / TOTAL)``: ``[symbols]`` float64."""
        return PRECISION - np.log2(np.asarray(self.freq, dtype=np.float64))


def encode(symbols: Sequence[int], table: SymbolTable | Sequence[SymbolTable], bits: int) -> int | None:
    """``symbols`` -> the code, a number below ``2 ** bits``; None if they cost more than
    ``bits`` bits (``W < 2 ** shift``, even where a code might happen to fall in their
    interval). ``table``: one for all symbols, or one each."""
    low, width = 0, 1
    for s, t in zip(symbols, _tables(table, len(symbols)), strict=True):
        low = low * TOTAL + width * t.cum[s]
        width *= t.freq[s]
    shift = PRECISION * len(symbols) - bits
    if shift <= 0:
        return low << -shift
    if width < 1 << shift:
        return None
    return -(-low // (1 << shift))  # the smallest multiple of 2 ** shift in [low, low + width)


def decode(code: int, count: int, table: SymbolTable | Sequence[SymbolTable], bits: int) -> list[int]:
    """The ``count`` symbols that :func:`encode` coded as ``code`` in ``bits`` bits with the
    same ``table`` (or tables; any ``code`` below ``2 ** bits`` decodes to some symbols)."""
    shift = PRECISION * count - bits
    rest = code << shift if shift >= 0 else code >> -shift  # the code at the scale TOTAL ** count, less low
    width, out = 1, []
    for i, t in enumerate(_tables(table, count)):
        below = PRECISION * (count - 1 - i)
        s = bisect.bisect_right(t.cum, (rest >> below) // width) - 1
        out.append(s)
        rest -= (width * t.cum[s]) << below
        width *= t.freq[s]
    return out


def _tables(table: SymbolTable | Sequence[SymbolTable], count: int) -> Sequence[SymbolTable]:
    """One table for each of ``count`` symbols."""
    if isinstance(table, SymbolTable):
        return [table] * count
    if len(table) != count:
        raise ValueError(f"expected a table for each of {count} symbols, got {len(table)}")
    return table

