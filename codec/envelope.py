"""Envelope matching: the decoded audio's spectrum pulled, band by band and frame by frame,
onto the log-mel spectrum that the codes carry.

Why (docs/model_card.md, "Envelope matching"): a log-mel model's codes are each frame's
80-band log-mel spectrum, but its decoder follows them only loosely; measured the way the
encoder measures the input, the decoded speech of rvq24k-v19 misses the coded spectrum by
about 0.4 (natural log of power) on average over the bands above 862 Hz, and sits below it in
the quiet bands above 4 kHz. Scaling each band of the output onto the coded value is a correction
from what the decoder already has: no bits, no weights.

How, for frame ``t`` of a decoded signal (output time; block ``t`` is its samples
``[t hop, (t + 1) hop)``):

- **Measure**: the log-mel spectrum of the two blocks that end with block ``t`` exactly as
  the encoder computes a frame (codec/logmel.py: a two-hop Hann window, its filterbank, the
  same floor); every band's gain is ``exp(strength * (coded - measured) / 2)``, within
  :data:`MAX_GAIN` either way. With a ``floor`` under 1 (v22), the powers are compared
  instead, each recovered from its log-mel value with the floor taken off, down to ``floor``
  times the log-mel floor ``F``: ``(max(e^coded - r, floor F) / max(e^measured - r, floor F))
  ** (strength / 2)`` with ``r = (1 - floor) F``. A band that the decoder left far below the
  floor, where the codes say it holds some power, is then raised by as much as
  :data:`MAX_GAIN`; compared as log-mel values, both sides sit near the floor and it stays.
  Frames of fewer than :data:`FLOOR_MIN_LEVELS` levels compare log-mel values whatever the
  floor (measured at 4 levels: it cost ViSQOL; coded values that coarse are likely no guide
  to powers under the floor).
  Bands that start below :data:`MIN_HZ`, or below the top of the low band (codec/lowband.py
  codes the waveform there), keep gain 1, and so do all bands of a frame with fewer than
  :data:`MIN_LEVELS` log-mel levels.
- **Fill** (``fill`` over 0, v23; frames of :data:`FLOOR_MIN_LEVELS` levels or more): where a
  band's gain stops at :data:`MAX_GAIN` short of the coded power (the decoder made next to
  nothing there), noise makes up ``fill`` of the power still missing, in bands centred at
  :data:`FILL_MIN_HZ` or above (their filters reach down to the centre of the band below).
  The noise is white within each band, its variance worked out from the measuring window and
  the band's filter so that its measured mel power is the power missing. It is the same
  noise whatever the calls and in every channel: each frame's is a table's row picked by the
  frame's index in the audio (or stream); the table comes from a counter-based generator of
  this module (:func:`noise_table`), not NumPy's, whose streams may change between versions.
  The last half hop (:meth:`EnvelopeMatch.drain`) takes the last frame's gains and no noise.
- **The 8-kHz edge** (``edge``, v24: the bands and frames whose power the low band's words
  raised, codec/edge.py): there no gain goes over 1, and noise makes up all the power the
  decoded band lacks (with the fill's share), whatever the limit; in frames of
  :data:`FLOOR_MIN_LEVELS` levels or more.
- **Apply**: a weighted overlap-add of one-hop windows at half-hop steps (square-root Hann for
  analysis and synthesis: their products sum to one, so gains of 1 give the input back), each
  window's spectrum times the per-bin gains of its frame (the bands' gains spread over their
  bins by the filterbank's weights). The two windows centred in block ``t``, at ``t hop`` and
  ``t hop + hop / 2``, take frame ``t``'s gains; both end by ``(t + 1) hop``.

So a frame's gains need nothing after its own block, but the window centred half a hop before
the block's end still needs the next frame's window to complete its second half: streamed,
the output trails by :data:`EnvelopeMatch.lag` (``hop / 2``) samples more, and
:meth:`EnvelopeMatch.drain` gives the last half hop at the end (the samples after it zero).
Offline the same samples come out lined up. Float64 throughout, every frame computed as it
would be alone, so the output does not depend on how the frames are split into calls beyond
the last bit. Shapes: audio ``[N, 1, F * hop]``, coded log-mel ``[N, n_mels, F]``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .logmel import FLOOR, frame_log_mel, mel_edges, mel_filterbank

MIN_LEVELS = 4  # at 1.5 kbps (2 levels) it cost held-out speech ViSQOL (1.73 -> 1.61, a first version)
MIN_HZ = 450.0  # one-hop windows' 75-Hz bins blur the harmonics below (6 kbps PESQ 2.40; 2.36 from 300 Hz)
MAX_GAIN = 4.0  # 12 dB either way
FILL_MIN_HZ = 8000.0  # the lowest band centre that noise fills: above the speech the decoder learnt to make
# (the corpus's speech has none there); from 4 or 6 kHz it cost held-out speech ViSQOL at 24 kbps (3.964 -> 3.948)
FILL_SEED = 0x52565146  # the fill's noise table (noise_table)
FILL_FRAMES = 1024  # its rows, one a frame (13.7 s at 75 Hz), then it repeats
FLOOR_MIN_LEVELS = 6  # the floor under 1 from 6 levels (12 kbps's); at 3 kbps's 4 it cost speech and music
# ViSQOL on held-out excerpts (2.715 -> 2.671, 4.168 -> 4.147)
BLOCK_FRAMES = 256  # frames per step offline (bounds the temporaries)


@dataclass
class EnvelopeState:
    """What a stream carries between calls: the last block of decoded audio ``[N, hop]`` (the
    next frame's measuring window starts with it), the second half of the last window, not
    yet complete ``[N, hop / 2]``, the last frame's per-bin gains ``[N, hop / 2 + 1]``
    (for :meth:`EnvelopeMatch.drain`), and the frames done so far (they pick the fill's noise)."""

    last_block: np.ndarray
    partial: np.ndarray
    gains: np.ndarray
    frame: int = 0


class EnvelopeMatch:
    """Decoded audio + coded log-mel frames -> the audio with each band's level moved onto the
    coded one (module docstring). ``strength`` 0 leaves the audio as it is (and adds no lag);
    ``floor`` (in (0, 1]) is how far below the log-mel floor the powers are compared; ``fill``
    (in [0, 1]) the share of the power the gain limit leaves missing that noise makes up."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int, strength: float, floor: float = 1.0,
                 fill: float = 0.0) -> None:
        if hop % 4:
            raise ValueError(f"envelope matching needs a hop divisible by 4, got {hop}")
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"envelope matching's floor must be in (0, 1], got {floor}")
        if not 0.0 <= fill <= 1.0:
            raise ValueError(f"envelope matching's fill must be in [0, 1], got {fill}")
        self.hop, self.half, self.strength, self.floor, self.fill = hop, hop // 2, strength, floor, fill
        filterbank = mel_filterbank(sample_rate, 2 * hop, n_mels)  # [M, hop + 1]
        self.filterbank = torch.from_numpy(filterbank)
        self.first_bin = np.argmax(filterbank > 0, axis=1)  # [M]
        cover = filterbank.sum(axis=0)
        share = np.divide(filterbank, cover, out=np.zeros_like(filterbank), where=cover > 0)
        self.spread = share[:, ::2]  # [M, half + 1]: a band's share of each bin of a one-hop window
        self.uncovered = cover[::2] == 0  # bins no band reaches keep gain 1
        self.measure_window = torch.hann_window(2 * hop, periodic=True, dtype=torch.float64)
        self.window = np.sqrt(torch.hann_window(hop, periodic=True, dtype=torch.float64).numpy())
        self.min_bin = math.ceil(MIN_HZ * 2 * hop / sample_rate)
        # White noise of variance s^2 measures s^2 sum(window^2) sum(filter) as a band's mel power,
        # and puts hop s^2 into each bin of a one-hop window's spectrum (its windows' squares sum to 1)
        centres = mel_edges(sample_rate, n_mels)[1:-1]
        per_power = hop / (float(self.measure_window.square().sum()) * filterbank.sum(axis=1))  # [M]
        self.fill_scale = np.where(centres >= FILL_MIN_HZ, per_power, 0.0)  # [M]: bin power per missing power
        self.edge_fill_scale = per_power  # [M]: the same for the 8-kHz edge's bands, where it raises them
        # [FILL_FRAMES, 2, hop / 2 + 1]: two windows a frame (made here: a first live frame would wait ~25 ms)
        self.noise = noise_table(FILL_FRAMES, 2, self.half + 1) if fill else None
        self.streaming_on = False
        self.state: EnvelopeState | None = None
        self._like: tuple[torch.dtype, torch.device] = (torch.float32, torch.device("cpu"))

    @property
    def lag(self) -> int:
        """Samples by which a stream's output trails the offline output (0 when off)."""
        return self.half if self.strength > 0 else 0

    def fresh_state(self, n: int) -> EnvelopeState:
        return EnvelopeState(np.zeros((n, self.hop)), np.zeros((n, self.half)), np.ones((n, self.half + 1)))

    def __call__(self, audio: Tensor, coded: Tensor, levels: int, cut: int, edge: np.ndarray | None = None) -> Tensor:
        """``audio`` ``[N, 1, F * hop]``, ``coded`` log-mel ``[N, M, F]`` of ``levels`` levels,
        ``cut`` bins of low band -> ``[N, 1, F * hop]``: offline lined up with ``audio``,
        streamed :attr:`lag` samples later. ``edge``: None, or NumPy ``[N, M, F]`` bool, the bands
        and frames that the 8-kHz edge raised in ``coded`` (module docstring)."""
        if self.strength <= 0:
            return audio
        n, _, t = audio.shape
        f = t // self.hop
        if f * self.hop != t or coded.shape[-1] != f:
            raise ValueError(f"expected {coded.shape[-1]} frames of {self.hop} samples, got {t} samples")
        if f == 0 and not self.streaming_on:
            return audio
        self._like = (audio.dtype, audio.device)  # what drain() gives its tail as
        state = self.state or self.fresh_state(n)
        if state.last_block.shape[0] != n:
            raise ValueError(f"streaming envelope matching holds {state.last_block.shape[0]} channels, got {n}")
        x = audio.reshape(n, t).detach().cpu().double().numpy()
        target = coded.detach().cpu().double().numpy()
        raised = None if edge is None else np.asarray(edge, dtype=bool)
        if raised is not None and raised.shape != target.shape:
            raise ValueError(f"expected the edge's bands and frames {tuple(target.shape)}, got {raised.shape}")
        active = levels >= MIN_LEVELS
        fine = levels >= FLOOR_MIN_LEVELS
        floor = self.floor if fine else 1.0
        blocks = range(0, f, BLOCK_FRAMES)
        out = [self.frames(x[:, s * self.hop : (s + BLOCK_FRAMES) * self.hop], target[..., s : s + BLOCK_FRAMES], state,
                           active, cut, floor, fine, None if raised is None else raised[..., s : s + BLOCK_FRAMES])
               for s in blocks]
        y = np.concatenate([np.zeros((n, 0)), *out], axis=1)  # [N, F * hop]: from half a hop before the audio
        if self.streaming_on:
            self.state = state
        else:  # offline: complete the last window and line the output up
            y = np.concatenate([y[:, self.half :], self.finish(state)], axis=1)
        return torch.from_numpy(y).to(audio.dtype).to(audio.device).reshape(n, 1, t)

    def drain(self) -> Tensor | None:
        """Streaming: the last :attr:`lag` samples ``[N, 1, lag]`` (what follows taken as
        silence); None if nothing is owed. Ends the stream's state."""
        if self.state is None or self.strength <= 0:
            return None
        tail, self.state = self.finish(self.state), None
        dtype, device = self._like
        return torch.from_numpy(tail).to(dtype).to(device)[:, None]

    def frames(self, x: np.ndarray, target: np.ndarray, state: EnvelopeState, active: bool, cut: int,
               floor: float = 1.0, fill: bool = False, edge: np.ndarray | None = None) -> np.ndarray:
        """Whole frames ``x`` ``[N, F * hop]`` with their coded log-mel ``[N, M, F]`` -> the
        ``F * hop`` output samples that are complete, from half a hop before ``x`` on;
        advances ``state``. ``floor``, ``edge``: as :meth:`match` takes them; ``fill``: whether
        these frames are filled (if the matcher has a fill)."""
        n, t = x.shape
        f, hop, half = t // self.hop, self.hop, self.half
        buf = np.concatenate([state.last_block, x], axis=1)  # [N, hop + F * hop]
        gains, missing = self.match(buf, target, cut, floor, fill, edge) if active else (np.ones((n, f, half + 1)), None)
        # window k = 0 .. 2F-1 starts at buf[hop - half + k * half]: frame k // 2's pair
        centred = buf[:, hop - half : t + hop - half].reshape(n, f, hop)  # [N, F, hop]: windows 2f
        later = buf[:, hop:].reshape(n, f, hop)  # windows 2f + 1
        windows = np.stack([centred, later], axis=2).reshape(n, 2 * f, hop)
        if active:
            spectra = np.fft.rfft(windows * self.window, axis=-1) * np.repeat(gains, 2, axis=1)
            if missing is not None:  # each frame's two windows take the table's row of its index
                rows = self.noise[(state.frame + np.arange(f)) % FILL_FRAMES].reshape(1, 2 * f, half + 1)
                spectra += rows * np.repeat(np.sqrt(missing), 2, axis=1)
            pieces = np.fft.irfft(spectra, n=hop, axis=-1) * self.window  # [N, 2F, hop]
        else:
            pieces = windows * (self.window * self.window)
        out = np.zeros((n, t + half))
        out[:, :half] = state.partial
        out[:, :t] += pieces[..., :half].reshape(n, t)  # window k's first half: out[k half : (k + 1) half]
        out[:, half:] += pieces[..., half:].reshape(n, t)
        state.last_block, state.partial, state.gains = buf[:, -hop:].copy(), out[:, t:].copy(), gains[:, -1].copy()
        state.frame += f
        return out[:, :t]

    def match(self, buf: np.ndarray, target: np.ndarray, cut: int, floor: float = 1.0,
              fill: bool = False, edge: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-bin gains of a one-hop window ``[N, F, hop / 2 + 1]`` for the frames whose two
        blocks are ``buf`` ``[N, (F + 1) hop]``, against their coded log-mel ``[N, M, F]``;
        powers compared down to ``floor`` times the log-mel floor (1: log-mel values). And,
        with ``fill`` (and a matcher with a fill), the noise power per bin of those windows'
        spectra, the same shape (else None). ``edge``: None, or ``[N, M, F]`` bool, the bands
        and frames the 8-kHz edge raised: no gain over 1 there, and noise for the rest (with
        ``fill``)."""
        measured = torch.from_numpy(buf).unfold(-1, 2 * self.hop, self.hop)  # [N, F, 2 hop]
        log_mel = frame_log_mel(measured, self.measure_window, self.filterbank).numpy()  # [N, F, M]
        coded = target.transpose(0, 2, 1)
        if floor < 1.0:  # powers, the floor taken off; both sides kept at floor * FLOOR or more, since
            # e^log_mel can round just under FLOOR on silence (a tiny floor would then divide by <= 0)
            reach, lowest = (1.0 - floor) * FLOOR, floor * FLOOR
            have = np.maximum(np.exp(log_mel) - reach, lowest)
            wanted = np.maximum(np.exp(coded) - reach, lowest) / have
        else:
            have, wanted = np.exp(log_mel), np.exp(coded - log_mel)
        edge = None if edge is None or not (fill and self.fill) else edge.transpose(0, 2, 1)  # [N, F, M]
        top = MAX_GAIN if edge is None else np.where(edge, 1.0, MAX_GAIN)
        band = np.clip(wanted ** (self.strength / 2), 1 / MAX_GAIN, top)
        band[..., self.first_bin < max(cut, self.min_bin)] = 1.0
        gains = band @ self.spread
        gains[..., self.uncovered] = 1.0
        if not (fill and self.fill):
            return gains, None
        # Where the gain stops at the limit, the power still missing: have x (wanted^strength -
        # MAX_GAIN^2). `have` counts the floor's share f F (f = floor; F on log-mel values) with
        # the band's power P, and the gain scales P alone, so this is (MAX_GAIN^2 - 1) f F short
        # of it; a band that the comparison finds within the limit (near the floor: P about 0,
        # coded under about MAX_GAIN^2 f F) is not filled. Filling those too, to the coded power,
        # put noise into quiet frames (dev speech 12 kbps mel distance 1.024 -> 1.19, session 34).
        # Kept at 1 (the low band, under MIN_HZ): no fill; under FILL_MIN_HZ the scale is 0.
        # The edge's bands (top 1): the power the decoded band lacks, have x (wanted^strength - 1).
        missing = np.where(band == top, have * (wanted ** self.strength - top * top), 0.0)
        scale = self.fill_scale if edge is None else np.where(edge, self.edge_fill_scale, self.fill_scale)
        return gains, (self.fill * missing * scale) @ self.spread

    def finish(self, state: EnvelopeState) -> np.ndarray:
        """The last half hop ``[N, half]``: the pending half plus the window centred at the
        end of the audio (its second half silence), with the last frame's gains."""
        half = self.half
        window = np.concatenate([state.last_block[:, half:], np.zeros_like(state.last_block[:, half:])], axis=1)
        piece = np.fft.irfft(np.fft.rfft(window * self.window, axis=-1) * state.gains, n=self.hop, axis=-1)
        return state.partial + (piece * self.window)[:, :half]


@functools.lru_cache(maxsize=4)
def noise_table(*shape: int) -> np.ndarray:
    """Unit complex Gaussian noise of ``shape`` (complex64, read-only: one array shared by the
    matchers that ask for it) from :data:`FILL_SEED`: splitmix64 of the values' indices (uint64
    arithmetic, the same on every machine and NumPy version), two uniforms each, then Box-Muller."""
    count = math.prod(shape)
    state = (np.arange(2 * count, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(FILL_SEED)
    state = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    state = (state ^ (state >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    state ^= state >> np.uint64(31)
    uniform = ((state >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # in (0, 1)
    radius = np.sqrt(-np.log(uniform[:count]))  # E|z|^2 = 1: radius^2 is exponential of mean 1
    table = (radius * np.exp(2j * np.pi * uniform[count:])).astype(np.complex64).reshape(shape)
    table.flags.writeable = False
    return table
