"""Exact arithmetic coding into a fixed number of bits (codec/arith.py)."""

from __future__ import annotations

import numpy as np
import pytest

from codec.arith import PRECISION, TOTAL, SymbolTable, decode, encode

TABLE = SymbolTable.laplace(3.0, 40)


def _symbols(rng: np.random.Generator, count: int, scale: float) -> list[int]:
    j = np.clip(np.round(rng.laplace(0.0, scale, count)), -40, 40).astype(int)
    return (j + 40).tolist()


def test_the_laplace_table_is_a_whole_distribution_peaked_at_zero():
    freq = np.array(TABLE.freq)
    assert len(freq) == 81 and freq.sum() == TOTAL and freq.min() >= 1
    assert np.array_equal(freq[:40], freq[41:][::-1])
    assert (np.diff(freq[40:]) <= 0).all() and freq.argmax() == 40
    assert TABLE.cum == tuple(int(c) for c in np.concatenate([[0], np.cumsum(freq)[:-1]]))
    assert np.allclose(TABLE.cost(), PRECISION - np.log2(freq))


@pytest.mark.parametrize("count, bits", [(23, 94), (58, 234), (5, 94), (1, 3)])
def test_symbols_that_fit_come_back_and_those_that_do_not_are_refused(count, bits):
    """A frame's symbols fit exactly when their cost in bits is at most ``bits``: then they
    decode unchanged from a code below ``2 ** bits``, else :func:`encode` says None."""
    rng = np.random.default_rng(count)
    cost = TABLE.cost()
    fitted = refused = 0
    for scale in (0.5, 2.0, 3.0, 4.0, 8.0):
        for _ in range(60):
            symbols = _symbols(rng, count, scale)
            total = float(cost[symbols].sum())
            code = encode(symbols, TABLE, bits)
            if abs(total - bits) < 1e-6:
                continue  # (at the limit the float sum cannot tell)
            if total < bits:
                assert code is not None and 0 <= code < 2 ** bits, (total, bits)
                assert decode(code, count, TABLE, bits) == symbols
                fitted += 1
            else:
                assert code is None, (total, bits)
                refused += 1
    assert fitted > 20 and (refused > 20 or bits >= PRECISION * count)


def test_any_code_decodes_to_symbols_whose_interval_holds_it():
    """Every number of ``bits`` bits reads as some symbols (a damaged file still decodes): the
    ones whose interval holds it, at the scale ``TOTAL ** count``."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        code = int(rng.integers(0, 2 ** 62)) << 32 | int(rng.integers(0, 2 ** 32))
        symbols = decode(code, 23, TABLE, 94)
        assert len(symbols) == 23 and all(0 <= s < 81 for s in symbols)
        low, width = 0, 1
        for s in symbols:
            low, width = low * TOTAL + width * TABLE.cum[s], width * TABLE.freq[s]
        assert low <= code << (PRECISION * 23 - 94) < low + width
    assert decode(2 ** 94 - 1, 23, TABLE, 94)[0] == 80 and decode(0, 23, TABLE, 94) == [0] * 23


def test_codes_longer_than_the_symbols_need_carry_them_exactly():
    """With more bits than the table's precision times the symbols, nothing is rounded."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        symbols = [int(s) for s in rng.integers(0, 81, 4)]
        code = encode(symbols, TABLE, 64)
        assert code is not None and decode(code, 4, TABLE, 64) == symbols

