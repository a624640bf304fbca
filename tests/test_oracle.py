"""benchmarks/oracle.py: each part it takes from the original fixes that part and no other."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from oracle import BANDS, PARTS, band_power_db, boosted, with_original_part  # noqa: E402

RATE = 24000


def _voiced(seconds: float = 1.0, f0: float = 150.0) -> np.ndarray:
    """A harmonic tone with a falling spectral tilt and a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 40))
    return (0.1 * x + 0.001 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def _error(a: np.ndarray, b: np.ndarray) -> float:
    core = slice(1024, -1024)  # away from the STFT's edges
    return float(np.sqrt(np.mean((a[core] - b[core]) ** 2) / np.mean(b[core] ** 2)))


def test_the_original_s_magnitude_and_envelope_undo_a_gain_and_its_phase_does_not():
    x = _voiced()
    y = 0.25 * x  # the right waveform 12 dB too quiet
    assert _error(with_original_part(x, y, "decoded", RATE), x) > 0.7
    assert _error(with_original_part(x, y, "magnitude", RATE), x) < 0.01
    assert _error(with_original_part(x, y, "envelope", RATE), x) < 0.01
    assert _error(with_original_part(x, y, "phase", RATE), x) > 0.7  # the phase was already right
    assert _error(with_original_part(x, y, "fine structure", RATE), x) > 0.7


def test_a_band_s_magnitude_fixes_that_band_only():
    x = _voiced()
    y = 0.25 * x
    power = dict(zip(BANDS, band_power_db(x, with_original_part(x, y, "mag 1-4 kHz", RATE), RATE)))
    assert power[(1000, 2000)] == pytest.approx(0.0, abs=0.3) and power[(2000, 4000)] == pytest.approx(0.0, abs=0.3)
    assert power[(0, 500)] == pytest.approx(-12.0, abs=0.3) and power[(4000, 8000)] == pytest.approx(-12.0, abs=0.5)


def test_the_original_s_phase_undoes_a_delay():
    x = _voiced()
    y = np.roll(x, 37)  # same magnitudes, other phases
    assert _error(y, x) > 0.5
    assert _error(with_original_part(x, y, "phase", RATE), x) < 0.05
    with pytest.raises(ValueError, match="unknown part"):
        with_original_part(x, y, "loudness", RATE)
    with pytest.raises(ValueError, match="unknown part"):
        with_original_part(x, y, "mag 2-3 kHz", RATE)
    assert set(PARTS) >= {"phase", "magnitude", "envelope"}


def test_a_fixed_boost_raises_its_band_by_its_gain_only():
    x = _voiced()
    power = dict(zip(BANDS, band_power_db(x, boosted(x, [(1000.0, 4000.0, 6.0)], RATE), RATE)))
    assert power[(1000, 2000)] == pytest.approx(6.0, abs=0.3) and power[(2000, 4000)] == pytest.approx(6.0, abs=0.3)
    assert power[(0, 500)] == pytest.approx(0.0, abs=0.3) and power[(4000, 8000)] == pytest.approx(0.0, abs=0.3)


def _magnitude_error(a: np.ndarray, b: np.ndarray) -> float:
    """Spectral convergence of ``a``'s STFT magnitude to ``b``'s (0: the same magnitudes)."""
    import torch

    spec = [torch.stft(torch.from_numpy(v[1024:-1024].copy()), 512, 128, window=torch.hann_window(512),
                       return_complex=True).abs() for v in (a, b)]
    return float((spec[0] - spec[1]).norm() / spec[1].norm())


def test_phase_retrieval_keeps_the_magnitude_it_is_given_and_makes_its_own_phase():
    x = _voiced()
    y = 0.25 * np.roll(x, 37)  # a delayed copy 12 dB too quiet
    from_original = with_original_part(x, y, "magnitude, phase retrieved", RATE)
    from_decoded = with_original_part(x, y, "decoded, phase retrieved", RATE)
    assert _magnitude_error(from_original, x) < 0.2 and _magnitude_error(from_decoded, y) < 0.2
    assert _magnitude_error(from_decoded, x) > 0.7  # the decoded level is kept, not the original's
    assert _error(from_original, x) > 0.5  # its phase is its own: the waveform differs
    assert _error(from_decoded, y) > 0.5 and _error(from_original, with_original_part(x, y, "magnitude", RATE)) > 0.5
