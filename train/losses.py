"""Training losses: multi-scale mel L1 and multi-resolution STFT (reconstruction), hinge and
feature matching (adversarial)."""

from __future__ import annotations

import auraloss
import librosa
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .discriminators import Judgement


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

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros((), dtype=torch.float32)
        for w in self.windows:
            mx, my = self.mel(x, w), self.mel(y, w)
            total = total + (mx.clamp(min=1e-5).log10() - my.clamp(min=1e-5).log10()).abs().mean()
            if self.mag_weight:
                total = total + self.mag_weight * (mx - my).abs().mean()
        return total


class MultiResolutionSTFTLoss(nn.Module):
    """auraloss's spectral convergence + log-magnitude loss over several FFT sizes."""

    def __init__(self, fft_sizes: tuple[int, ...] = (2048, 1024, 512, 256, 128)) -> None:
        super().__init__()
        self.loss = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=list(fft_sizes),
            hop_sizes=[n // 4 for n in fft_sizes],
            win_lengths=list(fft_sizes),
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss(x.float(), y.float())


# Adversarial losses. Each discriminator returns (logits, features); the losses average over
# discriminators so that adding one does not change the scale of the others.


def hinge_discriminator(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """``relu(1 - D(x)) + relu(1 + D(G(z)))``, averaged over discriminators."""
    return torch.stack([F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)]).mean()


def hinge_generator(fake: list[Judgement]) -> Tensor:
    """``relu(1 - D(G(z)))``, averaged over discriminators (EnCodec's generator loss)."""
    return torch.stack([F.relu(1 - f).mean() for f, _ in fake]).mean()


def feature_matching(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """L1 between the discriminators' feature maps of real and generated audio, each layer
    divided by the mean magnitude of its real features (EnCodec): layers of very different
    scales then weigh alike. Averaged over all layers of all discriminators."""
    terms = [
        (fr.detach() - ff).abs().mean() / (fr.detach().abs().mean() + 1e-8)
        for (_, feats_r), (_, feats_f) in zip(real, fake)
        for fr, ff in zip(feats_r, feats_f)
    ]
    return torch.stack(terms).mean()
