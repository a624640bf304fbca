"""benchmarks/feature_ceiling.py's residual k-means."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from feature_ceiling import fit_rvq, rvq_round_trip  # noqa: E402


def test_residual_k_means_codes_its_own_points_exactly_and_more_levels_code_better():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(16, 8, generator=g) * 5
    books = fit_rvq(points, levels=1, size=16, iters=10)  # as many entries as points: each its own
    assert torch.allclose(rvq_round_trip(points, books), points, atol=1e-5)
    noisy = torch.randn(2000, 8, generator=g)
    errors = [(rvq_round_trip(noisy, fit_rvq(noisy, levels=n, size=16)) - noisy).pow(2).mean().item() for n in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.6 * noisy.pow(2).mean().item()
