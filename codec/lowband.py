"""The low band's waveform, coded where a bitrate has more codes than the log-mel levels use.

Why (docs/model_card.md, "The low band"): the log-mel codec's decoder makes up its own phase,
and PESQ hears that most below 1 kHz, while log-mel levels beyond the eighth add little. On
the dev set's speech, v17's 12 kbps (16 log-mel levels) scored PESQ 2.20 and mel distance
1.48; v18's (6 levels and the waveform below 862 Hz) 3.20 and 1.15, and at 24 kbps (8 levels,
below 2.2 kHz) 3.75 and 0.88 against 2.22 and 1.47. The cost: speech ViSQOL at 12 kbps, 3.51
-> 3.35.

How: a modified discrete cosine transform (MDCT) of ``hop`` coefficients per frame with a
low-overlap window: a sine ramp over ``overlap`` samples, flat over the rest of the frame's
hop, so frame ``t`` reads input ``[t * hop - overlap, (t + 1) * hop)``: no look-ahead. Its
inverse completes input ``[t * hop - overlap, (t + 1) * hop - overlap)`` when frame ``t``
arrives; with ``overlap`` equal to the model's ``output_delay`` that is exactly the block the
spectral decoder makes from frame ``t`` (which trails the input by ``output_delay``), so the low
band adds no latency. The decoder's own spectrum is cut below the coded band
(:func:`codec.spectral.low_cut`) and the coded band is added to its output.

Each frame's first ``bins`` coefficients (``bins`` as many as the frame's bits allow,
:func:`bins_for`) are divided by ``envelope ** 0.5`` (the envelope: the per-coefficient
amplitude that the frame's decoded log-mel spectrum implies, so that both ends have it) and by
a gain in 1.5-dB steps; then rounded to steps of ``gain / LEVELS``. Bits, most significant
first: the gain's 6, then the coefficients, cut into the words of the codes (``word_bits``
each). Three codings of the coefficients (``CodecConfig.lowband_coding``):

- ``fixed`` (v18 to v20): 4 bits each, within 7 steps either way; the gain at or a little
  below the frame's largest ratio (:func:`quantize`).
- ``arithmetic`` (v21): the steps as integers within :data:`ARITH_LARGEST` either way,
  arithmetic-coded against one Laplace table (codec/arith.py) in the bits the gain leaves; the
  gain the one, of :data:`ARITH_GAINS` codes around the largest ratio's, whose rounded
  coefficients fit those bits and come closest (:func:`quantize_arithmetic`). Small
  coefficients cost few bits, so the steps are finer: on 20 held-out speech excerpts PESQ
  3.52 -> 3.69 at 12 kbps and 3.94 -> 4.26 at 24 kbps (docs/model_card.md).
- ``arithmetic-edge`` (v24): as ``arithmetic``, with the steps of the 8-kHz edge's band powers
  (codec/edge.py) coded first, each with its own table, in the same code; the coefficients fit
  the bits those leave, frame by frame.

Float64 throughout, so that streamed and offline frames agree.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import Tensor

from . import arith
from .edge import EDGE_COST, EDGE_TABLE, edge_groups
from .config import LOWBAND_CODINGS
from .logmel import mel_edges, mel_filterbank
from .native import lowband_search
from .streaming import ConvState, ConvTransposeState, StreamingModule

if TYPE_CHECKING:
    from .config import CodecConfig

T = TypeVar("T", Tensor, np.ndarray)  # what _step takes and gives

COEF_BITS = 4
LEVELS = 2 ** (COEF_BITS - 1) - 1  # a coefficient is rounded to -LEVELS..LEVELS steps (15 values)
GAIN_BITS = 6
GAIN_STEPS_PER_OCTAVE = 4  # 1.5 dB
GAIN_OFFSET = 2 ** (GAIN_BITS - 1)  # gain code of a ratio of 1
GAIN_MAX = 2 ** GAIN_BITS - 1  # the largest gain code
SHAPING = 0.5  # the quantizer's step follows envelope ** SHAPING
GAIN_SEARCH = 2  # gain codes tried below the one that covers a frame's largest ratio (quantize)
SEARCH_WEIGHT = 0.3  # weight of the mel bands under a band below SEARCH_WEIGHT_BELOW_HZ (search_weights)
SEARCH_WEIGHT_BELOW_HZ = 1000.0
ARITH_SCALE = 3.0  # the Laplace table's scale in steps (held-out 12 kbps PESQ: 2 -> 3.65, 3 -> 3.67, 5 -> 3.60)
ARITH_LARGEST = 40  # coefficients are clipped to this many steps either way
ARITH_GAINS = 32  # gain codes tried: from ARITH_FIRST_SHIFT above the one that covers the largest ratio down
ARITH_FIRST_SHIFT = 16
ARITH_TABLE = arith.SymbolTable.laplace(ARITH_SCALE, ARITH_LARGEST)
ARITH_COST = ARITH_TABLE.cost()  # [symbols] bits, float64
ARITH_ZERO = ARITH_LARGEST  # the symbol of a coefficient of 0 steps (symbols are steps + ARITH_LARGEST)
ARITH_FIT_GAINS = 2  # finer gains than plain rounding fits, tried with rounding towards zero (_rounded_to_fit)
EDGE_MIN_BINS = 13  # the edge's steps ride from this many coefficients: 4 bits a coefficient cover the largest
# steps (2 x 8.7 bits) and all-zero coefficients (2.6 bits each)
ARITH_BLOCK_FRAMES = 256  # frames searched at once (bounds the temporaries: frames x ARITH_GAINS x bins)


def bins_for(words: int, word_bits: int) -> int:
    """Coefficients a frame of ``words`` codes of ``word_bits`` carries (what is left over
    after the gain at 4 bits each; the spare bits are zero). Arithmetic coding codes as many
    coefficients, in all the bits after the gain."""
    return max(0, (words * word_bits - GAIN_BITS) // COEF_BITS)


def band_of(cfg: "CodecConfig", words: int) -> tuple[int, float]:
    """The low band a frame of ``words`` low-band words carries: its coefficients and its top
    in Hz (they are ``sample_rate / (2 hop)`` apart)."""
    bins = min(bins_for(words, cfg.bits_per_code), cfg.hop_length)
    return bins, bins * cfg.sample_rate / (2 * cfg.hop_length)


def edge_count(coding: str, sample_rate: int, n_mels: int) -> int:
    """The 8-kHz edge's steps a frame of the ``coding`` may carry: one for each of its groups
    (codec/edge.py) with ``arithmetic-edge``, else none."""
    return len(edge_groups(sample_rate, n_mels)) if coding == "arithmetic-edge" else 0


def frame_edges(edges: int, bins: int) -> int:
    """Of ``edges`` steps, those a frame of ``bins`` coefficients carries: all, or none under
    :data:`EDGE_MIN_BINS` (then the largest steps and all-zero coefficients might not fit)."""
    return edges if bins >= EDGE_MIN_BINS else 0


def describe(cfg: "CodecConfig", n_q: int) -> str:
    """What a frame of ``n_q`` codes holds, in words: its levels and low-band words
    (:meth:`CodecConfig.layout`), e.g. ``6 log-mel levels + 10 low-band words (23 MDCT
    coefficients, arithmetic-coded: the waveform below 862 Hz; and the power around 8 kHz)``."""
    levels, words = cfg.layout(n_q)
    text = f"{levels} {'log-mel' if cfg.encoder == 'logmel' else 'latent'} levels"
    if words:
        bins, top = band_of(cfg, words)
        coded = ", arithmetic-coded" if cfg.lowband_coding != "fixed" else ""
        text += f" + {words} low-band words ({bins} MDCT coefficients{coded}: the waveform below {top:.0f} Hz"
        edges = frame_edges(edge_count(cfg.lowband_coding, cfg.sample_rate, cfg.latent_dim), bins)
        text += "; and the power around 8 kHz)" if edges else ")"
    return text


@functools.lru_cache(maxsize=32)
def search_weights(cfg: "CodecConfig", n_q: int) -> Tensor | None:
    """How much each log-mel band's squared error counts when a frame of ``n_q`` codes searches
    its levels (:func:`codec.quantizer.beam_search`): ``SEARCH_WEIGHT`` for the bands that end
    under the low band's top where that lies below ``SEARCH_WEIGHT_BELOW_HZ`` (12 kbps: 19 of
    80 bands under 862 Hz), 1 for the others; None (all 1) elsewhere. ``[n_mels]`` float64,
    the same tensor for the same config and codes (kept: the search caches what it derives
    from them; do not change it in place).

    Why (session 26): the decoder's own output under the band is silenced, so those bands'
    levels only set the band's steps and the decoder's context, and the levels' precision is
    worth more above. On 40 held-out speech excerpts at 12 kbps, speech ViSQOL 3.546 -> 3.653
    (PESQ 3.368 -> 3.353, within the spread); at 24 kbps (40 bands under 2,175 Hz) 0.3 cost
    PESQ (3.869 -> 3.809 on 20 excerpts) and 0.6 changed nothing, so that bitrate keeps 1."""
    words = cfg.layout(n_q)[1]
    if not words or cfg.encoder != "logmel":
        return None
    top = band_of(cfg, words)[1]
    if top >= SEARCH_WEIGHT_BELOW_HZ:
        return None
    edges = mel_edges(cfg.sample_rate, cfg.latent_dim)
    with torch.inference_mode(False):  # (kept: an inference tensor would defeat the search's caches)
        return torch.from_numpy(np.where(edges[2:] <= top, SEARCH_WEIGHT, 1.0))


def low_overlap_window(hop: int, overlap: int) -> Tensor:
    """``[hop + overlap]`` float64: a sine ramp up over ``overlap`` samples, ones, and the
    ramp down over the last ``overlap`` (the next frame's ramp up): Princen-Bradley, so the
    MDCT's aliasing cancels."""
    ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap)
    return torch.cat([ramp, torch.ones(hop - overlap, dtype=torch.float64), ramp.flip(0)])


