"""Residual vector quantizer with learned low-dimensional codes.

Each level projects the residual to ``codebook_dim`` (8) dimensions and picks the nearest
code (Euclidean). Why this design: in 8 dimensions the search is cheap on a CPU, and
learned codes (a codebook loss plus a commitment loss) need no EMA bookkeeping. Why not
L2-normalised (cosine) codes: we trained them first and they collapsed to one or two entries
per level, because the encoder output carries a large common offset, so every projected frame
points the same way and the cosine choice is nearly constant; Euclidean search does not care
about that offset. K-means initialisation (first training batch) and dead-code replacement
(from the current batch) keep every entry in use.

The number of active codebooks is always an explicit argument: ``n_q`` per example during
training (quantizer dropout is drawn by :func:`sample_n_q`), an int at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class QuantizerOutput:
    """Result of a training forward pass.

    Attributes:
        x: quantized latent ``[B, D, F]`` (straight-through gradients to the input).
        codes: code indices ``[B, K, F]`` (entries of inactive levels are still computed).
        commitment_loss: pulls encoder outputs towards their codes (scalar).
        codebook_loss: pulls codes towards encoder outputs (scalar).
        metrics: per-level ``usage/q{i}`` (fraction of entries used) and ``perplexity/q{i}``.
    """

    x: Tensor
    codes: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def sample_n_q(batch: int, choices: tuple[int, ...], dropout: float, generator: torch.Generator | None = None) -> Tensor:
    """Quantizer dropout: per example, with probability ``dropout`` draw n_q uniformly from
    ``choices``, otherwise use the largest. Returns ``[B]`` int64."""
    n_max = max(choices)
    options = torch.tensor(sorted(choices))
    pick = options[torch.randint(len(options), (batch,), generator=generator)]
    drop = torch.rand(batch, generator=generator) < dropout
    return torch.where(drop, pick, torch.full_like(pick, n_max))


class Codebook(nn.Module):
    """One quantizer level. Latent frames ``[N, D]`` -> codes ``[N]`` -> latent ``[N, D]``."""

    def __init__(self, dim: int, size: int, code_dim: int, dead_threshold: float = 0.05) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, code_dim)
        self.out_proj = nn.Linear(code_dim, dim)
        self.codebook = nn.Parameter(torch.randn(size, code_dim))
        self.dead_threshold = dead_threshold
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("usage", torch.ones(size))  # EMA of selections per batch

    def project(self, r: Tensor) -> Tensor:
        return self.in_proj(r)

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``z`` ``[N, d]``.

        Computed in float64 so that the choice does not depend on how many frames are
        searched at once (streaming and offline agree exactly)."""
        z64, c64 = z.detach().double(), self.codebook.detach().double()
        dist = (c64 * c64).sum(-1)[None, :] - 2 * z64 @ c64.T  # |z|^2 is the same for every code
        return dist.argmin(dim=-1)

    def embed(self, idx: Tensor) -> Tensor:
        return self.out_proj(F.embedding(idx, self.codebook))

    @torch.no_grad()
    def init_from(self, r: Tensor) -> None:
        """Data-dependent initialisation on the first batch of residuals ``r`` ``[N, D]``.

        The projection is rescaled so that projected frames have zero mean and unit variance,
        then the codebook is fitted with k-means. Why: at initialisation the encoder's
        output varies little from frame to frame next to its constant part, so the projected
        cloud is tiny, and Adam, moving every weight by about the learning rate per step,
        carried the whole cloud away from the codebook faster than codes could follow
        (usage collapsed to a handful of entries). At unit scale those steps are negligible.
        """
        if r.shape[0] < 2:
            return
        ze = self.in_proj(r)
        mean, std = ze.mean(0), ze.std(0).clamp(min=1e-5)
        self.in_proj.weight.data.div_(std[:, None])
        self.in_proj.bias.data.sub_(mean).div_(std)
        self.codebook.data.copy_(_kmeans(self.in_proj(r), self.codebook.shape[0]))
        self.initialized.fill_(True)
        if dist.is_available() and dist.is_initialized():
            for t in (self.in_proj.weight.data, self.in_proj.bias.data, self.codebook.data):
                dist.broadcast(t, 0)

    @torch.no_grad()
    def learn_from(self, z: Tensor, idx: Tensor) -> None:
        """Dead-code replacement: entries unused for a while move to current inputs ``z``."""
        if z.shape[0] == 0:
            return
        counts = torch.bincount(idx, minlength=self.codebook.shape[0]).to(self.usage)
        # Usage EMA scaled so that uniform use is 1; an entry unused for ~13 steps is dead
        # and re-seeded from current inputs. Fast on purpose: while the encoder is learning,
        # its output moves faster than gradient steps can move codes, and recycling unused
        # entries is what keeps the codebook on the data (slower recycling lost 90% of usage).
        self.usage.mul_(0.8).add_(counts * 0.2 * self.codebook.shape[0] / max(z.shape[0], 1))
        dead = self.usage < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(z.shape[0], (n_dead,), device=z.device)
            self.codebook.data[dead] = z[pick] + 1e-3 * torch.randn_like(z[pick])
            self.usage[dead] = 1.0
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.codebook.data, 0)
            dist.broadcast(self.usage, 0)


