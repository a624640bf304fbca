"""Pitch postfilter: a comb filter at the decoded signal's own pitch period, the decoder's
last step (CELT, the MDCT half of Opus, has one for the same reason).

Why: the decoder reproduces the harmonics of voiced speech up to about 1 kHz, but above that
it fills each band with noise of about the right level instead of harmonics (docs/model_card.md,
"Pitch postfilter"). The comb ``(x[n] + g x[n - T]) / (1 + g)`` with ``T`` the pitch period
leaves the harmonics (multiples of 1/T) at their level and attenuates what lies between
them, so the noise takes the harmonic structure of the frame's pitch. The period is found in
the decoded audio itself, whose low harmonics are clean: nothing is transmitted.

Frame by frame, causal, no added latency: frame t's period and gain come from a 40-ms window
ending with frame t's last decoded sample, and the frame is filtered with a cross-fade from
frame t-1's filter to frame t's. Offline decoding runs the same steps from a fresh state, so
the same input gives the same output in chunks of any size, bit for bit (float64
throughout). The choice of period is a hard decision: where the decoder's streamed output
differs from its offline output in the last bits, a near-tie between two periods can go
either way in a rare frame. Non-finite samples get no comb (gain 0) while in the window.

Shapes: ``[N, 1, T]`` in and out, ``T`` a multiple of the hop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

F0_MIN, F0_MAX = 60.0, 500.0  # Hz: the pitch range searched
WINDOW_S = 0.040  # seconds of decoded audio the period is measured on
ONSET = 0.3  # normalised correlation at which the comb starts; full gain at 1.0
OCTAVE = 0.9  # the shortest period scoring at least this fraction of the best one wins


@dataclass
class PostfilterState:
    """Per channel: the last input samples, and the period and gain of the previous frame."""

    history: np.ndarray  # [N, H] float64
    lag: np.ndarray  # [N] int64
    gain: np.ndarray  # [N] float64


class PitchPostfilter:
    """Comb filter of strength ``strength`` (the gain at perfect periodicity; 0: off).

    Holds :class:`PostfilterState` between calls while ``streaming_on`` is set (as
    ``Codec.streaming()`` does), none otherwise (each call then starts from silence).
    """

    def __init__(self, sample_rate: int, hop: int, strength: float) -> None:
        self.hop, self.strength = hop, float(strength)
        # Lags searched: one beyond each end of the range, as a period wins only at a local
        # maximum, which needs a neighbour on both sides.
        self.lo = max(int(sample_rate / F0_MAX) - 1, 1)
        self.hi = int(np.ceil(sample_rate / F0_MIN)) + 1
        self.window = max(int(sample_rate * WINDOW_S), self.hi + hop)
        self.keep = self.window - hop  # input samples a frame needs from before it (>= hi)
        self.fade = (np.arange(1, hop + 1) / hop)[None]  # [1, hop]: previous filter -> this frame's
        self.steps = self.keep + np.arange(hop)[None]  # [1, hop]: the frame's positions in its buffer
        lags = np.arange(self.lo, self.hi + 1)
        # Energy of the span ``lag`` samples before the window's tail, from cumulative sums.
        self.span_end, self.span_start = self.window - lags, self.hi - lags
        self.size = 1 << (self.window - 1).bit_length()  # no wrap-around reaches lags 0..hi
        self.streaming_on = False
        self.state: PostfilterState | None = None

    def fresh_state(self, n: int) -> PostfilterState:
        return PostfilterState(np.zeros((n, self.keep)), np.full(n, self.hi, dtype=np.int64), np.zeros(n))

    def __call__(self, audio: Tensor) -> Tensor:
        if self.strength <= 0 or audio.shape[-1] == 0:
            return audio
        n, _, t = audio.shape
        if t % self.hop:
            raise ValueError(f"postfilter input must be whole frames of {self.hop} samples, got {t}")
        state = self.state or self.fresh_state(n)
        if state.history.shape[0] != n:
            raise ValueError(f"streaming postfilter holds {state.history.shape[0]} channels, got {n}")
        x = audio.reshape(n, t).detach().cpu().double().numpy()
        out = np.empty_like(x)
        for s in range(0, t, self.hop):
            out[:, s : s + self.hop] = self.frame(x[:, s : s + self.hop], state)
        if self.streaming_on:
            self.state = state
        return torch.from_numpy(out).to(audio.dtype).to(audio.device).reshape(n, 1, t)

    def frame(self, x: np.ndarray, state: PostfilterState) -> np.ndarray:
        """Filter one frame ``x`` ``[N, hop]``, advancing ``state``."""
        buf = np.concatenate([state.history, x], axis=1)  # [N, keep + hop]
        finite = np.isfinite(buf).all(axis=1)
        lag, gain = self.pitch(np.where(finite[:, None], buf[:, -self.window :], 0.0))
        gain, gain0 = gain * finite, state.gain * finite
        new, old = self.comb(x, buf, lag, gain), self.comb(x, buf, state.lag, gain0)
        state.history, state.lag, state.gain = buf[:, -self.keep :], lag, gain
        return self.fade * new + (1 - self.fade) * old

    def comb(self, x: np.ndarray, buf: np.ndarray, lag: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """``(x[n] + g x[n - lag]) / (1 + g)`` per row; rows with gain 0 are ``x`` itself."""
        g = gain[:, None]
        delayed = np.take_along_axis(buf, self.steps - lag[:, None], axis=1)
        with np.errstate(invalid="ignore", over="ignore"):  # (0 * inf in rows left alone)
            return np.where(g > 0, (x + g * delayed) / (1 + g), x)

    def pitch(self, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Period (samples) and comb gain per row of ``seg`` ``[N, window]``.

        Normalised correlation of the window's last ``window - hi`` samples with the same
        span ``lag`` samples earlier, for every lag in ``lo..hi``; the shortest lag at a local
        maximum within :data:`OCTAVE` of the best (so not a multiple of the period) wins.
        Rows must be finite (:meth:`frame` zeroes the others and gives them no gain).
        """
        tail = seg[:, self.hi :]
        spec = np.fft.rfft(seg, self.size) * np.conj(np.fft.rfft(tail, self.size))
        # r[k] = <tail, seg[k : k + len(tail)]>, so lag l is r[hi - l]
        cross = np.fft.irfft(spec, self.size)[:, self.hi - self.lo :: -1]
        sq = np.zeros((seg.shape[0], seg.shape[1] + 1))
        np.cumsum(seg * seg, axis=1, out=sq[:, 1:])
        energy = sq[:, self.span_end] - sq[:, self.span_start]  # [N, lags]
        denom = np.sqrt((sq[:, -1:] - sq[:, self.hi : self.hi + 1]) * energy)
        corr = np.divide(cross, denom, out=np.zeros_like(cross), where=denom > 1e-12)
        peak = np.zeros_like(corr, dtype=bool)
        peak[:, 1:-1] = (corr[:, 1:-1] >= corr[:, :-2]) & (corr[:, 1:-1] >= corr[:, 2:])
        best = np.max(np.where(peak, corr, -1.0), axis=1, keepdims=True)
        first = np.argmax(peak & (corr >= OCTAVE * best), axis=1)
        score = np.where(best[:, 0] > 0, np.take_along_axis(corr, first[:, None], axis=1)[:, 0], 0.0)
        gain = self.strength * np.clip((score - ONSET) / (1 - ONSET), 0.0, 1.0)
        return first + self.lo, gain
