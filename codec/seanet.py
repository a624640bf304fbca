"""SEANet-style causal encoder and mirrored decoder.

Encoder: ``[B, 1, T] -> [B, D, T / hop]``; decoder: ``[B, D, F] -> [B, 1, F * hop]``.
Each block is three residual units (dilations 1, 3, 9) around a strided convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .config import CodecConfig
from .streaming import CausalConv1d, CausalConvTranspose1d, CausalLSTM


class Snake(nn.Module):
    """``x + sin^2(a x) / a`` with a learned frequency ``a`` per channel (BigVGAN, DAC):
    a periodic bias that suits audio. ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.sin(self.alpha * x) ** 2 / (self.alpha + 1e-9)


class ELU(nn.Module):
    """ELU, computed in place at inference where the caller never reads its input again.

    On a long input each activation is a tensor of tens of MB; writing it in place spares
    the allocation and the page faults that dominate the cost of this cheap operation.
    Training (grad enabled) always allocates. ``[B, C, T] -> [B, C, T]``.
    """

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x, inplace=self.inplace and not torch.is_grad_enabled())


def activation(kind: str, dim: int, inplace: bool = False) -> nn.Module:
    """The nonlinearity named by ``CodecConfig.activation``; ``inplace``: its input is dead
    after it (see :class:`ELU`)."""
    return Snake(dim) if kind == "snake" else ELU(inplace)


class ResidualUnit(nn.Module):
    """``x + conv1x1(act(conv_k,dilated(act(x))))`` with a 2x bottleneck. ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int, kernel: int, dilation: int, act: str = "elu") -> None:
        super().__init__()
        hidden = max(dim // 2, 1)
        self.block = nn.Sequential(
            activation(act, dim),  # not in place: x is still needed for the skip
            CausalConv1d(dim, hidden, kernel, dilation=dilation),
            activation(act, hidden, inplace=True),
            CausalConv1d(hidden, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        if torch.is_grad_enabled() or y.dtype != x.dtype:  # (autocast can make y bf16)
            return x + y
        return y.add_(x)  # in place: see ELU


def _residual_stack(dim: int, cfg: CodecConfig) -> list[nn.Module]:
    return [ResidualUnit(dim, cfg.residual_kernel_size, d, cfg.activation) for d in cfg.dilations]


class Encoder(nn.Sequential):
    """Causal convolutional encoder. ``[B, 1, T] -> [B, latent_dim, T // hop]``."""

    def __init__(self, cfg: CodecConfig) -> None:
        dim = cfg.channels
        layers: list[nn.Module] = [CausalConv1d(1, dim, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += _residual_stack(dim, cfg)
            layers += [activation(cfg.activation, dim, inplace=True), CausalConv1d(dim, dim * 2, 2 * ratio, stride=ratio)]
            dim *= 2
        if cfg.lstm_layers:
            layers.append(CausalLSTM(dim, cfg.lstm_layers))
        layers += [activation(cfg.activation, dim, inplace=True), CausalConv1d(dim, cfg.latent_dim, cfg.kernel_size)]
        super().__init__(*layers)


class Decoder(nn.Sequential):
    """Mirror of the encoder with transposed convolutions. ``[B, latent_dim, F] -> [B, 1, F * hop]``."""

    def __init__(self, cfg: CodecConfig) -> None:
        dim = cfg.channels * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, dim, cfg.kernel_size)]
        if cfg.lstm_layers:
            layers.append(CausalLSTM(dim, cfg.lstm_layers))
        for ratio in reversed(cfg.ratios):
            layers += [activation(cfg.activation, dim, inplace=True), CausalConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)]
            dim //= 2
            layers += _residual_stack(dim, cfg)
        layers += [activation(cfg.activation, dim, inplace=True), CausalConv1d(dim, 1, cfg.kernel_size)]
        super().__init__(*layers)
