"""benchmarks/feature_ceiling.py's log-mel features: one frame per hop, causal."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from feature_ceiling import N_MELS, LogMel, fit_rvq, rvq_round_trip  # noqa: E402


def test_log_mel_frames_see_only_their_own_and_the_previous_hop():
    hop, frames = 320, 10
    features = LogMel(24000, hop)
    x = torch.randn(2, 1, frames * hop) * 0.1
    before = features(x)
    assert before.shape == (2, N_MELS, frames)
    later = x.clone()
    later[..., 6 * hop:] = torch.randn(2, 1, 4 * hop)  # change what follows frame 5
    after = features(later)
    assert torch.equal(after[..., :6], before[..., :6])
    assert not torch.allclose(after[..., 6], before[..., 6])
    earlier = x.clone()
    earlier[..., : 3 * hop] = 0.0  # frames 0-2 and the first half of frame 3's window
    changed = (features(earlier) - before).abs().amax(dim=(0, 1)) > 0
    assert changed[:4].all() and not changed[4:].any()


def test_residual_k_means_codes_its_own_points_exactly_and_more_levels_code_better():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(16, 8, generator=g) * 5
    books = fit_rvq(points, levels=1, size=16, iters=10)  # as many entries as points: each its own
    assert torch.allclose(rvq_round_trip(points, books), points, atol=1e-5)
    noisy = torch.randn(2000, 8, generator=g)
    errors = [(rvq_round_trip(noisy, fit_rvq(noisy, levels=n, size=16)) - noisy).pow(2).mean().item() for n in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.6 * noisy.pow(2).mean().item()
