"""The log-mel encoder: no weights, each frame is the log-mel spectrum of its own hop and the
one before it; the residual VQ then codes these frames directly.

Why (docs/model_card.md, "What limits quality"): a spectral decoder trained from the
original's 80-band log-mel spectrum, quantized by a plain k-means RVQ at 6 kbps, scored held-out
speech ViSQOL 2.44 where one trained for the same steps on the codes of our trained SEANet
encoder scored 1.47 (2.77 after 2,500 more steps on the quantized spectrum); on two CPU cores
the encoder had not learnt to carry as much as a fixed spectrum does.

Causal: frame ``t`` is the Hann-windowed power spectrum of samples ``[(t - 1) * hop, (t + 1) *
hop)`` (zeros before the start), through a Slaney-style mel filterbank (as librosa's default),
then ``log(mel + 1e-5)``. Computed in float64 so that a frame's value does not depend on how
many frames are computed at once: streaming and offline give the same codes. Shapes: ``[B, 1,
F * hop] -> [B, n_mels, F]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .streaming import ConvState, StreamingModule

FLOOR = 1e-5  # added to the mel power before the log


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    logstep = math.log(6.4) / 27.0
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / logstep)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    logstep = math.log(6.4) / 27.0
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(logstep * (m - 15.0)))


def mel_edges(sample_rate: int, n_mels: int) -> np.ndarray:
    """``[n_mels + 2]`` Hz: the filters' corners, evenly spaced on the mel scale from 0 Hz to
    Nyquist; band ``m`` rises from ``edges[m]`` to ``edges[m + 1]`` and ends at ``edges[m + 2]``."""
    return _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters on :func:`mel_edges`, each scaled to
    unit area (Slaney normalisation)."""
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_edges(sample_rate, n_mels)
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def frame_log_mel(frames: Tensor, window: Tensor, filterbank: Tensor) -> Tensor:
    """``log(mel power + FLOOR)`` of float64 frames ``[..., n_fft]`` under ``window`` ``[n_fft]``
    through ``filterbank`` ``[M, n_fft // 2 + 1]``: ``[..., M]``. How the encoder measures a
    frame, and how envelope matching (codec/envelope.py) measures the decoder's."""
    power = torch.fft.rfft(frames * window.double(), dim=-1).abs().square()
    return torch.log(power @ filterbank.double().T + FLOOR)


class LogMelEncoder(StreamingModule):
    """Audio -> log-mel frames (see the module docstring). ``[B, 1, F * hop] -> [B, n_mels, F]``.

    While streaming, the state is the last hop of samples (the next frame's first half) and the
    samples of a hop not yet complete."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.hop = hop
        fb = torch.from_numpy(mel_filterbank(sample_rate, 2 * hop, n_mels))
        self.register_buffer("filterbank", fb, persistent=False)  # float64
        self.register_buffer("window", torch.hann_window(2 * hop, periodic=True, dtype=torch.float64), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 1, T]`` -> ``[B, n_mels, F]`` float32. Offline ``F = T // hop`` (a last partial
        hop is dropped); while streaming, every frame completed so far, the samples of the next
        kept in the state, so that chunks of any size give the offline frames."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected mono audio [B, 1, T], got shape {tuple(x.shape)}")
        b, hop = x.shape[0], self.hop
        state = self.state if self.streaming_on else None
        prev = state.buffer if state is not None else x.new_zeros(b, 1, hop, dtype=torch.float64)
        inp = torch.cat([prev, x.double()], dim=-1)[:, 0]  # [B, hop + pending + T]
        n_frames = (inp.shape[-1] - hop) // hop
        if self.streaming_on:  # the last frame's second hop, and samples no frame has used yet
            self.state = ConvState(inp[:, None, n_frames * hop :].clone())
        if n_frames == 0:
            return x.new_zeros(b, self.filterbank.shape[0], 0, dtype=torch.float32)
        frames = inp.unfold(-1, 2 * hop, hop)  # [B, F, 2 hop]
        # (.double(): a no-op unless the module was cast, e.g. by model.float(), which would
        # otherwise make the product below fail on mixed dtypes)
        return frame_log_mel(frames, self.window, self.filterbank).transpose(1, 2).float()
