"""Frame-rate decoder: causal ConvNeXt blocks on the latent frames, then one inverse FFT per
frame, cross-faded into the next (as Vocos, made causal).

Why: the SEANet decoder (codec/seanet.py) spends most of its arithmetic at high sample rates
upsampling the latent; this one stays at the frame rate (75 Hz) and lets an inverse FFT make
the samples, so a training step costs a fraction of the SEANet decoder's and the CPU time that
training has buys many more steps.

Synthesis without look-ahead: frame ``t`` makes ``hop + fade`` samples starting at its own
block ``t * hop``. They are windowed by a raised-cosine fade-in over the first ``fade``
samples, one over the rest of the block and a fade-out over the next block's first ``fade``
samples, where the previous frame's fade-out overlaps the next frame's fade-in (the two sum to
one). Block ``t`` is complete when frame ``t`` is decoded: no latency beyond the encoder's
frame. Shapes: ``[B, latent_dim, F] -> [B, 1, F * hop]``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .streaming import CausalConv1d, ConvTransposeState, StreamingModule


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, T]``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """``x + scale * pw2(gelu(pw1(norm(dwconv(x)))))`` with a causal depthwise convolution.
    ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int, hidden: int, kernel: int, scale: float) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (y * self.scale).transpose(1, 2)


def crossfade_window(hop: int, fade: int) -> Tensor:
    """``[hop + fade]``: sin^2 fade-in over ``fade`` samples, ones, cos^2 fade-out over ``fade``."""
    ramp = torch.sin(0.5 * math.pi * (torch.arange(fade, dtype=torch.float64) + 0.5) / fade) ** 2
    return torch.cat([ramp, torch.ones(hop - fade, dtype=torch.float64), 1 - ramp]).float()


_LOW_CUT = threading.local()  # bins silenced by FFTSynthesis on this thread (see low_cut)


@contextlib.contextmanager
def low_cut(bins: int | Tensor) -> Iterator[None]:
    """Within the block, on the calling thread only, :class:`FFTSynthesis` silences its first
    ``bins`` bins (where codec/lowband.py codes the waveform); a tensor ``[B]`` gives each
    batch row its own (training). Per thread, not per module, so that one model decodes on
    several threads at once at different bitrates."""
    before = getattr(_LOW_CUT, "bins", 0)
    _LOW_CUT.bins = bins
    try:
        yield
    finally:
        _LOW_CUT.bins = before


class FFTSynthesis(StreamingModule):
    """Per-frame log-magnitude and phase -> samples by inverse FFT and cross-faded overlap-add.

    ``[B, n_fft + 2, F]`` (log magnitudes of the ``n_fft // 2 + 1`` bins, then phases) ->
    ``[B, 1, F * hop]``. While streaming, the fade-out still owed to the next block is carried.
    Inside :func:`low_cut`, the first bins are made silent.
    """

    def __init__(self, n_fft: int, hop: int, fade: int) -> None:
        super().__init__()
        if not 0 < fade <= hop or hop + fade > n_fft:
            raise ValueError("need 0 < fade <= hop and hop + fade <= n_fft")
        self.n_fft, self.hop, self.fade = n_fft, hop, fade
        self.register_buffer("window", crossfade_window(hop, fade), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, f = x.shape
        if f == 0:
            return x.new_zeros(b, 1, 0)
        log_mag, phase = x.float().transpose(1, 2).chunk(2, dim=-1)  # [B, F, bins] each
        spec = torch.polar(torch.exp(log_mag.clamp(max=10.0)), phase)
        cut = getattr(_LOW_CUT, "bins", 0)
        if isinstance(cut, Tensor):  # [B]: row b keeps bins from cut[b] up
            keep = torch.arange(spec.shape[-1], device=spec.device)[None, :] >= cut.to(spec.device)[:, None]
            spec = spec * keep[:, None, :]
        elif cut:
            spec = spec.clone()
            spec[..., :cut] = 0
        span = self.hop + self.fade
        frames = torch.fft.irfft(spec, n=self.n_fft)[..., :span] * self.window  # [B, F, span]
        head, tail = frames[..., : self.hop], frames[..., self.hop :]  # tail: next block's first `fade`
        y = head.clone()
        y[:, 1:, : self.fade] += tail[:, :-1]
        state = self.state if self.streaming_on else None
        if state is not None:
            y[:, 0, : self.fade] += state.partial
        if self.streaming_on:
            self.state = ConvTransposeState(tail[:, -1])
        return y.reshape(b, 1, f * self.hop)


class FFTHead(nn.Module):
    """Features -> log magnitudes and phases (a 1x1 convolution) -> samples
    (:class:`FFTSynthesis`), in float32 whatever the autocast. ``[B, dim, F] -> [B, 1, F * hop]``."""

    def __init__(self, dim: int, n_fft: int, hop: int, fade: int) -> None:
        super().__init__()
        self.proj = nn.Conv1d(dim, n_fft + 2, 1)
        self.synthesis = FFTSynthesis(n_fft, hop, fade)

    def forward(self, h: Tensor) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            return self.synthesis(self.proj(h.float()))


class SpectralDecoder(nn.Sequential):
    """Latent frames -> audio: a causal embedding, ConvNeXt blocks at the frame rate and an
    :class:`FFTHead`. ``[B, latent_dim, F] -> [B, 1, F * hop]``."""

    def __init__(self, latent_dim: int, hop: int, dim: int, hidden: int, layers: int,
                 kernel: int = 7, n_fft: int | None = None, fade: int | None = None) -> None:
        n_fft = n_fft or 2 * hop
        fade = fade or hop // 2
        super().__init__(
            CausalConv1d(latent_dim, dim, kernel),  # (latent_dim: every input channel)
            ChannelNorm(dim),
            *[ConvNeXtBlock(dim, hidden, kernel, 1.0 / layers) for _ in range(layers)],
            ChannelNorm(dim),
            FFTHead(dim, n_fft, hop, fade),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
