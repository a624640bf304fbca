"""SEANet-style causal encoder and mirrored decoder.

Encoder: ``[B, 1, T] -> [B, D, T / hop]``; decoder: ``[B, D, F] -> [B, 1, F * hop]``.
Each block is three residual units (dilations 1, 3, 9) around a strided convolution.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import CodecConfig
from .streaming import CausalConv1d, CausalConvTranspose1d, CausalLSTM


class ResidualUnit(nn.Module):
    """``x + conv1x1(elu(conv_k,dilated(elu(x))))`` with a 2x bottleneck. ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int, kernel: int, dilation: int) -> None:
        super().__init__()
        hidden = max(dim // 2, 1)
        self.block = nn.Sequential(
            nn.ELU(),
            CausalConv1d(dim, hidden, kernel, dilation=dilation),
            nn.ELU(),
            CausalConv1d(hidden, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_stack(dim: int, cfg: CodecConfig) -> list[nn.Module]:
    return [ResidualUnit(dim, cfg.residual_kernel_size, d) for d in cfg.dilations]


class Encoder(nn.Sequential):
    """Causal convolutional encoder. ``[B, 1, T] -> [B, latent_dim, T // hop]``."""

    def __init__(self, cfg: CodecConfig) -> None:
        dim = cfg.channels
        layers: list[nn.Module] = [CausalConv1d(1, dim, cfg.kernel_size)]
        for ratio in cfg.ratios:
            layers += _residual_stack(dim, cfg)
            layers += [nn.ELU(), CausalConv1d(dim, dim * 2, 2 * ratio, stride=ratio)]
            dim *= 2
        if cfg.lstm_layers:
            layers.append(CausalLSTM(dim, cfg.lstm_layers))
        layers += [nn.ELU(), CausalConv1d(dim, cfg.latent_dim, cfg.kernel_size)]
        super().__init__(*layers)


class Decoder(nn.Sequential):
    """Mirror of the encoder with transposed convolutions. ``[B, latent_dim, F] -> [B, 1, F * hop]``."""

    def __init__(self, cfg: CodecConfig) -> None:
        dim = cfg.channels * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, dim, cfg.kernel_size)]
        if cfg.lstm_layers:
            layers.append(CausalLSTM(dim, cfg.lstm_layers))
        for ratio in reversed(cfg.ratios):
            layers += [nn.ELU(), CausalConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)]
            dim //= 2
            layers += _residual_stack(dim, cfg)
        layers += [nn.ELU(), CausalConv1d(dim, 1, cfg.kernel_size)]
        super().__init__(*layers)
