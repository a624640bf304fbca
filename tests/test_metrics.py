"""Each metric on known signals: identical signals score best, white noise scores badly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec import metrics
from train.losses import MultiScaleMelLoss

torch.set_num_threads(1)
RATE = 16000


def babble(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Voiced syllables: a gliding harmonic series under a 3 Hz envelope, with pauses ``[T]``.

    Speech-like enough for PESQ's voice activity detection, which ignores pure tones.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voiced = sum(0.6**k * np.sin(k * phase) for k in range(1, 15))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2 * (np.sin(2 * np.pi * 0.4 * t) > -0.5)
    return (0.1 * voiced * envelope + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return babble(3.0)


@pytest.fixture(scope="module")
def noise(speech: np.ndarray) -> np.ndarray:
    return (0.1 * np.random.default_rng(1).standard_normal(len(speech))).astype(np.float32)


def test_si_sdr(speech, noise):
    assert metrics.si_sdr(speech, speech) > 100
    assert metrics.si_sdr(speech, 0.5 * speech) > 100  # scale-invariant
    assert metrics.si_sdr(speech, noise) < -20
    # 20 dB of added noise reads as about 20 dB.
    scaled = noise * np.sqrt(np.mean(speech**2) / np.mean(noise**2)) * 0.1
    assert metrics.si_sdr(speech, speech + scaled) == pytest.approx(20, abs=0.5)


def test_mel_distance(speech, noise):
    assert metrics.mel_distance(speech, speech, RATE) == 0.0
    assert metrics.mel_distance(speech, noise, RATE) > 5
    slightly = speech + 0.01 * noise
    assert 0 < metrics.mel_distance(speech, slightly, RATE) < metrics.mel_distance(speech, noise, RATE)


@pytest.mark.parametrize("length", [1, 120, 2047])
def test_mel_distance_scores_clips_shorter_than_its_longest_window(speech, noise, length):
    assert metrics.mel_distance(speech[:length], speech[:length], RATE) == 0.0
    assert metrics.mel_distance(speech[:length], noise[:length], RATE) > 0


def test_mel_distance_is_the_training_loss(speech, noise):
    loss = MultiScaleMelLoss(RATE)
    expected = float(loss(torch.from_numpy(speech)[None, None], torch.from_numpy(noise)[None, None]))
    assert metrics.mel_distance(speech, noise, RATE) == pytest.approx(expected, rel=1e-5)


def test_pesq_wb(speech, noise):
    assert metrics.pesq_wb(speech, speech, RATE) > 4.5
    assert metrics.pesq_wb(speech, noise, RATE) < 1.5
    # Resampled to 16 kHz: the same signal at 24 kHz scores the same way.
    hi = metrics._resample(speech.astype(np.float64), RATE, 24000)
    assert metrics.pesq_wb(hi, hi, 24000) > 4.5


def test_pesq_undefined_without_speech():
    silence = np.zeros(RATE, np.float32)
    assert np.isnan(metrics.pesq_wb(silence, silence, RATE))


def test_stoi(speech, noise):
    assert metrics.stoi(speech, speech, RATE) > 0.99
    assert metrics.stoi(speech, noise, RATE) < 0.5


def test_visqol(speech, noise):
    if not metrics.visqol_available():
        assert metrics.visqol(speech, speech, RATE, "audio") is None
        pytest.skip("visqol-python is not installed (optional)")
    for mode in ("speech", "audio"):
        same, bad = metrics.visqol(speech, speech, RATE, mode), metrics.visqol(speech, noise, RATE, mode)
        assert 3.5 < same <= 5 and 1 <= bad < same - 1.5, (mode, same, bad)
    with pytest.raises(ValueError):
        metrics.visqol(speech, speech, RATE, "music")


def test_visqol_missing_gives_none(speech, monkeypatch):
    monkeypatch.setattr(metrics, "visqol_available", lambda: False)
    assert metrics.visqol(speech, speech, RATE, "speech") is None


@pytest.mark.parametrize("lag", [0, 37, -21, 160])
def test_estimate_lag_and_align(speech, lag):
    delayed = np.concatenate([np.zeros(max(lag, 0), np.float32), speech])[max(-lag, 0):]
    assert metrics.estimate_lag(speech, delayed, max_lag=200) == lag
    ref, est = metrics.align(speech, delayed, lag)
    assert len(ref) == len(est) > 0
    np.testing.assert_array_equal(ref, est)


def test_correlation(speech, noise):
    assert metrics.correlation(speech, 3 * speech) == pytest.approx(1.0)
    assert metrics.correlation(speech, -speech) == pytest.approx(-1.0)
    assert abs(metrics.correlation(speech, noise)) < 0.05
    assert metrics.correlation(speech, np.zeros_like(speech)) == 0.0


def test_estimate_lag_stays_in_range(speech):
    far = np.concatenate([np.zeros(500, np.float32), speech])
    assert abs(metrics.estimate_lag(speech, far, max_lag=100)) <= 100
    assert metrics.estimate_lag(speech, np.zeros_like(speech), max_lag=100) == 0


def test_metrics_refuse_misaligned_input(speech):
    with pytest.raises(ValueError, match="align"):
        metrics.si_sdr(speech, speech[:-1])
    with pytest.raises(ValueError, match="mono"):
        metrics.stoi(np.stack([speech, speech]), np.stack([speech, speech]), RATE)


def test_score_clip_matches_the_metrics_and_their_scope(speech, noise, monkeypatch):
    monkeypatch.setattr(metrics, "visqol_available", lambda: False)
    noisy = speech + 0.3 * noise
    on_speech = metrics.score_clip(speech, noisy, RATE, "speech")
    assert list(on_speech) == list(metrics.METRICS)
    assert on_speech["pesq_wb"] == metrics.pesq_wb(speech, noisy, RATE)
    assert on_speech["stoi"] == metrics.stoi(speech, noisy, RATE)
    assert on_speech["si_sdr"] == metrics.si_sdr(speech, noisy)
    assert on_speech["visqol"] is None  # not installed
    on_music = metrics.score_clip(speech, noisy, RATE, "music", ("pesq_wb", "stoi", "mel_distance"))
    assert on_music["pesq_wb"] is None and on_music["stoi"] is None  # speech metrics on speech only
    assert on_music["mel_distance"] == metrics.mel_distance(speech, noisy, RATE)


def test_score_clip_turns_unscorable_into_none_and_refuses_unknown_names(speech):
    silence = np.zeros_like(speech)
    assert metrics.score_clip(silence, speech, RATE, "speech", ("pesq_wb",)) == {"pesq_wb": None}
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.score_clip(speech, speech, RATE, "speech", ("pesq",))


def test_mean_scores_leaves_out_what_was_not_scored():
    rows = [{"pesq_wb": 2.0, "stoi": None, "visqol": None}, {"pesq_wb": 3.0, "stoi": 0.5, "visqol": None}]
    assert metrics.mean_scores(rows) == {"pesq_wb": 2.5, "stoi": 0.5}
    assert metrics.mean_scores([]) == {}
