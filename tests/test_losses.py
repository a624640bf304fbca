"""The band-envelope correlation loss (STOI's intermediate measure) behaves as a measure of
intelligibility: zero for the original at any level, growing with noise and smearing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pystoi import stoi

from train.losses import EnvelopeCorrelationLoss


def syllables(rate: int, seconds: float = 0.6, seed: int = 0, floor: float = 0.0) -> torch.Tensor:
    """Noise bursts at a syllable rate (4 Hz) through a few formant-like tones ``[2, 1, T]``;
    ``floor`` > 0 keeps the envelope from reaching silence."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(rate * seconds)) / rate
    envelope = (torch.sin(2 * math.pi * 4 * t) + 1) ** 2 + floor
    tones = sum(torch.sin(2 * math.pi * f * t + float(torch.rand(1, generator=g)) * 6) for f in (300, 700, 1500, 2600))
    noise = torch.randn(t.shape, generator=g)
    return torch.stack([0.1 * envelope * tones, 0.1 * envelope * noise]).unsqueeze(1)


@pytest.mark.parametrize("rate", [24000, 8000])
def test_the_original_at_any_level_scores_zero(rate):
    loss = EnvelopeCorrelationLoss(rate)
    x = syllables(rate)
    assert loss(x, x).item() < 1e-4
    assert loss(0.2 * x, x).item() < 1e-4


def test_noise_raises_the_loss_step_by_step():
    loss = EnvelopeCorrelationLoss(24000)
    x = syllables(24000)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    values = [loss(x + level * noise, x).item() for level in (0.0, 0.01, 0.05, 0.3)]
    assert values == sorted(values) and values[-1] > values[1] + 0.1, values


def test_smearing_the_envelope_costs_more_than_changing_the_level():
    loss = EnvelopeCorrelationLoss(24000)
    x = syllables(24000)
    signs = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).sign()
    smeared = torch.nn.functional.avg_pool1d(x.abs(), 2401, stride=1, padding=1200) * signs
    assert loss(smeared, x).item() > loss(0.5 * x, x).item() + 0.1


def test_gradient_reaches_the_output_and_is_finite():
    loss = EnvelopeCorrelationLoss(24000)
    x = syllables(24000)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).requires_grad_(True)
    loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_silent_examples_do_not_produce_nan():
    loss = EnvelopeCorrelationLoss(24000)
    x = torch.zeros(2, 1, 12000)
    y = torch.zeros(2, 1, 12000, requires_grad=True)
    value = loss(y, x)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_matches_stoi_where_nothing_is_silent(noise):
    """At STOI's own rate (10 kHz), on broadband bursts with no silent frames (where the
    two differ), one minus the loss is STOI's value: normalisation, clipping (without it
    the value is 0.07 lower at the higher noise) and correlation included."""
    x = syllables(10000, seconds=1.5, floor=0.3)[1:]  # the noise bursts
    y = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    ours = 1 - EnvelopeCorrelationLoss(10000)(y, x).item()
    reference = stoi(x[0, 0].numpy().astype(np.float64), y[0, 0].numpy().astype(np.float64), 10000)
    assert ours == pytest.approx(reference, abs=0.03)


def test_a_silent_example_is_left_out_of_the_mean():
    """A crop of digital silence has no envelope to follow: it must not count (as zero
    correlation) against a perfect reconstruction of the other crops."""
    loss = EnvelopeCorrelationLoss(24000)
    x = torch.cat([syllables(24000)[:1], torch.zeros(1, 1, int(24000 * 0.6))])
    assert loss(x.clone(), x).item() < 1e-4


def test_too_short_a_crop_is_refused():
    loss = EnvelopeCorrelationLoss(24000)
    with pytest.raises(ValueError, match="at least"):
        loss(torch.zeros(1, 1, 1000), torch.zeros(1, 1, 1000))
