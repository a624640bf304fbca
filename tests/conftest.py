"""Tiny models and synthetic audio: the suite needs neither ../shared nor trained weights
(except the tests that check the shipped default model itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import Codec, CodecConfig, save_model

# Real strides (hop 320, 75 Hz, 1024 codes) with a few channels: exercises the real framing.
SMALL = CodecConfig(channels=4, latent_dim=16, n_q=32, codebook_size=1024, name="test-small")
# Fastest possible model: hop 4 at 8 kHz.
TINY = CodecConfig(sample_rate=8000, channels=4, ratios=(2, 2), latent_dim=8, n_q=4, codebook_size=16,
                   bandwidths=(8.0, 16.0, 32.0), name="test-tiny")


def make_model(cfg: CodecConfig, seed: int = 0) -> Codec:
    torch.manual_seed(seed)
    return Codec(cfg).eval()


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A chirp plus noise ``[C, T]``: deterministic, non-trivial audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for c in range(channels):
        f0 = 200 + 150 * c
        sig = 0.3 * np.sin(2 * np.pi * (f0 + 300 * t) * t) + 0.05 * rng.standard_normal(t.shape)
        out.append(sig)
    return np.stack(out).astype(np.float32)


@pytest.fixture
def small_model() -> Codec:
    return make_model(SMALL)


@pytest.fixture
def small_model_file(tmp_path: Path, small_model: Codec) -> Path:
    path = tmp_path / "small.safetensors"
    save_model(small_model, path)
    return path


@pytest.fixture
def stereo_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(str(path), tone(1.3, 44100, 2).T, 44100)
    return path