def mdct_basis(hop: int, overlap: int) -> Tensor:
    """``[hop + overlap, hop]`` float64: the MDCT's cosines (block of ``2 * hop``) on the
    window's non-zero samples, which start ``(hop - overlap) / 2`` into the block."""
    n = torch.arange(2 * hop, dtype=torch.float64)[:, None]
    k = torch.arange(hop, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / hop * (n + 0.5 + hop / 2) * (k + 0.5))
    start = (hop - overlap) // 2
    return basis[start : start + hop + overlap]


class LowbandCoder(StreamingModule):
    """Shared geometry of the two ends: window, MDCT basis and the envelope's mel weights."""

    def __init__(self, sample_rate: int, hop: int, overlap: int, n_mels: int, word_bits: int,
                 coding: str = "fixed") -> None:
        super().__init__()
        if not 0 < overlap <= hop or (hop - overlap) % 2:
            raise ValueError(f"the low band's overlap must be in (0, hop] with hop - overlap even, got {overlap}")
        if coding not in LOWBAND_CODINGS:
            raise ValueError(f"the low band's coding must be one of {LOWBAND_CODINGS}, got {coding!r}")
        self.hop, self.overlap, self.word_bits, self.coding = hop, overlap, word_bits, coding
        self.edges = edge_count(coding, sample_rate, n_mels)  # steps a frame (at most)
        self.register_buffer("window", low_overlap_window(hop, overlap), persistent=False)
        self.register_buffer("basis", mdct_basis(hop, overlap), persistent=False)
        # The mel filters at the MDCT's bin centres ((k + 0.5) * rate / (2 hop)): the odd bins of a
        # 4-hop FFT. Each band's mean power per bin of the 2-hop FFT the log-mel frames use is
        # its power over the sum of its filter; a coefficient's power is the filter-weighted mean
        # of the bands around it.
        at_centres = mel_filterbank(sample_rate, 4 * hop, n_mels)[:, 1::2]  # [n_mels, hop]
        per_bin = 1.0 / mel_filterbank(sample_rate, 2 * hop, n_mels).sum(axis=1)  # [n_mels]
        weights = at_centres * per_bin[:, None] / np.maximum(at_centres.sum(axis=0), 1e-12)
        self.register_buffer("mel_weights", torch.from_numpy(weights), persistent=False)  # [n_mels, hop]
        self._exact = {name: buffer.clone() for name, buffer in self.named_buffers()}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """The buffers go where the module goes but stay float64 and exact: ``model.half()``
        would round the MDCT basis and the envelope's weights, and the codes with them."""
        super()._apply(fn, recurse)
        for name, exact in self._exact.items():
            self._buffers[name] = exact.to(self._buffers[name].device, copy=True)
        return self

    def bins(self, words: int) -> int:
        return min(bins_for(words, self.word_bits), self.hop)

    def edges_for(self, bins: int) -> int:
        """Edge steps a frame of ``bins`` coefficients carries (:func:`frame_edges`)."""
        return frame_edges(self.edges, bins)

    def analyse(self, inp: Tensor, bins: int) -> Tensor:
        """The first ``bins`` MDCT coefficients of each frame: audio ``[B, overlap + F * hop]``
        (frame ``t`` reads ``[t * hop, t * hop + hop + overlap)``) -> ``[B, F, bins]`` float64."""
        frames = inp.double().unfold(-1, self.hop + self.overlap, self.hop)  # [B, F, hop + overlap]
        return (frames * self.window) @ self.basis[:, :bins]

    def steps(self, latent: Tensor, bins: int) -> Tensor:
        """Decoded log-mel frames ``[B, n_mels, F]`` -> each coefficient's step before the
        gain, ``envelope ** SHAPING`` ``[B, F, bins]`` float64."""
        power = torch.exp(latent.double()).transpose(1, 2) @ self.mel_weights[:, :bins]  # [B, F, bins]
        return power.clamp_min(1e-12) ** (0.5 * SHAPING)


