"""benchmarks/mel_split.py: its parts add up to the mel distance, and its phase oracle puts
the original's phase where it is asked to."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mel_split import LEVEL_SECONDS, LEVELS_DB, RANGES_HZ, _ranges, levels_db, split, split_by_level, with_original_phase  # noqa: E402

from codec.metrics import mel_distance  # noqa: E402

RATE = 24000


def noisy_tone(seed: int, seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_the_parts_add_up_to_the_mel_distance():
    ref, est = noisy_tone(0), noisy_tone(1)
    per_window, per_range = split(ref, est, RATE)
    assert per_window.shape == (7,) and per_range.shape == (len(RANGES_HZ),)
    assert per_window.sum() == pytest.approx(mel_distance(ref, est, RATE), rel=1e-5)
    assert per_range.sum() == pytest.approx(per_window.sum(), rel=1e-5)
    assert (per_range > 0).all()  # the noise differs in every range


def test_a_difference_in_one_range_counts_there():
    """Noise added only between 4 and 8 kHz: that range holds most of the distance."""
    ref = noisy_tone(0)
    spec = np.fft.rfft(np.random.default_rng(3).standard_normal(ref.size))
    hz = np.fft.rfftfreq(ref.size, 1 / RATE)
    spec[(hz < 4500) | (hz > 7500)] = 0
    est = ref + (0.05 * np.fft.irfft(spec, ref.size)).astype(np.float32)
    _, per_range = split(ref, est, RATE)
    assert RANGES_HZ[2] == 4000.0 and per_range[2] > 0.6 * per_range.sum(), per_range


def test_the_level_split_adds_up_and_puts_a_difference_in_quiet_frames_there():
    """A clip loud in its first half and some 60 dB quieter in its second; noise about 7 dB under
    the first half added only to the quiet half: the parts add up to the distance, the class of the
    original's level there (not the decoded one's) holds most of it, and the time shares are
    each half's."""
    rng = np.random.default_rng(5)
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE) + 0.02 * rng.standard_normal(RATE)  # about -14 dB
    loud, quiet = tone.astype(np.float32), (1e-3 * tone[::-1]).astype(np.float32)  # about -74 dB
    ref = np.concatenate([loud, quiet])
    noise = np.random.default_rng(4).standard_normal(quiet.size).astype(np.float32)
    est = ref + np.concatenate([np.zeros_like(loud), 0.1 * noise])
    parts, time = split_by_level(ref, est, RATE)
    assert parts.shape == time.shape == (len(LEVELS_DB) + 1,)
    assert parts.sum() == pytest.approx(mel_distance(ref, est, RATE), rel=1e-5)
    assert time.sum() == pytest.approx(1.0) and time[-1] == pytest.approx(0.5, abs=0.02)  # the loud half: -30 dB and up
    assert time[0] == pytest.approx(0.5, abs=0.02)  # the quiet half: under -60 dB
    assert parts[0] > 0.9 * parts.sum(), parts


def test_levels_are_measured_around_each_centre():
    """A 20-ms burst in silence: a centre in it reads the burst's level, one a quarter of a span
    before it starts a quarter of that power, one a span before it nothing; a constant level
    reads the same up to the audio's edges (the mean over the samples there are)."""
    span = round(LEVEL_SECONDS * RATE)
    audio = np.zeros(10000)
    audio[4800 : 4800 + span] = 0.1  # mean square -20 dB
    got = levels_db(audio, RATE, np.array([5040, 4800 - span // 4, 4800 - span, 0]))
    assert got[0] == pytest.approx(-20.0, abs=0.1)
    assert got[1] == pytest.approx(-20.0 + 10 * np.log10(0.25), abs=0.2)
    assert got[2] < -150 and got[3] < -150  # nothing within half a span
    flat = np.full(3000, 0.1)
    assert levels_db(flat, RATE, np.array([0, 1500, 2999])) == pytest.approx([-20.0] * 3, abs=1e-6)


def test_frames_are_classed_by_the_level_at_their_centre():
    """A tone in the first 50 ms of near silence, and a difference only there: most of the
    distance is classed loud. (With frames classed half a window later, as if the metric's
    STFT were not centred, 19% of it went to the quiet class instead of 6%.)"""
    rng = np.random.default_rng(6)
    ref = 1e-4 * rng.standard_normal(RATE)
    ref[:1200] += 0.3 * np.sin(2 * np.pi * 440 * np.arange(1200) / RATE)
    est = ref.copy()
    est[:1200] += 0.05 * rng.standard_normal(1200)
    parts, _ = split_by_level(ref.astype(np.float32), est.astype(np.float32), RATE)
    assert parts[-1] > 0.9 * parts.sum(), parts


def test_the_phase_oracle_takes_the_originals_phase_in_its_range_only():
    """A copy 1.5 ms late (short-time magnitudes about the original's, another phase): with the
    original's phase over the whole band it comes close to the original; over part of the band
    part of the way; below a range's lower edge it is left as it was."""
    ref = noisy_tone(0)
    est = np.concatenate([np.zeros(36, np.float32), ref[:-36]])
    whole = with_original_phase(ref, est, RATE, 0.0, RATE / 2 + 1)
    part = with_original_phase(ref, est, RATE, 1000.0, 4000.0)
    d_est, d_part, d_whole = (mel_distance(ref, y, RATE) for y in (est, part, whole))
    assert d_whole < 0.25 * d_est and d_whole < d_part < d_est, (d_est, d_part, d_whole)
    low = lambda y: np.fft.rfft(y)[: int(800 * ref.size / RATE)]  # noqa: E731  (bins under 800 Hz)
    edge = slice(2 * 512, -2 * 512)  # (the STFT's first and last windows taper)
    high = lambda y: np.fft.rfft(y)[int(5000 * ref.size / RATE):]  # noqa: E731  (bins over 5 kHz)
    for outside, tolerance in ((low, 1e-3), (high, 1e-2)):  # left as they were outside the range (above
        # it, the window's leakage from the bins under 4 kHz reaches about 0.2% of the largest bin)
        assert np.abs(outside(part[edge]) - outside(est[edge])).max() < tolerance * np.abs(outside(est[edge])).max()


def test_ranges_are_read_as_lo_hi_pairs():
    assert _ranges("860-4000,4000-8000") == [(860.0, 4000.0), (4000.0, 8000.0)]
    with pytest.raises(Exception, match="LO-HI"):
        _ranges("860")
