"""Nearest-entry search and k-means of latent frames: what the quantizer's first training
batch and ``train.fit_codebooks`` both start codebooks from."""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 16384  # rows per distance matrix: 16,384 x 1,024 float64 = 128 MB


def nearest(x: Tensor, centres: Tensor, norms: Tensor | None = None) -> Tensor:
    """Index of the nearest row of ``centres`` ``[K, D]`` for each row of ``x`` ``[N, D]`` -> ``[N]``.

    ``norms``: the centres' squared norms ``[K]`` when the caller keeps them. Rows are searched
    ``CHUNK`` at a time (a distance matrix of an hour's frames would take gigabytes); in float64
    each row's choice does not depend on the others, so an offline search of a whole file
    chooses as a stream of single frames does."""
    if norms is None:
        norms = (centres * centres).sum(-1)
    # |x|^2 is the same for every entry, so |c|^2 - 2 x.c ranks them
    # (no rows split into one empty chunk: an empty result)
    return torch.cat([torch.addmm(norms[None, :], rows, centres.T, alpha=-2).argmin(-1) for rows in x.split(CHUNK)])


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None,
           min_fraction: float = 0.0) -> Tensor:
    """Lloyd's k-means of the rows of ``x`` ``[N, D]`` (float32 or float64) into ``k`` centres
    ``[k, D]``; ``generator`` (None: the global one) must be on ``x``'s device.

    The start is ``k`` distinct random rows (with fewer rows than ``k``: every row, then random
    rows again, moved apart by a little noise). An entry left without rows, or (but in the last
    quarter of the iterations, which let the centres settle) with fewer than ``min_fraction`` of
    the mean count, is moved to a random row: entries that only outliers choose are rarely used
    on other audio (as the EMA quantizer re-seeds its dead entries while training)."""
    n = x.shape[0]
    if n >= k:
        centres = x[torch.randperm(n, generator=generator, device=x.device)[:k]].clone()
    else:
        extra = x[torch.randint(n, (k - n,), generator=generator, device=x.device)]
        noise = torch.randn(extra.shape, generator=generator, device=x.device, dtype=x.dtype)
        centres = torch.cat([x, extra + 1e-3 * x.std() * noise])
    settle = iters - max(1, iters // 4)
    for it in range(iters):
        assign = nearest(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(x), centres)
        floor = min_fraction * n / k if it < settle else 0.0
        weak = ((counts == 0) | (counts < floor)).nonzero()[:, 0]
        if weak.numel():
            centres[weak] = x[torch.randint(n, (weak.numel(),), generator=generator, device=x.device)]
    return centres
