"""Training losses: multi-scale mel L1, multi-resolution STFT, band-envelope correlation and
STFT phase (reconstruction), hinge and feature matching (adversarial)."""

from __future__ import annotations

import auraloss
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from codec.mel import MultiScaleMelLoss  # noqa: F401  (re-exported: the training loss)

from .config import ConfigError, phase_shares_valid
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


SILENCE = 1e-8  # band energy per frame below which a segment counts as silent (about -80 dB)


class EnvelopeCorrelationLoss(nn.Module):
    """One minus the correlation of short-time band envelopes: STOI's intermediate measure
    (Taal et al., 2011), made differentiable, for speech intelligibility.

    Why: the mel and waveform terms weigh every time-frequency cell alike, silence included;
    intelligibility depends on how well the temporal envelope of each speech band (150 Hz to
    4.3 kHz, 1/3 octave wide) follows the original over ~400 ms, whatever its level. This
    term asks for that directly. STOI's parameters, rescaled from its 10 kHz to ``sample_rate``:
    25 ms windows, 12.5 ms hop, 15 third-octave bands from 150 Hz, segments of 30 frames,
    output clipped 15 dB above the original. Not STOI itself: STOI drops silent frames
    (more than 40 dB below the loudest) before cutting segments; here whole segments that far
    below the loudest segment of their example, or below an absolute floor (digital
    silence), are masked instead, which keeps the shapes fixed. Like STOI, a silent output
    scores better than 1 - 0 (the clipping makes it correlate), but its gradient is zero.

    ``forward(y, x)`` with output ``y`` and original ``x`` ``[B, 1, T]`` returns a scalar in
    [0, 2]; ``T`` must hold at least two frames (a crop shorter than a segment is one
    segment). The loss ignores level, so its gradient grows as the output gets quieter;
    training crops are kept above a level floor (``DataConfig.min_rms_db``).
    """

    def __init__(self, sample_rate: int, bands: int = 15, segment: int = 30, clip_db: float = 15.0,
                 range_db: float = 40.0) -> None:
        super().__init__()
        self.win = round(0.025 * sample_rate)
        self.hop = self.win // 2
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.segment, self.clip = segment, 1 + 10 ** (clip_db / 20)
        self.range = 10 ** (-range_db / 10)
        freqs = torch.arange(self.n_fft // 2 + 1) * sample_rate / self.n_fft
        centres = 150.0 * 2 ** (torch.arange(bands) / 3)
        lo, hi = centres * 2 ** (-1 / 6), centres * 2 ** (1 / 6)
        band = ((freqs[None] >= lo[:, None]) & (freqs[None] < hi[:, None])).float()  # [bands, bins]
        band = band[band.sum(1) > 0]  # at low sample rates the top bands lie above Nyquist
        self.register_buffer("band", band, persistent=False)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)

    def envelopes(self, x: Tensor) -> Tensor:
        """``[B, 1, T]`` -> band amplitudes ``[B, bands, frames]``."""
        spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), self.n_fft, self.hop, self.win, self.window,
                          center=False, return_complex=True)
        return (self.band @ (spec.real ** 2 + spec.imag ** 2) + 1e-10).sqrt()

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        if x.shape[-1] < self.n_fft + self.hop:
            raise ConfigError(f"the envelope loss needs crops of at least {self.n_fft + self.hop} samples "
                              f"(data.segment_seconds), got {x.shape[-1]}")
        ex, ey = self.envelopes(x), self.envelopes(y)
        n = min(self.segment, ex.shape[-1])  # a crop shorter than a segment is one segment
        sx = ex.unfold(-1, n, 1)  # [B, bands, segments, n]
        sy = ey.unfold(-1, n, 1)
        scale = sx.norm(dim=-1, keepdim=True) / (sy.norm(dim=-1, keepdim=True) + 1e-8)
        sy = torch.minimum(sy * scale, sx * self.clip)
        sx, sy = sx - sx.mean(-1, keepdim=True), sy - sy.mean(-1, keepdim=True)
        corr = (sx * sy).sum(-1) / (sx.norm(dim=-1) * sy.norm(dim=-1) + 1e-8)  # [B, bands, segments]
        energy = (ex ** 2).sum(1).unfold(-1, n, 1).mean(-1)  # [B, segments]
        floor = torch.clamp(self.range * energy.amax(-1, keepdim=True), min=SILENCE)
        active = (energy >= floor).float()
        per_segment = corr.mean(1)
        return 1 - (per_segment * active).sum() / active.sum().clamp(min=1)


