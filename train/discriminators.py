"""Discriminators: EnCodec's multi-scale STFT discriminator and HiFi-GAN's multi-period one.

Each discriminator maps audio ``[B, 1, T]`` to ``(logits, features)``: logits of any shape
(one score per time-frequency patch) and the activations of every layer, for feature
matching. All convolutions are weight-normalised, as in both papers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from .config import DiscConfig

Judgement = tuple[Tensor, list[Tensor]]


class STFTDiscriminator(nn.Module):
    """2-D convolutions over the complex STFT (real and imaginary parts as two channels).

    Time is dilated 1, 2, 4 and frequency strided by 2, as in EnCodec's MS-STFT-D.
    ``[B, 1, T] -> logits [B, 1, frames, bins']``.
    """

    def __init__(self, n_fft: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
            *[weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4))) for d in (1, 2, 4)],
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.out = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: Tensor) -> Judgement:
        # The transform in float32 even under autocast: bf16 FFTs are not supported everywhere
        # and lose the quiet high bands.
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(
                x.reshape(-1, x.shape[-1]).float(), self.n_fft, self.hop, window=self.window,
                normalized=True, center=False, return_complex=True,
            )
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        features = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            features.append(z)
        return self.out(z), features


class PeriodDiscriminator(nn.Module):
    """Audio folded into ``[B, 1, T / p, p]``; 2-D convolutions along the folded time axis
    only, so each column sees samples exactly ``p`` apart (HiFi-GAN's MPD)."""

    def __init__(self, period: int, channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)) -> None:
        super().__init__()
        self.period = period
        widths = (1, *channels)
        strides = [3] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (s, 1), padding=(2, 0)))
            for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)
        )
        self.out = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: Tensor) -> Judgement:
        b, c, t = x.shape
        pad = -t % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect" if pad < t else "constant")
        z = x.reshape(b, c, -1, self.period)
        features = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.1)
            features.append(z)
        return self.out(z), features


JUDGED_RMS = 0.3  # the level at which the discriminators see every real example
MAX_GAIN = 300.0  # real crops quieter than -60 dBFS (RMS 1e-3) are raised by this much only


def at_judged_level(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """``real`` and ``fake`` ``[B, 1, T]`` scaled by one gain per example that brings the real
    one to :data:`JUDGED_RMS` (a constant, not a path for gradients).

    Why: training crops sit around -30 dBFS (RMS 0.03-0.08, down to 24 dB less with the
    random gain). At that level the untrained discriminators' outputs are their biases
    (measured: every one scored real and generated crops alike to three decimals, whatever
    the crop), and at 2e-4 after a warm-up they took hundreds of steps to start telling
    them apart, while the generator followed their noise. Scaled, they start within 20-30
    steps. Both signals take the same gain, so a level error stays visible. The gain stops at
    :data:`MAX_GAIN`: a near-silent crop next to the decoder's noise floor would otherwise
    put that noise at full scale and let one example dominate the batch.
    """
    gain = (JUDGED_RMS / real.detach().pow(2).mean(-1, keepdim=True).sqrt()).clamp(max=MAX_GAIN)
    return real * gain, fake * gain


class Discriminators(nn.Module):
    """All discriminators of a run. ``[B, 1, T]`` -> one :data:`Judgement` per discriminator."""

    def __init__(self, cfg: DiscConfig) -> None:
        super().__init__()
        members: list[nn.Module] = [STFTDiscriminator(n, cfg.stft_channels) for n in cfg.stft_n_ffts]
        members += [PeriodDiscriminator(p, cfg.period_channels) for p in cfg.periods]
        if not members:
            raise ValueError("adversarial losses are enabled but no discriminator is configured")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> list[Judgement]:
        return [d(x) for d in self.members]
