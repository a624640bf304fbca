"""Pitch postfilter: a comb filter at the decoded signal's own pitch period, the decoder's
last step (CELT, the MDCT half of Opus, has one for the same reason).

Why: the decoder reproduces the harmonics of voiced speech up to about 1 kHz, but above that
it fills each band with noise of about the right level instead of harmonics (docs/model_card.md,
"Pitch postfilter"). The comb ``(x[n] + g x[n - T]) / (1 + g)`` with ``T`` the pitch period
leaves the harmonics (multiples of 1/T) at their level and attenuates what lies between
them, so the noise takes the harmonic structure of the frame's pitch. The period is found in
the decoded audio itself, whose low harmonics are clean: nothing is transmitted. (From 12
kbps the decoder's band below the coded low band, codec/lowband.py, is silent when this
runs, so the period comes from the harmonics above it, and the coded band is added after;
the other orders tried were not better on every measure: docs/model_card.md, "The low band".)

Frame by frame, causal, no added latency: frame t's period and gain come from a 40-ms window
ending with frame t's last decoded sample, and the frame is filtered with a cross-fade from
frame t-1's filter to frame t's. Offline decoding runs the same steps from a fresh state
(searching the periods of up to :data:`BLOCK_FRAMES` frames in one batch, each row computed as
it would be alone), so the same input gives the same output in chunks of any size, bit for bit
(float64 throughout). The choice of period is a hard decision: where the decoder's streamed output
differs from its offline output in the last bits, a near-tie between two periods can go
either way in a rare frame. Non-finite samples get no comb (gain 0) while in the window.
Where the native runtime builds (codec/native.py), frame.c's ``rvq_postfilter`` runs the same
steps, offline and streamed alike, in one call (a live frame: about 0.05 ms instead of 0.12);
its correlation is summed directly rather than through an FFT, so it agrees with the NumPy
steps to rounding (tests/test_native.py).

Shapes: ``[N, 1, T]`` in and out, ``T`` a multiple of the hop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .native import postfilter_frames

F0_MIN, F0_MAX = 60.0, 500.0  # Hz: the pitch range searched
WINDOW_S = 0.040  # seconds of decoded audio the period is measured on
ONSET = 0.3  # normalised correlation at which the comb starts; full gain at 1.0
OCTAVE = 0.9  # the shortest period scoring at least this fraction of the best one wins
BLOCK_FRAMES = 250  # frames searched at once offline (3.3 s at 24 kHz: ~2 MB per channel)


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
        self.fade = np.arange(1, hop + 1) / hop  # [hop]: previous filter -> this frame's
        self.offsets = self.keep + np.arange(hop)  # [hop]: frame 0's samples in buf (frame f: + f * hop)
        lags = np.arange(self.lo, self.hi + 1)
        # Energy of the span ``lag`` samples before the window's tail, from cumulative sums.
        self.span_end, self.span_start = self.window - lags, self.hi - lags
        self.size = 1 << (self.window - 1).bit_length()  # no wrap-around reaches lags 0..hi
        self.streaming_on = False
        self.state: PostfilterState | None = None
        self.native = True  # frame.c's rvq_postfilter where it builds (codec/native.py); False: NumPy alone

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
        step = BLOCK_FRAMES * self.hop
        blocks = [self.frames(x[:, s : s + step], state) for s in range(0, t, step)]
        out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        if self.streaming_on:
            self.state = state
        return torch.from_numpy(out).to(audio.dtype).to(audio.device).reshape(n, 1, t)

    def frames(self, x: np.ndarray, state: PostfilterState) -> np.ndarray:
        """Filter whole frames ``x`` ``[N, F * hop]``, advancing ``state``.

        Every frame's period comes from its own window, so all of them are searched at once
        (rows ``[N * F, window]``); then frame f is filtered with frame f's and frame f-1's
        combs. Each row is computed exactly as it would be alone, so one call on F frames and F
        calls on one frame each give the same bits.
        """
        n, t = x.shape
        f = t // self.hop
        if f * self.hop != t:
            raise ValueError(f"postfilter frames must be whole frames of {self.hop} samples, got {t}")
        buf = np.concatenate([state.history, x], axis=1)  # [N, keep + F * hop]
        if self.native:  # the same steps in C, a call for all frames (None: no library)
            lag, gain = state.lag.astype(np.int64), state.gain.astype(np.float64)  # (copies, filled in by C)
            out = postfilter_frames(buf, f, self.hop, self.window, self.lo, self.hi, self.strength, ONSET, OCTAVE, lag, gain)
            if out is not None:
                state.history, state.lag, state.gain = buf[:, -self.keep :], lag, gain
                return out
        rows, cols = buf.strides
        windows = np.lib.stride_tricks.as_strided(  # [N, F, window], frame f's ends with its last sample
            buf, (n, f, self.window), (rows, self.hop * cols, cols), writeable=False)
        # non-finite samples per window from one cumulative count over buf, not per window
        bad = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(~np.isfinite(buf), axis=1)], axis=1)
        starts = self.hop * np.arange(f)
        finite = bad[:, starts + self.window] == bad[:, starts]  # [N, F]
        seg = np.where(finite[:, :, None], windows, 0.0).reshape(n * f, self.window)
        lag, gain = (v.reshape(n, f) for v in self.pitch(seg))
        gain = gain * finite
        prev_lag = np.concatenate([state.lag[:, None], lag[:, :-1]], axis=1)
        prev_gain = np.concatenate([state.gain[:, None], gain[:, :-1]], axis=1) * finite
        frames = x.reshape(n, f, self.hop)
        new, old = self.comb(frames, buf, np.array([lag, prev_lag]), np.array([gain, prev_gain]))
        state.history, state.lag, state.gain = buf[:, -self.keep :], lag[:, -1], gain[:, -1]
        return (self.fade * new + (1 - self.fade) * old).reshape(n, t)

    def comb(self, x: np.ndarray, buf: np.ndarray, lag: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """``(x[n] + g x[n - lag]) / (1 + g)`` for frames ``x`` ``[N, F, hop]``, whose samples
        sit at ``buf[:, keep:]``, with lags and gains ``[K, N, F]`` (K filters per frame):
        ``[K, N, F, hop]``. Frames with gain 0 are ``x`` itself."""
        n, f, hop = x.shape
        g = gain[..., None]
        where = self.offsets + hop * np.arange(f)[:, None] - lag[..., None]  # [K, N, F, hop] in buf
        delayed = buf[np.arange(n)[:, None, None], where]
        with np.errstate(invalid="ignore", over="ignore"):  # (0 * inf in frames left alone)
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
