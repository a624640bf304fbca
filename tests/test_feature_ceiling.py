"""benchmarks/feature_ceiling.py's round trip of frames through residual codebooks."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from feature_ceiling import rvq_round_trip  # noqa: E402

from train.fit_codebooks import fit_rvq  # noqa: E402


def books_of(frames, levels, size=16):
    g = torch.Generator().manual_seed(0)
    return list(fit_rvq(frames.clone(), levels, size, 10, g, log=lambda _: None))


def test_round_trip_codes_the_books_own_points_exactly_and_more_levels_code_better():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(16, 8, generator=g) * 5
    assert torch.allclose(rvq_round_trip(points, books_of(points, 1)), points, atol=1e-5)  # each its own entry
    noisy = torch.randn(2000, 8, generator=g)
    errors = [(rvq_round_trip(noisy, books_of(noisy, n)) - noisy).pow(2).mean().item() for n in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.6 * noisy.pow(2).mean().item()
