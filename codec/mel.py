"""Multi-scale mel distance: the training loss and the evaluation metric share this one class."""

from __future__ import annotations

import librosa
import torch
from torch import Tensor, nn


class MultiScaleMelLoss(nn.Module):
    """L1 between log10 mel spectrograms at several window sizes (as DAC defines it).

    ``forward(x, y)`` with ``[B, 1, T]`` audio returns a scalar: the sum over windows of
    the mean absolute difference of ``log10(clamp(mel, 1e-5))``.
    """

    def __init__(
        self,
        sample_rate: int,
        windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320),
        mag_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.windows = windows
        self.mag_weight = mag_weight
        for w, m in zip(windows, n_mels):
            fb = librosa.filters.mel(sr=sample_rate, n_fft=w, n_mels=m, fmin=0.0, fmax=sample_rate / 2)
            self.register_buffer(f"fb{w}", torch.from_numpy(fb).float(), persistent=False)
            self.register_buffer(f"win{w}", torch.hann_window(w), persistent=False)

    def mel(self, x: Tensor, w: int) -> Tensor:
        """``[B, 1, T]`` -> mel magnitudes ``[B, M, frames]``."""
        spec = torch.stft(
            x.reshape(-1, x.shape[-1]).float(), w, hop_length=w // 4, window=getattr(self, f"win{w}"),
            center=True, return_complex=True,
        ).abs()
        return getattr(self, f"fb{w}") @ spec

    @staticmethod
    def log_distance(mx: Tensor, my: Tensor) -> Tensor:
        """The terms the loss averages: ``|log10 clamp(mx, 1e-5) - log10 clamp(my, 1e-5)|``, the
        shape of the mel magnitudes ``mx`` and ``my`` (``[B, M, frames]``)."""
        return (mx.clamp(min=1e-5).log10() - my.clamp(min=1e-5).log10()).abs()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            mx, my = self.mel(x, w), self.mel(y, w)
            total = total + self.log_distance(mx, my).mean()
            if self.mag_weight:
                total = total + self.mag_weight * (mx - my).abs().mean()
        return total