class PhaseLoss(nn.Module):
    """Weighted circular distance between the STFT phases of output and original: at each
    bin (instantaneous phase), between neighbouring bins (group delay) and between
    consecutive frames (instantaneous frequency), as APNet's anti-wrapping losses
    (Ai and Ling, 2023), in the smooth form ``1 - cos(difference)``.

    Why: the magnitude terms are blind to phase, and the waveform L1 sees it only through
    sample differences that a small misalignment makes large. A decoder that makes its own
    phase (codec/spectral.py) and cross-fades frames needs the phase advance from one frame to
    the next right, or neighbouring frames partly cancel and harmonics turn rough.

    Each bin's term is weighted by the original's magnitude there (both neighbours' geometric
    mean for the differences), normalised per example, so the loss follows the harmonics and
    ignores the phase of noise and silence, which carries nothing audible. The weights come
    from the original only: the output cannot lower the loss by going quiet.
    ``forward(y, x)`` with output ``y`` and original ``x`` ``[B, 1, T]`` returns a scalar in
    [0, 2] (0 when the phases agree wherever the original has energy): the mean of the three
    terms weighted by ``shares`` (instantaneous phase, group delay, instantaneous frequency).
    A decoder that sees only a magnitude spectrum cannot know the original's absolute phase;
    share 0 for it leaves the differences, which it can learn.
    """

    def __init__(self, n_fft: int = 640, hop: int = 160, shares: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if not phase_shares_valid(shares):
            raise ValueError(f"phase term shares must be three finite numbers >= 0, not all 0: {shares}")
        self.n_fft, self.hop, self.shares = n_fft, hop, tuple(float(s) for s in shares)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def spectrum(self, x: Tensor) -> Tensor:
        """``[B, 1, T]`` -> complex ``[B, bins, frames]``."""
        return torch.stft(x.reshape(-1, x.shape[-1]).float(), self.n_fft, self.hop, window=self.window,
                          center=False, return_complex=True)

    @staticmethod
    def _distance(a: Tensor, b: Tensor, weight: Tensor) -> Tensor:
        """Weighted mean of ``1 - cos(angle(a) - angle(b))`` per example, then over the
        examples whose original is not silent (a silent one has no phase to follow).

        The gradient at an output bin grows as 1 / its magnitude (the phase of a near-zero
        value turns fast): the training step's gradient clipping bounds it."""
        cos = (a * b.conj()).real / (a.abs() * b.abs() + 1e-12)
        total = weight.sum(dim=(1, 2))
        per_example = ((1 - cos) * weight).sum(dim=(1, 2)) / total.clamp(min=1e-8)
        active = (total > 1e-8).float()
        return (per_example * active).sum() / active.sum().clamp(min=1)

    @staticmethod
    def _step(s: Tensor, dim: int) -> Tensor:
        """``s[k] * conj(s[k - 1])`` along ``dim``: its angle is the phase difference."""
        n = s.shape[dim]
        return s.narrow(dim, 1, n - 1) * s.narrow(dim, 0, n - 1).conj()

    def terms(self, y: Tensor, x: Tensor, wanted: tuple[bool, bool, bool] = (True, True, True)) -> tuple[Tensor | None, ...]:
        """The instantaneous-phase, group-delay (``dim`` 1: bins) and instantaneous-frequency
        (``dim`` 2: frames) terms; None for a term not ``wanted`` (not computed)."""
        sx, sy = self.spectrum(x), self.spectrum(y)
        mag = sx.abs()
        inst = self._distance(sy, sx, mag) if wanted[0] else None
        delay, freq = (self._distance(self._step(sy, d), self._step(sx, d), self._step(mag, d).sqrt()) if want else None
                       for d, want in zip((1, 2), wanted[1:]))
        return inst, delay, freq

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        terms = self.terms(y, x, tuple(w > 0 for w in self.shares))
        return sum(w * t for w, t in zip(self.shares, terms) if t is not None) / sum(self.shares)


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
