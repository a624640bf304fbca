"""codec.kmeans: the nearest-entry search and k-means that codebooks start from."""

from __future__ import annotations

import torch

from codec.kmeans import kmeans, nearest


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    x = (means[:, None, :] + 0.1 * torch.randn(4, 100, 3, generator=g)).reshape(-1, 3)
    found = None
    for seed in range(5):  # a start with two seeds in one blob may end in a local optimum
        centres = kmeans(x, 4, iters=10, generator=torch.Generator().manual_seed(seed))
        if torch.cdist(means, centres).min(1).values.max() < 0.1:
            found = centres
            break
    assert found is not None
    # every blob has its own centre, at its mean
    assert sorted(nearest(means, found).tolist()) == [0, 1, 2, 3]


def _heavy_tailed(n: int, g: torch.Generator) -> torch.Tensor:
    """Student-t frames of 2 degrees of freedom in 16 dimensions ``[n, 16]``: a dense core and
    far, sparse tails, as the residuals of the middle RVQ levels have."""
    chi2 = torch.randn(n, 2, generator=g).square().sum(1, keepdim=True)
    return torch.randn(n, 16, generator=g) / (chi2 / 2).sqrt()


def test_min_fraction_raises_usage_on_held_out_frames():
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        fit, held_out = _heavy_tailed(6000, g), _heavy_tailed(1500, g)
        used = []
        for min_fraction in (0.0, 0.5):
            c = kmeans(fit, 64, 12, torch.Generator().manual_seed(seed), min_fraction=min_fraction)
            used.append((torch.bincount(nearest(held_out, c), minlength=64) > 0).float().mean().item())
        # plain k-means spends entries on tail frames that other frames rarely reach (67-86% of
        # the entries used, seeds 0-5); with the floor, 86-95%, each seed 8-22 points more
        assert used[1] > used[0] + 0.05, used


def test_nearest_agrees_with_cdist_across_chunks(monkeypatch):
    import codec.kmeans
    monkeypatch.setattr(codec.kmeans, "CHUNK", 7)  # several chunks, the last one short
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(50, 5, generator=g), torch.randn(9, 5, generator=g)
    assert torch.equal(nearest(x, c), torch.cdist(x, c).argmin(1))


def test_fewer_rows_than_entries_gives_every_row_an_entry():
    # the quantizer's first batch of a tiny run can hold fewer frames than a codebook has entries
    # (every row is an entry from the start: one iteration already leaves each row its own;
    # a start of random rows leaves some rows sharing a mean after one iteration)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    for seed in range(10):
        centres = kmeans(x, 8, iters=1, generator=torch.Generator().manual_seed(seed))
        assert centres.shape == (8, 3) and torch.isfinite(centres).all()
        assert torch.cdist(x, centres).min(1).values.max() < 1e-5, seed  # each row has an entry on it


def test_nearest_of_no_rows_is_empty():
    # (an encode of zero frames searches no rows)
    assert nearest(torch.zeros(0, 4), torch.randn(8, 4)).shape == (0,)