class LowbandEncoder(LowbandCoder):
    """Audio and its decoded log-mel frames -> the low band's words.

    ``[B, 1, F * hop]`` and ``[B, n_mels, F]`` -> ``[B, words, F]`` int64. While streaming,
    the state is the input's last ``overlap`` samples (frame ``t`` reads from ``t * hop -
    overlap``); offline they are zeros."""

    def forward(self, x: Tensor, latent: Tensor | None, words: int, edge: Tensor | None = None) -> Tensor:
        """``latent`` may be None when ``words`` is 0 (then only the state moves on). ``edge``:
        with the ``arithmetic-edge`` coding, the frames' edge steps ``[B, F, edges]``
        (codec/edge.py; None: zeros, as training codes them)."""
        if words and latent is None:
            raise ValueError("the low band's words need the decoded latent frames")
        b, f = x.shape[0], x.shape[-1] // self.hop
        if x.shape[-1] != f * self.hop or (latent is not None and latent.shape[-1] != f):
            raise ValueError(f"expected whole frames of audio and their latent, got {x.shape[-1]} samples")
        state = self.state if self.streaming_on else None
        prev = state.buffer if state is not None else x.new_zeros(b, 1, self.overlap, dtype=torch.float64)
        inp = torch.cat([prev, x.double()], dim=-1)[:, 0]  # [B, overlap + F * hop]
        if self.streaming_on:
            self.state = ConvState(inp[:, None, inp.shape[-1] - self.overlap :].clone())
        bins = self.bins(words)
        if bins == 0 or f == 0:  # (too few bits for a coefficient: the words stay zero)
            return torch.zeros(b, words, f, dtype=torch.long, device=x.device)
        ratio = self.analyse(inp, bins) / self.steps(latent, bins)
        if self.coding != "fixed":
            side = x.new_zeros(b, f, self.edges, dtype=torch.long) if edge is None else edge.long()
            if side.shape != (b, f, self.edges):
                raise ValueError(f"expected edge steps [{b}, {f}, {self.edges}], got {tuple(side.shape)}")
            side = side[..., : self.edges_for(bins)]
            bits = words * self.word_bits - GAIN_BITS - _in_order(EDGE_COST[side.cpu().numpy()])
            gain_code, q = quantize_arithmetic(ratio, bits)
            return _pack_arithmetic(gain_code, q, words, self.word_bits, side)
        gain_code, q = quantize(ratio)
        return _pack(gain_code, q, words, self.word_bits)


