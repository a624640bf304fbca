"""The discriminators see every example at one level, so they can learn at any playback
level: quiet crops must not leave them judging by their biases alone."""

from __future__ import annotations

import math

import pytest
import torch

import train.trainer
from train.discriminators import JUDGED_RMS, MAX_GAIN, at_judged_level
from train.prepare import build_cache
from train.trainer import Trainer
from train_support import tiny_config, write_corpus


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1).sqrt()


def test_real_examples_are_brought_to_one_level_and_fakes_keep_their_ratio():
    torch.manual_seed(0)
    real = torch.randn(3, 1, 800) * torch.tensor([2e-3, 1e-2, 0.5])[:, None, None]  # gains under the cap
    fake = real * 0.5 + 1e-5 * torch.randn_like(real)
    r, f = at_judged_level(real, fake.requires_grad_())
    torch.testing.assert_close(rms(r), torch.full((3, 1), JUDGED_RMS))
    torch.testing.assert_close(rms(f) / rms(r), rms(fake) / rms(real))  # a level error stays visible
    f.sum().backward()  # the gain is a constant: d(scaled fake)/d(fake) is the gain alone
    torch.testing.assert_close(fake.grad[:, 0, 0], (JUDGED_RMS / rms(real))[:, 0].clamp(max=MAX_GAIN))


def test_near_silence_is_raised_by_the_largest_gain_only():
    silent, noise = torch.zeros(2, 1, 800), 1e-3 * torch.randn(2, 1, 800)
    silent[1] = 1e-7 * torch.randn(800)
    r, f = at_judged_level(silent, noise)
    assert torch.isfinite(r).all() and torch.isfinite(f).all()
    torch.testing.assert_close(rms(f), rms(noise) * MAX_GAIN)


def quiet_pairs(batch: int, seed: int, level: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmonic tones (real) against white noise of the same level (fake), ``[B, 1, 2048]`` at 8 kHz."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(2048) / 8000
    f0 = 100 + 200 * torch.rand(batch, 1, 1, generator=g)
    real = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    real = level * real / rms(real)[..., None]
    return real, level * torch.randn(real.shape, generator=g)


@pytest.mark.parametrize("scaled", [True, False])
def test_discriminators_learn_to_tell_quiet_audio_apart(tmp_path, monkeypatch, scaled):
    """At -60 dBFS: with the level scaling they learn within 50 steps; without it (the
    identity in its place) they do not start, which is what the scaling is for."""
    if not scaled:
        monkeypatch.setattr(train.trainer, "at_judged_level", lambda real, fake: (real, fake))
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(loss={"adversarial_start_step": 0}, optim={"disc_lr": 1e-3}), _no_cache(tmp_path), tmp_path)
    hinge = [float(trainer.discriminator_step(*quiet_pairs(4, s))["disc/hinge"]) for s in range(50)]
    if scaled:
        assert min(hinge[-5:]) < 1.6, hinge
    else:
        assert min(hinge) > 1.95, hinge


def _no_cache(tmp_path):
    """A cache of one short file: the trainer needs one, these tests draw no crops."""
    build_cache(write_corpus(tmp_path / "d", speech=1, music=0), tmp_path / "c", 8000, workers=1)
    return tmp_path / "c"
