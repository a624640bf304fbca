"""The STFT phase loss measures phase only, where the original has energy: zero for the
original at any level, high for the right magnitudes with the wrong phases, and its
frame-to-frame term blind to a delay, which changes no phase advance."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import MultiResolutionSTFTLoss, PhaseLoss


def voiced(seconds: float = 0.5, rate: int = 24000, f0: float = 140.0) -> torch.Tensor:
    """A harmonic tone with a formant-like spectral tilt ``[2, 1, T]`` (two pitches)."""
    t = torch.arange(int(rate * seconds)) / rate
    rows = [sum(math.exp(-k / 8) * torch.sin(2 * math.pi * k * f * t + k) for k in range(1, 30))
            for f in (f0, 1.5 * f0)]
    return 0.05 * torch.stack(rows).unsqueeze(1)


def with_phases_of(x: torch.Tensor, phases: torch.Tensor, n_fft: int = 640, hop: int = 160) -> torch.Tensor:
    """``x``'s STFT magnitudes with other ``phases``, back to ``[B, 1, T]``."""
    window = torch.hann_window(n_fft)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop, window=window, return_complex=True)
    y = torch.istft(torch.polar(spec.abs(), phases.expand(spec.shape)), n_fft, hop, window=window, length=x.shape[-1])
    return y.reshape(x.shape)


def test_the_original_at_any_level_scores_zero_and_silence_scores_one():
    loss, x = PhaseLoss(), voiced()
    assert loss(x, x).item() < 1e-4
    assert loss(0.1 * x, x).item() < 1e-4  # phase, not level
    assert abs(loss(torch.zeros_like(x), x).item() - 1.0) < 1e-4


def test_the_right_magnitudes_with_random_phases_cost_more_than_noise_at_20_db():
    loss, x = PhaseLoss(), voiced()
    g = torch.Generator().manual_seed(0)
    scrambled = with_phases_of(x, 2 * math.pi * torch.rand(321, 76, generator=g))
    noisy = x + 0.1 * x.std() * torch.randn(x.shape, generator=g)
    assert loss(scrambled, x).item() > 0.4
    assert loss(noisy, x).item() < 0.1
    # the magnitude loss does not tell them apart as clearly
    stft = MultiResolutionSTFTLoss()
    assert stft(scrambled, x).item() < 4 * stft(noisy, x).item()


def test_a_delay_changes_the_phase_but_not_its_advance_from_frame_to_frame():
    loss, x = PhaseLoss(), voiced(seconds=0.6)
    delayed = torch.nn.functional.pad(x, (40, 0))[..., : x.shape[-1]]
    inst, _, freq = loss.terms(delayed[..., 640:], x[..., 640:])  # past the delayed copy's onset
    assert inst.item() > 0.3
    assert freq.item() < 0.02


def test_a_silent_example_is_left_out_and_the_gradient_stays_finite():
    loss, x = PhaseLoss(), voiced()
    y = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    alone = loss(y[:1], x[:1]).item()
    x[1] = 0.0
    value = loss(y, x)
    value.backward()
    assert abs(value.item() - alone) < 1e-6  # the mean of the one example with a phase to follow
    assert torch.isfinite(y.grad).all() and y.grad[0].abs().sum() > 0


def test_shares_weigh_the_three_terms():
    x = voiced(seconds=0.6)
    delayed = torch.nn.functional.pad(x, (40, 0))[..., : x.shape[-1]][..., 640:]
    x = x[..., 640:]
    inst, delay, freq = PhaseLoss().terms(delayed, x)
    assert abs(PhaseLoss()(delayed, x).item() - (inst + delay + freq).item() / 3) < 1e-5
    assert abs(PhaseLoss(shares=(0.0, 0.0, 1.0))(delayed, x).item() - freq.item()) < 1e-6
    assert abs(PhaseLoss(shares=(0.0, 1.0, 3.0))(delayed, x).item() - (delay + 3 * freq).item() / 4) < 1e-5
    # without the absolute phase, which a delay moves, a delayed copy costs far less
    assert PhaseLoss(shares=(0.0, 1.0, 1.0))(delayed, x).item() < 0.3 * PhaseLoss()(delayed, x).item()


def test_without_the_absolute_share_a_constant_phase_offset_costs_nothing():
    """With the absolute-phase share 0, a constant phase offset (which changes only that term)
    costs nothing."""
    x = voiced()
    spec = torch.stft(x.reshape(-1, x.shape[-1]), 640, 160, window=torch.hann_window(640), return_complex=True)
    turned = with_phases_of(x, spec.angle() + 1.0)
    assert PhaseLoss(shares=(0.0, 1.0, 1.0))(turned, x).item() < 0.05
    assert PhaseLoss()(turned, x).item() > 0.1


def test_bad_shares_are_refused():
    for shares in ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0), (1.0, 1.0), (math.nan, 1.0, 1.0), (0.0, 0.0, math.inf)):
        with pytest.raises(ValueError, match="shares"):
            PhaseLoss(shares=shares)