class LowbandDecoder(LowbandCoder):
    """The low band's words and the decoded log-mel frames -> the low band's samples, in the
    decoder's output time. ``[B, words, F]`` and ``[B, n_mels, F]`` -> ``[B, 1, F * hop]``.
    While streaming, the state is the ``overlap`` samples of the last frame still owed to the
    next block (their other half comes with the next frame)."""

    def forward(self, words: Tensor, latent: Tensor) -> Tensor:
        return self.synthesise(self.coefficients(words, latent)[1])

    def coefficients(self, words: Tensor, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Words ``[B, words, F]`` and latent ``[B, n_mels, F]`` -> the coefficients over their
        steps (what the quantizer rounded, about -1..1 of the gain) and the coefficients, both
        ``[B, F, bins]`` float64."""
        ratio, coefs, _ = self.read(words, latent)
        return ratio, coefs

    def read(self, words: Tensor, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`coefficients`, and the edge steps ``[B, F, edges_for(bins)]`` int64
        (codec/edge.py; none but with the ``arithmetic-edge`` coding)."""
        bins = self.bins(words.shape[1])
        if self.coding == "fixed":
            gain_code, q = _unpack(words, bins, self.word_bits)
            edge = torch.zeros(words.shape[0], words.shape[-1], 0, dtype=torch.long, device=words.device)
        else:
            gain_code, q, edge = _unpack_arithmetic(words, bins, self.word_bits, self.edges_for(bins))
        ratio = q.double() * _step(gain_code.double())
        return ratio, ratio * self.steps(latent, bins), edge

    def synthesise(self, coefs: Tensor) -> Tensor:
        """MDCT coefficients ``[B, F, bins]`` (the rest zero) -> the blocks they complete,
        ``[B, 1, F * hop]`` float32, block ``t`` the input's ``[t * hop - overlap, (t + 1) *
        hop - overlap)`` (overlap-added with the last frame's, or the state's, tail)."""
        b, f, bins = coefs.shape
        frames = (coefs @ self.basis[:, :bins].T) * self.window * (2.0 / self.hop)  # [B, F, hop + overlap]
        head, tail = frames[..., : self.hop], frames[..., self.hop :]
        y = head.clone()
        y[:, 1:, : self.overlap] += tail[:, :-1]
        state = self.state if self.streaming_on else None
        if state is not None and f:
            y[:, 0, : self.overlap] += state.partial
        if self.streaming_on and f:
            self.state = ConvTransposeState(tail[:, -1])
        return y.reshape(b, 1, f * self.hop).float()


def quantize(ratio: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients over their steps ``[B, F, bins]`` -> each frame's gain code ``[B, F, 1]``
    and the coefficients in steps of ``gain / LEVELS``, ``[B, F, bins]`` in -LEVELS..LEVELS
    (both int64).

    The gain is, of the codes from the one that just covers the frame's largest ratio down
    to ``GAIN_SEARCH`` steps (1.5 dB each) below it, the one whose rounded coefficients come
    closest to the ratios (squared error; a tie keeps the larger gain). Below the largest,
    the few largest coefficients are clipped to LEVELS steps and all the others get finer
    steps. The decoder only reads the code, so this is the encoder's choice alone (session
    26, on 20 held-out speech excerpts: PESQ 3.292 -> 3.317 at 12 kbps, 3.786 -> 3.860 at
    24 kbps against the largest ratio's gain)."""
    top = torch.from_numpy(_covering_code(ratio.detach().cpu().double().numpy())).to(ratio)
    codes = (top - torch.arange(GAIN_SEARCH + 1, dtype=top.dtype, device=top.device)).clamp(0, GAIN_MAX)
    step = _step(codes)[..., None]  # [B, F, candidates, 1]
    q = torch.round(ratio[..., None, :] / step).clamp(-LEVELS, LEVELS)  # [B, F, candidates, bins]
    best = ((q * step - ratio[..., None, :]) ** 2).sum(-1).argmin(-1, keepdim=True)  # [B, F, 1] (first of ties)
    picked = q.gather(-2, best[..., None].expand(*best.shape, q.shape[-1]))[..., 0, :]
    return codes.gather(-1, best).long(), picked.long()


def quantize_arithmetic(ratio: Tensor, bits: float | np.ndarray) -> tuple[Tensor, Tensor]:
    """Coefficients over their steps ``[B, F, bins]`` -> each frame's gain code ``[B, F, 1]``
    and the coefficients in steps of ``gain / LEVELS``, ``[B, F, bins]`` in
    ``-ARITH_LARGEST..ARITH_LARGEST`` (both int64), whose code in :data:`ARITH_TABLE` fits
    ``bits`` bits (one number, or one a frame ``[B, F]``).

    The gain is, of :data:`ARITH_GAINS` codes from 16 (24 dB) above the one that covers the
    frame's largest ratio down, the one whose rounded coefficients fit and come closest
    (squared error; a tie keeps the larger gain); at the :data:`ARITH_FIT_GAINS` gains finer
    than the finest where plain rounding fits, the coefficients are first rounded towards zero
    where that costs least (:func:`_rounded_to_fit`; the two coarsest where none fits). A frame
    that none fits even so (its steps cost more than the bits even at the coarsest gain tried:
    a frame near or beyond the largest gain's reach) gets the largest gain, its coefficients clipped to as many steps as fit (all zeros
    always fit: a coefficient's cheapest symbol costs under 4 bits, and :func:`bins_for`
    counts 4 a coefficient; with the edge's steps taken out first, because they ride only
    from :data:`EDGE_MIN_BINS` coefficients).
    Non-finite ratios count as 0 (NaN) or as the largest (infinities). frame.c's
    ``rvq_lowband_search`` makes the same choices, bit for bit, where the native runtime
    builds (a live frame: about 0.04 ms instead of 0.35); these NumPy steps elsewhere, every
    sum taken left to right as frame.c takes it (:func:`_in_order`)."""
    x = np.nan_to_num(ratio.detach().cpu().double().numpy(), nan=0.0, posinf=1e30, neginf=-1e30)
    top = _covering_code(x)  # [B, F, 1]
    b, f, bins = x.shape
    budget = np.broadcast_to(np.asarray(bits, dtype=np.float64), (b, f))
    found = lowband_search(x.reshape(b * f, bins), top.reshape(b * f), budget.reshape(b * f), ARITH_GAINS, ARITH_FIRST_SHIFT, ARITH_FIT_GAINS,
                           ARITH_LARGEST, STEP_OF, ARITH_COST) if b * f and bins else None
    if found is not None:  # frame.c: the same choices, bit for bit, in one call
        return torch.from_numpy(found[0].reshape(b, f, 1)).to(ratio.device), torch.from_numpy(found[1].reshape(b, f, bins)).to(ratio.device)
    shifts = np.arange(ARITH_FIRST_SHIFT, ARITH_FIRST_SHIFT - ARITH_GAINS, -1.0)  # coarse to fine
    codes, steps = [], []
    for s in range(0, x.shape[1], ARITH_BLOCK_FRAMES):  # (bounds the temporaries)
        r = x[:, s : s + ARITH_BLOCK_FRAMES, None, :]  # [B, f, 1, bins]
        limit = budget[:, s : s + ARITH_BLOCK_FRAMES, None]  # [B, f, 1]
        code = np.clip(top[:, s : s + ARITH_BLOCK_FRAMES] + shifts, 0, GAIN_MAX)  # [B, f, G]
        step = _step(code)[..., None]
        q = np.clip(np.round(r / step), -ARITH_LARGEST, ARITH_LARGEST)  # [B, f, G, bins]
        fits = _in_order(_cost(q)) <= limit
        # the next finer gains than the finest that fits, rounded towards zero where that costs least
        finest = np.where(fits.any(-1, keepdims=True), (fits * np.arange(ARITH_GAINS)).max(-1, keepdims=True), -1)
        near = np.minimum(finest + np.arange(1, ARITH_FIT_GAINS + 1), ARITH_GAINS - 1)[..., None]
        rounded = _rounded_to_fit(np.take_along_axis(q, near, -2), r, np.take_along_axis(step, near, -2), limit[..., None])
        np.put_along_axis(q, np.broadcast_to(near, rounded.shape), rounded, -2)
        np.put_along_axis(fits, near[..., 0], _in_order(_cost(rounded)) <= limit, -1)  # (only those changed)
        err = _in_order((q * step - r) ** 2)  # [B, f, G]
        best = np.where(fits, err, np.inf).argmin(-1)[..., None]  # [B, f, 1]: first, the coarsest, of ties
        picked = np.take_along_axis(q, best[..., None], -2)[..., 0, :]
        chosen = np.take_along_axis(code, best, -1)
        missed = ~np.take_along_axis(fits, best, -1)[..., 0]  # [B, f]: none fits
        if missed.any():
            chosen[missed], picked[missed] = _clipped_to_fit(r[missed][:, 0], limit[..., 0][missed])
        codes.append(chosen)
        steps.append(picked)
    if not codes:  # no frames
        codes, steps = [top], [x]  # [B, 0, 1], [B, 0, bins]
    out = np.concatenate(codes, axis=1), np.concatenate(steps, axis=1)
    return tuple(torch.from_numpy(v.astype(np.int64)).to(ratio.device) for v in out)  # type: ignore[return-value]


def _in_order(a: np.ndarray) -> np.ndarray:
    """``[..., n]`` -> ``[...]``: each row summed left to right (NumPy's ``sum`` adds in pairs),
    as frame.c's ``rvq_lowband_search`` adds, so that both choose alike bit for bit."""
    return np.cumsum(a, axis=-1)[..., -1] if a.shape[-1] else a.sum(-1)


def _cost(q: np.ndarray) -> np.ndarray:
    """Each step's cost in bits in :data:`ARITH_TABLE`, ``[...]`` -> ``[...]``."""
    return ARITH_COST[(q + ARITH_ZERO).astype(np.int64)]


def _rounded_to_fit(q: np.ndarray, ratio: np.ndarray, step: np.ndarray, bits: float | np.ndarray) -> np.ndarray:
    """Steps ``q`` ``[..., bins]`` (``ratio`` rounded to ``step``) whose cost is over ``bits``
    -> the same with coefficients moved one step towards zero, those that cost the least
    squared error per bit saved first, until the cost fits (if it can: the caller checks).
    So a gain too fine for plain rounding may still fit, closer than the next coarser gain.
    Rows that fit are unchanged; a stable sort, so every row as it would be alone."""
    now = _cost(q)
    toward = q - np.sign(q)
    saved = now - _cost(toward)  # bits a move saves (none for 0, or in the table's flat tail)
    worse = (toward * step - ratio) ** 2 - (q * step - ratio) ** 2
    price = np.where(saved > 0, worse / np.maximum(saved, 1e-9), np.inf)
    order = np.argsort(price, axis=-1, kind="stable")
    over = _in_order(now)[..., None] - bits
    moves = (np.cumsum(np.take_along_axis(saved, order, -1), -1) < over).sum(-1, keepdims=True) + 1  # cheapest first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(q.shape[-1]), order.shape), -1)
    return np.where((rank < moves) & (over > 0) & (saved > 0), toward, q)


def _covering_code(ratio: np.ndarray) -> np.ndarray:
    """The gain code (unclamped, float) whose gain just covers each frame's largest ratio,
    ``[B, F, bins]`` -> ``[B, F, 1]``."""
    peak = np.maximum(np.abs(ratio).max(-1, keepdims=True, initial=0.0), 1e-30)
    return np.ceil(np.log2(peak) * GAIN_STEPS_PER_OCTAVE - 1e-9) + GAIN_OFFSET


def _clipped_to_fit(ratio: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[M, bins]`` that no gain fits, with their bits ``[M]`` -> the largest gain code
    ``[M, 1]`` and their steps at it ``[M, bins]``, clipped to the most steps
    (``ARITH_LARGEST`` down to 0) that fit."""
    step = _step(np.float64(GAIN_MAX))
    limits = np.arange(ARITH_LARGEST, -1, -1.0)[:, None, None]
    q = np.clip(np.clip(np.round(ratio / step), -ARITH_LARGEST, ARITH_LARGEST)[None], -limits, limits)  # [limits, M, bins]
    first = (_in_order(_cost(q)) <= bits).argmax(0)  # [M]: the most steps that fit
    return np.full((ratio.shape[0], 1), float(GAIN_MAX)), q[first, np.arange(ratio.shape[0])]


def _pack_arithmetic(gain_code: Tensor, q: Tensor, words: int, word_bits: int, edge: Tensor | None = None) -> Tensor:
    """Gain ``[B, F, 1]``, coefficients ``[B, F, bins]`` (-ARITH_LARGEST..ARITH_LARGEST) and
    edge steps ``[B, F, edges]`` (0..EDGE_LARGEST; None: none) -> words
    ``[B, words, F]``: the gain's bits, then the arithmetic code of the edge steps
    (:data:`EDGE_TABLE`) and the coefficients (:data:`ARITH_TABLE`) in the rest, most
    significant first. A frame whose code does not fit (the float sum of the symbols' costs,
    which :func:`quantize_arithmetic` checks, within rounding of the limit) is sent with its
    coefficients zeros."""
    b, f, bins = q.shape
    side = q.new_zeros(b, f, 0) if edge is None else edge
    tables = [EDGE_TABLE] * side.shape[-1] + [ARITH_TABLE] * bins
    bits = words * word_bits - GAIN_BITS
    mask, shifts = (1 << word_bits) - 1, range(word_bits * (words - 1), -1, -word_bits)
    out = []
    rows = zip(gain_code.reshape(b * f).tolist(), side.reshape(b * f, -1).tolist(),
               (q + ARITH_ZERO).reshape(b * f, bins).tolist())
    for gain, steps, row in rows:
        code = arith.encode(steps + row, tables, bits)
        if code is None:
            code = arith.encode(steps + [ARITH_ZERO] * bins, tables, bits)
        value = (gain << bits) | code
        out.append([(value >> shift) & mask for shift in shifts])
    return torch.tensor(out, dtype=torch.long, device=q.device).reshape(b, f, words).transpose(1, 2)


def _unpack_arithmetic(words: Tensor, bins: int, word_bits: int, edges: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Words ``[B, words, F]`` -> gain codes ``[B, F, 1]``, coefficients ``[B, F, bins]`` in
    steps (-ARITH_LARGEST..ARITH_LARGEST) and ``edges`` edge steps ``[B, F, edges]``
    (0..EDGE_LARGEST)."""
    b, n, f = words.shape
    bits, mask = n * word_bits - GAIN_BITS, (1 << word_bits) - 1
    tables = [EDGE_TABLE] * edges + [ARITH_TABLE] * bins
    gains, q = [], []
    for row in words.transpose(1, 2).reshape(b * f, n).tolist():
        value = 0
        for word in row:
            value = (value << word_bits) | (word & mask)
        gains.append(value >> bits)
        q.append(arith.decode(value & ((1 << bits) - 1), edges + bins, tables, bits))
    gain = torch.tensor(gains, dtype=torch.long).reshape(b, f, 1)
    symbols = torch.tensor(q, dtype=torch.long).reshape(b, f, edges + bins)
    steps, edge = symbols[..., edges:] - ARITH_ZERO, symbols[..., :edges]
    return gain.to(words.device), steps.to(words.device), edge.to(words.device)


def _step(code: T) -> T:
    """The coefficients' step at gain code(s) ``code``: the gain, ``2 ** ((code - GAIN_OFFSET)
    / GAIN_STEPS_PER_OCTAVE)``, over ``LEVELS``. A float tensor (the decoder, the fixed
    coding's search) or a NumPy array (the arithmetic coding's search), answered in kind."""
    exp2 = torch.exp2 if isinstance(code, Tensor) else np.exp2
    return exp2((code - GAIN_OFFSET) / GAIN_STEPS_PER_OCTAVE) / LEVELS


def _pack(gain_code: Tensor, q: Tensor, words: int, word_bits: int) -> Tensor:
    """Gain ``[B, F, 1]`` and coefficients ``[B, F, bins]`` (-LEVELS..LEVELS) -> words ``[B,
    words, F]``: the bits most significant first (a coefficient as ``q + LEVELS`` in
    ``COEF_BITS``), zero-padded to ``words * word_bits``."""
    b, f, bins = q.shape
    bits = torch.zeros(b, f, words * word_bits, dtype=torch.long, device=q.device)
    bits[..., :GAIN_BITS] = _bits(gain_code, GAIN_BITS).reshape(b, f, GAIN_BITS)
    bits[..., GAIN_BITS : GAIN_BITS + bins * COEF_BITS] = _bits(q + LEVELS, COEF_BITS).reshape(b, f, bins * COEF_BITS)
    return _value(bits.reshape(b, f, words, word_bits), word_bits).transpose(1, 2)


def _unpack(words: Tensor, bins: int, word_bits: int) -> tuple[Tensor, Tensor]:
    """Words ``[B, words, F]`` -> gain codes ``[B, F, 1]`` and coefficients ``[B, F, bins]``
    in steps (-LEVELS..LEVELS + 1: the code 15, which :func:`_pack` never writes, reads as 8)."""
    b, n, f = words.shape
    bits = _bits(words.transpose(1, 2).long(), word_bits).reshape(b, f, n * word_bits)
    gain = _value(bits[..., :GAIN_BITS], GAIN_BITS)[..., None]
    q = _value(bits[..., GAIN_BITS : GAIN_BITS + bins * COEF_BITS].reshape(b, f, bins, COEF_BITS), COEF_BITS)
    return gain, q - LEVELS


def _bits(values: Tensor, width: int) -> Tensor:
    """``[...]`` -> ``[..., width]``, most significant bit first."""
    return (values[..., None] >> torch.arange(width - 1, -1, -1, device=values.device)) & 1


def _value(bits: Tensor, width: int) -> Tensor:
    """``[..., width]`` bits, most significant first -> ``[...]``."""
    return (bits * 2 ** torch.arange(width - 1, -1, -1, device=bits.device)).sum(-1)


STEP_OF = _step(np.arange(GAIN_MAX + 1, dtype=np.float64))  # [gain codes]: each code's step, for frame.c
