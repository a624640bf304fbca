"""Training losses: multi-scale mel L1 and multi-resolution STFT (reconstruction), hinge and
feature matching (adversarial)."""

from __future__ import annotations

import auraloss
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from codec.mel import MultiScaleMelLoss  # noqa: F401  (re-exported: the training loss)

from .discriminators import Judgement


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
