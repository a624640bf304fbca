"""EnCodec's gradient balancer: loss weights become shares of the gradient, not multipliers.

Why: the adversarial and feature-matching gradients change scale by orders of magnitude as
the discriminators learn; weighting raw losses then needs retuning whenever anything
changes. The balancer measures the gradient of every loss with respect to the generated
audio ``y`` and rescales each so that, on average, loss ``k`` contributes a fraction
``w_k / sum(w)`` of a gradient of norm ``total_norm`` (sums over the losses present).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Balancer(nn.Module):
    """Holds the running average of each loss's gradient norm (saved in checkpoints)."""

    def __init__(self, weights: dict[str, float], ema: float = 0.999, total_norm: float = 1.0) -> None:
        super().__init__()
        self.weights = {k: w for k, w in weights.items() if w > 0}
        self.names = list(self.weights)
        self.ema, self.total_norm = ema, total_norm
        # Bias-corrected average (EnCodec's ``averager``): a decayed sum and its decayed count.
        self.register_buffer("norm_sum", torch.zeros(len(self.names)))
        self.register_buffer("norm_count", torch.zeros(len(self.names)))

    def gradient(self, losses: dict[str, Tensor], y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The balanced gradient for ``y`` and the raw gradient norm of each loss (for logging).

        ``losses``: scalars computed from ``y``; those without a weight here are ignored,
        and weighted ones that are absent (adversarial terms before warm-up ends) skipped.
        """
        names = [k for k in self.names if k in losses]
        idx = torch.tensor([self.names.index(k) for k in names], device=self.norm_sum.device)
        grads = [torch.autograd.grad(losses[k], [y], retain_graph=True)[0] for k in names]
        norms = torch.stack([g.flatten(1).norm(dim=1).mean() for g in grads]).detach()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(norms)  # every process must rescale alike
            norms = norms / dist.get_world_size()
        self.norm_sum[idx] = self.norm_sum[idx] * self.ema + norms
        self.norm_count[idx] = self.norm_count[idx] * self.ema + 1.0
        average = self.norm_sum[idx] / self.norm_count[idx]
        total_weight = sum(self.weights[k] for k in names)
        out = torch.zeros_like(y)
        for i, (k, g) in enumerate(zip(names, grads)):
            out = out + g * (self.weights[k] / total_weight * self.total_norm / (average[i] + 1e-12))
        return out, dict(zip(names, norms.unbind()))