def _kmeans(z: Tensor, k: int, iters: int = 10) -> Tensor:
    """Euclidean k-means of rows of ``z`` ``[N, d]`` into ``k`` centres (sampled with replacement)."""
    centres = z[torch.randint(z.shape[0], (k,), device=z.device)].clone()
    centres += 1e-3 * z.std() * torch.randn_like(centres)
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k).unsqueeze(-1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


class ResidualVectorQuantizer(nn.Module):
    """``n_q`` codebooks, each quantizing what the previous ones left over."""

    def __init__(self, dim: int, n_q: int, size: int, code_dim: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(Codebook(dim, size, code_dim) for _ in range(n_q))
        self.codebook_size = size

    @property
    def n_q(self) -> int:
        return len(self.levels)

    def forward(self, z: Tensor, n_q: Tensor) -> QuantizerOutput:
        """Training pass. ``z``: ``[B, D, F]``; ``n_q``: active codebooks per example ``[B]``.

        Always runs in float32, even under autocast: codebooks and code choices need the
        precision, and the cost is negligible next to the convolutions."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float(), n_q)

    def _forward(self, z: Tensor, n_q: Tensor) -> QuantizerOutput:
        b, d, f = z.shape
        residual = z.transpose(1, 2).reshape(b * f, d)
        active_per_row = n_q.to(z.device).repeat_interleave(f)  # [B*F]
        out = torch.zeros_like(residual)
        codes, commit, cb_loss, metrics = [], z.new_zeros(()), z.new_zeros(()), {}
        for i, level in enumerate(self.levels):
            mask = active_per_row > i
            if not bool(mask.any()):
                codes.append(torch.zeros(b * f, dtype=torch.long, device=z.device))
                continue
            if self.training and not bool(level.initialized):
                level.init_from(residual[mask].detach())
            ze = level.project(residual)
            idx = level.nearest(ze)
            if self.training:
                level.learn_from(ze[mask].detach(), idx[mask])
            zq = F.embedding(idx, level.codebook)
            m = mask.unsqueeze(-1).to(z.dtype)
            denom = m.sum().clamp(min=1) * ze.shape[-1]
            commit = commit + (((ze - zq.detach()) ** 2) * m).sum() / denom
            cb_loss = cb_loss + (((zq - ze.detach()) ** 2) * m).sum() / denom
            step = level.out_proj(ze + (zq - ze).detach()) * m
            out = out + step
            residual = residual - step
            codes.append(idx)
            metrics.update(_usage_metrics(idx[mask], self.codebook_size, i))
        x = out.reshape(b, f, d).transpose(1, 2)
        codes_t = torch.stack(codes, dim=1).reshape(b, f, -1).transpose(1, 2)
        return QuantizerOutput(x, codes_t, commit, cb_loss, metrics)

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int) -> Tensor:
        """``[B, D, F]`` -> codes ``[B, n_q, F]``."""
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in 1..{self.n_q}, got {n_q}")
        b, d, f = z.shape
        residual = z.transpose(1, 2).reshape(b * f, d)
        codes = []
        for level in self.levels[:n_q]:
            idx = level.nearest(level.project(residual))
            residual = residual - level.embed(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1).reshape(b, f, n_q).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, F]`` (K <= n_q) -> latent ``[B, D, F]``."""
        b, k, f = codes.shape
        if k > self.n_q:
            raise ValueError(f"{k} codebooks given, the model has {self.n_q}")
        flat = codes.transpose(1, 2).reshape(b * f, k)
        out = sum(level.embed(flat[:, i]) for i, level in enumerate(self.levels[:k]))
        d = self.levels[0].out_proj.out_features
        return torch.as_tensor(out).reshape(b, f, d).transpose(1, 2)


def _usage_metrics(idx: Tensor, size: int, level: int) -> dict[str, Tensor]:
    counts = torch.bincount(idx, minlength=size).float()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return {f"usage/q{level}": (counts > 0).float().mean(), f"perplexity/q{level}": entropy.exp()}
