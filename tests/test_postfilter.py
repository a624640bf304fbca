"""The pitch postfilter finds the period of voiced audio, removes noise between its harmonics,
leaves aperiodic audio and silence alone, and streams exactly as it runs offline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec.config import CodecConfig
from codec import postfilter
from codec.postfilter import PitchPostfilter
from conftest import SMALL, make_model

RATE, HOP = 24000, 320


def voiced(f0: float, seconds: float = 1.0, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A harmonic tone (20 harmonics, falling 6 dB an octave) and the same plus white noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    clean = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, 21) if k * f0 < RATE / 2)
    clean = 0.1 * clean / np.sqrt(np.mean(clean**2))
    rng = np.random.default_rng(seed)
    return clean, clean + noise * 0.1 * rng.standard_normal(len(t))


def run(pf: PitchPostfilter, x: np.ndarray) -> np.ndarray:
    return pf(torch.from_numpy(x)[None, None])[0, 0].numpy()


@pytest.mark.parametrize("f0", [60.0, 80.0, 150.0, 230.0, 440.0, 500.0])  # the range's ends too
def test_finds_the_period_not_a_multiple_of_it(f0):
    pf = PitchPostfilter(RATE, HOP, 0.75)
    _, x = voiced(f0, 0.1, noise=0.3)
    lag, gain = pf.pitch(x[None, -pf.window :])
    assert abs(int(lag[0]) - RATE / f0) <= 1.0, (lag, RATE / f0)
    assert 0.3 < gain[0] <= 0.75


def test_removes_noise_between_the_harmonics():
    clean, noisy = voiced(150.0, noise=0.5)
    out = run(PitchPostfilter(RATE, HOP, 0.75), noisy)
    tail = slice(RATE // 4, None)  # after the first frames, whose window is still filling
    before = np.mean((noisy[tail] - clean[tail]) ** 2)
    after = np.mean((out[tail] - clean[tail]) ** 2)
    assert after < 0.6 * before, (after, before)
    # the harmonics keep their level: the output's correlation with the clean tone stays whole
    gain = np.dot(out[tail], clean[tail]) / np.dot(clean[tail], clean[tail])
    assert gain > 0.9, gain


def test_leaves_aperiodic_audio_silence_and_strength_zero_alone():
    noise = 0.1 * np.random.default_rng(1).standard_normal(RATE)
    out = run(PitchPostfilter(RATE, HOP, 0.75), noise)
    assert np.mean((out - noise) ** 2) < 0.02 * np.mean(noise**2)
    silence = np.zeros(RATE)
    np.testing.assert_array_equal(run(PitchPostfilter(RATE, HOP, 0.75), silence), silence)
    _, x = voiced(150.0, noise=0.5)
    off = PitchPostfilter(RATE, HOP, 0.0)
    np.testing.assert_array_equal(run(off, x), x)


def test_streaming_in_any_chunks_equals_offline_exactly():
    _, x = voiced(180.0, seconds=1.6, noise=0.4)
    x = np.stack([x, voiced(95.0, seconds=1.6, noise=0.2, seed=3)[1]])[:, None]  # [2, 1, T]
    pf = PitchPostfilter(RATE, HOP, 0.75)
    offline = pf(torch.from_numpy(x)).numpy()
    rng = np.random.default_rng(0)
    parts, i, frames = [], 0, x.shape[-1] // HOP
    pf.streaming_on = True
    while i < frames:
        n = int(rng.integers(0, 6))  # empty chunks too
        parts.append(pf(torch.from_numpy(x[..., i * HOP : (i + n) * HOP])).numpy())
        i += n
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), offline)
    assert not np.array_equal(offline, x)  # (it did filter)


def test_offline_blocks_of_frames_do_not_change_the_output(monkeypatch):
    _, x = voiced(140.0, seconds=1.6, noise=0.4)
    wav = torch.from_numpy(x)[None, None]
    whole = PitchPostfilter(RATE, HOP, 0.75)(wav)  # 120 frames: one block
    monkeypatch.setattr(postfilter, "BLOCK_FRAMES", 7)
    torch.testing.assert_close(PitchPostfilter(RATE, HOP, 0.75)(wav), whole, rtol=0, atol=0)
    assert not torch.equal(whole, wav)


def test_input_must_be_whole_frames():
    with pytest.raises(ValueError, match="whole frames"):
        PitchPostfilter(RATE, HOP, 0.5)(torch.zeros(1, 1, HOP + 1))


def test_config_bounds_and_the_model_applies_it():
    with pytest.raises(ValueError, match="postfilter"):
        CodecConfig(postfilter=1.5)
    cfg = dataclasses.replace(SMALL, postfilter=0.75)
    plain, filtered = make_model(SMALL), make_model(cfg)
    assert filtered.postfilter.strength == 0.75 and plain.postfilter.strength == 0.0
    _, x = voiced(150.0, seconds=0.5, noise=0.5)
    wav = torch.from_numpy(x).float()[None, None]
    codes = plain.encode(wav)
    expected = PitchPostfilter(cfg.sample_rate, cfg.hop_length, 0.75)(plain.decode(codes))
    torch.testing.assert_close(filtered.decode(codes), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_sample_spoils_no_other(bad):
    _, x = voiced(150.0, noise=0.3)
    x[5000] = bad
    with np.errstate(all="raise"):  # no floating-point warning either
        out = run(PitchPostfilter(RATE, HOP, 0.75), x)
    assert np.flatnonzero(~np.isfinite(out)).tolist() == [5000]


def test_a_stream_keeps_its_channel_count():
    pf = PitchPostfilter(RATE, HOP, 0.75)
    pf.streaming_on = True
    pf(torch.zeros(2, 1, HOP))
    with pytest.raises(ValueError, match="2 channels"):
        pf(torch.zeros(1, 1, HOP))
