"""The codec: causal encoder + residual vector quantizer + decoder."""

from __future__ import annotations

import contextlib
import numbers
import threading
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .audio_io import AudioError, require_float
from .cache import TensorCache
from .config import CodecConfig
from .edge import edge_groups, edge_steps, with_edge
from .envelope import FLOOR_MIN_LEVELS, EnvelopeMatch
from .errors import ModelBusyError
from .frame import FramePlan
from .logmel import LogMelEncoder
from .lowband import LowbandDecoder, LowbandEncoder, search_weights
from .native import NativePlan
from .postfilter import PitchPostfilter
from .quantizer import QuantizerOutput, ResidualVectorQuantizer
from .seanet import Decoder, Encoder
from .spectral import SpectralDecoder, low_cut
from .streaming import streaming

MAX_CHANNELS = 255  # channels a .rvq header holds; more in encode's input is taken for [B, T, C]
_STATE_LOCK = threading.Lock()  # held for a moment to check and change any model's stream state


@dataclass
class CodecOutput:
    """Training forward pass: reconstruction ``audio`` ``[B, 1, T]`` and the quantizer's output."""

    audio: Tensor
    quantized: QuantizerOutput


class Codec(nn.Module):
    """Neural audio codec. Audio at ``cfg.sample_rate``, channels coded independently.

    ``encode``: ``[B, C, T]`` -> codes ``[B, C, K, F]``; ``decode``: codes -> ``[B, C, F * hop]``.
    Inside ``with model.streaming():`` both keep state between calls: ``encode`` returns the
    frames completed by each chunk, and :meth:`flush` pads the last partial frame with zeros;
    ``decode`` returns the offline samples, ``stream_delay - cfg.output_delay`` samples later
    with envelope matching (codec/envelope.py), and :meth:`drain` the last of them at the end.
    A stream keeps the batch and channels it started with.

    One stream at a time per model object, in the thread that opened it: while it is open,
    calls from other threads raise :class:`ModelBusyError` (the state lives in the model's
    modules), and so does opening one while another thread codes offline. Offline calls from
    several threads at once are fine. For more streams, load more models (:func:`codec.load`).
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg) if cfg.encoder == "seanet" else LogMelEncoder(cfg.sample_rate, cfg.hop_length, cfg.latent_dim)
        self.quantizer = ResidualVectorQuantizer(cfg.latent_dim, cfg.n_q, cfg.codebook_size)
        self.decoder = Decoder(cfg) if cfg.decoder == "seanet" else SpectralDecoder(
            cfg.latent_dim + cfg.decoder_lowband_bins, cfg.hop_length, cfg.decoder_dim, 4 * cfg.decoder_dim, cfg.decoder_layers)
        self.postfilter = PitchPostfilter(cfg.sample_rate, cfg.hop_length, cfg.postfilter)
        self.edge_groups = edge_groups(cfg.sample_rate, cfg.latent_dim)  # codec/edge.py: bands whose power the low band may carry
        self.envelope = EnvelopeMatch(cfg.sample_rate, cfg.hop_length, cfg.latent_dim, cfg.envelope_match,
                                      cfg.envelope_floor, cfg.envelope_fill) \
            if cfg.envelope_match else None  # codec/envelope.py: no weights
        self.lowband_encoder: LowbandEncoder | None = None  # codec/lowband.py: no weights
        self.lowband_decoder: LowbandDecoder | None = None
        self._build_lowband()
        self._held: Tensor | None = None  # while streaming: input of the incomplete frame [B*C, 1, <hop]
        self._owner: int | None = None  # while streaming: the thread that opened the stream
        self._offline = 0  # offline encode/decode calls running (in any thread)
        self._shapes: dict[str, tuple[int, int]] = {}  # while streaming: "encode"/"decode" -> its (B, C)
        self._plans: dict[str, FramePlan | NativePlan] = {}  # while streaming: one-frame plans, built on first use
        self.fingerprint_cache: TensorCache[bytes] = TensorCache()  # for codec.weights.fingerprint
        self.codes_fingerprint_cache: TensorCache[bytes] = TensorCache()  # and codes_fingerprint

    def _build_lowband(self) -> None:
        cfg = self.cfg
        self.lowband_encoder = self.lowband_decoder = None
        if any(cfg.lowband_levels):
            # (the decoder's cut counts its FFT bins as the low band counts MDCT coefficients:
            # the same spacing, sample_rate / (2 hop), as the spectral decoder's default n_fft)
            if self.decoder[-1].synthesis.n_fft != 2 * cfg.hop_length:
                raise ValueError("the low band needs the spectral decoder's n_fft at twice the hop")
            geometry = (cfg.sample_rate, cfg.hop_length, cfg.output_delay, cfg.latent_dim, cfg.bits_per_code)
            device = next(iter(self.quantizer.buffers())).device
            self.lowband_encoder = LowbandEncoder(*geometry, cfg.lowband_coding).to(device)
            self.lowband_decoder = LowbandDecoder(*geometry, cfg.lowband_coding).to(device)

    def set_lowband(self, levels: tuple[int, ...], output_delay: int | None = None, coding: str | None = None) -> None:
        """Code the low band at these ``lowband_levels`` (and output delay and coding) from now
        on: they have no weights, so the model changes in place (a training run from weights
        that code it, train/trainer.py)."""
        delay = self.cfg.output_delay if output_delay is None else output_delay
        coding = self.cfg.lowband_coding if coding is None else coding
        self.cfg = replace(self.cfg, lowband_levels=tuple(levels), output_delay=delay, lowband_coding=coding)
        self._build_lowband()
        self.fingerprint_cache, self.codes_fingerprint_cache = TensorCache(), TensorCache()  # (they hash the low band)

    # Derived properties -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def stream_delay(self) -> int:
        """Samples by which streamed decoded audio trails the input: ``cfg.output_delay`` and,
        with envelope matching, its lag (codec/envelope.py). Offline :meth:`decode` output
        trails by ``cfg.output_delay`` alone."""
        return self.cfg.output_delay + (self.envelope.lag if self.envelope is not None else 0)

    @property
    def is_streaming(self) -> bool:
        return self._held is not None

    def n_q_for(self, kbps: float | None = None, n_q: int | None = None) -> int:
        """Resolve a bitrate or explicit codebook count (neither: the largest bandwidth; not both)."""
        if kbps is not None and (isinstance(kbps, bool) or not isinstance(kbps, numbers.Real)):
            raise ValueError(f"kbps must be a number, got {kbps!r}")
        if n_q is not None:
            if isinstance(n_q, bool) or not isinstance(n_q, numbers.Integral):
                raise ValueError(f"n_q must be an integer, got {n_q!r}")
            if kbps is not None:
                raise ValueError(f"give kbps or n_q, not both (got kbps={kbps!r}, n_q={n_q!r})")
            if not 1 <= n_q <= self.cfg.n_q:
                raise ValueError(f"n_q must be in 1..{self.cfg.n_q}, got {n_q}")
            return n_q
        return self.cfg.n_q_for_kbps(max(self.cfg.bandwidths) if kbps is None else kbps)

    def layout(self, n_q: int) -> tuple[int, int]:
        """:meth:`CodecConfig.layout` of this model's config."""
        return self.cfg.layout(n_q)

    # Training -----------------------------------------------------------------------
    def forward(self, x: Tensor, n_q: Tensor, bypass: Tensor | None = None, codes: Tensor | None = None) -> CodecOutput:
        """Training pass. ``x``: ``[B, 1, T]`` with T a multiple of hop; ``n_q``: active
        codebooks ``[B]``; ``bypass``: ``[B]`` bool, examples whose decoder gets the
        unquantized latent (the quantizer still learns from them); ``codes``: ``[B, K, F]``,
        the codes of ``x`` from this model's frozen encoder, computed before (then ``x`` is
        not encoded, and nothing bypasses).

        Why bypass (as in Mimi): with every example quantized from the first step, the
        encoder output collapsed to a near-constant that a handful of codes covered, so the
        decoder got no information to learn from. Decoding some examples from the
        continuous latent keeps the encoder informative while the codebooks catch up.
        """
        layouts = [self.layout(int(n)) for n in n_q]
        if self.lowband_decoder is not None:  # examples with the low band keep fewer levels
            n_q = torch.tensor([levels for levels, _ in layouts], device=n_q.device)
        if codes is not None:
            q = self.quantizer.from_codes(codes, n_q)
            latent = q.x
        else:
            z = self.encoder(x)
            q = self.quantizer(z, n_q)
            latent = q.x if bypass is None else torch.where(bypass.to(z.device)[:, None, None], z, q.x.to(z.dtype))
        if self.lowband_decoder is None:
            return CodecOutput(self.decoder(self._decoder_input(latent, None)), q)
        return CodecOutput(self._with_lowband(x, latent, q.x, [words for _, words in layouts]), q)

    def _with_lowband(self, x: Tensor, latent: Tensor, quantized: Tensor, words: list[int]) -> Tensor:
        """Training: the decoder's output with each example's low band as its bitrate codes it
        (``words[b]`` words; the envelope from its quantized latent), as :meth:`decode` makes it
        but without the postfilter. ``[B, 1, T]``."""
        assert self.lowband_encoder is not None and self.lowband_decoder is not None
        b, f = latent.shape[0], latent.shape[-1]
        ratios = latent.new_zeros(b, f, self.cfg.decoder_lowband_bins, dtype=torch.float64)
        bands = x.new_zeros(b, 1, f * self.hop_length)
        cuts = torch.zeros(b, dtype=torch.long)
        with torch.no_grad():
            for n in set(words) - {0}:  # the examples of one bitrate at once
                rows = torch.tensor([i for i, w in enumerate(words) if w == n], device=latent.device)
                env = quantized[rows].detach().float()
                ratio, coefs = self.lowband_decoder.coefficients(self.lowband_encoder(x[rows], env, n), env)
                width = min(ratio.shape[-1], ratios.shape[-1])
                ratios[rows, :, :width] = ratio[..., :width]
                bands[rows] = self.lowband_decoder.synthesise(coefs).to(bands.dtype)
                cuts[rows.cpu()] = ratio.shape[-1]
        with low_cut(cuts):
            audio = self.decoder(self._decoder_input(latent, ratios))
        return audio + bands

    def _decoder_input(self, latent: Tensor, ratios: Tensor | None) -> Tensor:
        """The latent ``[B, D, F]``, and when the decoder reads them the low band's coefficients
        over their steps ``[B, F, bins]`` (None: no low band), padded or cut to
        ``cfg.decoder_lowband_bins``: ``[B, D + bins, F]``."""
        width = self.cfg.decoder_lowband_bins
        if not width:
            return latent
        extra = latent.new_zeros(latent.shape[0], width, latent.shape[-1])
        if ratios is not None:
            n = min(width, ratios.shape[-1])
            extra[:, :n] = ratios[..., :n].transpose(1, 2).to(latent.dtype)
        return torch.cat([latent, extra], dim=1)

    # Inference ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: Tensor, kbps: float | None = None, n_q: int | None = None, levels_only: bool = False) -> Tensor:
        """``[B, C, T]`` -> codes ``[B, C, K, F]`` (int64).

        Offline, T is padded with zeros to whole frames. While streaming, only the frames
        completed so far are returned; the rest waits for the next chunk or :meth:`flush`.
        ``levels_only``: all K codes from the quantizer's levels, whatever the low band
        (:meth:`layout`), searched greedily, so that the first k of them are also the codes of
        k levels: what codebook statistics and training on codes need. Otherwise the levels
        are searched for the bitrate (:func:`codec.quantizer.beam_search`).
        """
        with self._call():
            return self._encode(wav, kbps, n_q, levels_only)

    def _encode(self, wav: Tensor, kbps: float | None, n_q: int | None, levels_only: bool) -> Tensor:
        k = self.n_q_for(kbps, n_q)
        wav = _checked_audio(wav)
        b, c, t = wav.shape
        self._check_stream_shape("encode", b, c)
        x = wav.reshape(b * c, 1, t).float()
        if self._held is None:
            x = F.pad(x, (0, -t % self.hop_length))
            z = self.encoder(x)
        else:
            if self._held.shape[-1]:
                x = torch.cat([self._held, x], dim=-1)
            whole = x.shape[-1] - x.shape[-1] % self.hop_length
            x, self._held = x[..., :whole], x[..., whole:].clone()  # the caller may reuse its buffer
            z = self._run_streaming("encoder", x, self.hop_length)
        if levels_only:
            words, codes = 0, self.quantizer.encode(z, k, beam=1)
        else:
            levels, words = self.layout(k)
            codes = self.quantizer.encode(z, levels, weights=search_weights(self.cfg, k))
        if self.lowband_encoder is not None and (words or self._held is not None):  # (streaming: keep its state)
            coded = self.quantizer.decode(codes) if words else None
            edge = edge_steps(z, coded, self.edge_groups) if coded is not None and self.lowband_encoder.edges else None
            lowband = self.lowband_encoder(x, coded, words, edge)
            codes = torch.cat([codes, lowband], dim=1)
        return codes.reshape(b, c, k, -1)

    @torch.no_grad()
    def flush(self, batch: int, channels: int, kbps: float | None = None, n_q: int | None = None) -> Tensor:
        """Streaming only: complete the last partial frame with zeros. -> ``[B, C, K, 0 or 1]``
        (``batch`` and ``channels`` the stream's; its encode checks the caller)."""
        if self._held is None:
            raise RuntimeError("flush() is only meaningful inside model.streaming()")
        missing = -self._held.shape[-1] % self.hop_length
        pad = torch.zeros(batch, channels, missing)
        return self.encode(pad, kbps=kbps, n_q=n_q)

    @torch.no_grad()
    def drain(self, batch: int, channels: int) -> Tensor:
        """Streaming only, at the end of a stream: the decoded audio still owed, the last
        ``stream_delay - cfg.output_delay`` samples (envelope matching's lag), ``[B, C, L]``
        (L 0 when nothing is owed; ``batch`` and ``channels`` the stream's)."""
        self._check_caller()
        if self._held is None:
            raise RuntimeError("drain() is only meaningful inside model.streaming()")
        self._check_stream_shape("decode", batch, channels)
        tail = self.envelope.drain() if self.envelope is not None else None
        return torch.zeros(batch, channels, 0) if tail is None else tail.reshape(batch, channels, -1)

    @torch.no_grad()
    def decode(self, codes: Tensor, length: int | None = None, levels_only: bool = False) -> Tensor:
        """codes ``[B, C, K, F]`` -> audio ``[B, C, F * hop]`` (or the first ``length`` samples),
        ``cfg.output_delay`` samples behind the input (drop that many from the start, with as
        many more coded past the end, to line it up: README, "Python API"); while streaming,
        ``stream_delay - cfg.output_delay`` samples later still (:meth:`drain`).
        ``levels_only``: all K codes are the quantizer's levels (``encode(..., levels_only=True)``),
        none the low band's."""
        with self._call():
            return self._decode(codes, length, levels_only)

    def _decode(self, codes: Tensor, length: int | None, levels_only: bool) -> Tensor:
        if not isinstance(codes, Tensor) or codes.dim() != 4:
            raise ValueError(f"expected codes [B, C, K, F] (a torch.Tensor), got {_shape_of(codes)}")
        b, c, k, f = codes.shape
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= k <= self.cfg.n_q:
            raise ValueError(f"expected 1..{self.cfg.n_q} codes a frame, got {k}")
        low, high = torch.aminmax(codes) if codes.numel() else (0, 0)
        if low < 0 or high >= 1 << self.cfg.bits_per_code:
            raise ValueError(f"codes must be in 0..{(1 << self.cfg.bits_per_code) - 1}, got {int(low)}..{int(high)}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, numbers.Integral)
                                   or not 0 <= length <= f * self.hop_length):
            raise ValueError(f"length must be a whole number of samples in 0..{f * self.hop_length}, got {length!r}")
        self._check_stream_shape("decode", b, c)
        if f == 0 and self._held is None:  # (the decoder's convolutions need a frame)
            return torch.zeros(b, c, 0)
        codes = codes.reshape(b * c, k, f).long()
        levels, words = (k, 0) if levels_only else self.layout(k)
        z = self.quantizer.decode(codes[:, :levels])
        ratio = coefs = edge = None
        if words:
            ratio, coefs, edge = self.lowband_decoder.read(codes[:, levels:], z)
            edge = edge if edge.shape[-1] and levels >= FLOOR_MIN_LEVELS else None  # (as envelope matching's noise)
        cut = ratio.shape[-1] if words else 0  # the low band replaces the decoder's bins below
        latent = self._decoder_input(z, ratio)
        with low_cut(cut):
            audio = self.decoder(latent) if self._held is None else self._run_streaming("decoder", latent, 1)
        audio = self.postfilter(audio)
        if words:
            audio = audio + self.lowband_decoder.synthesise(coefs)
        elif self.lowband_decoder is not None:
            self.lowband_decoder.state = None  # (streaming: a frame without the band leaves no tail)
        if self.envelope is not None:  # (with the 8-kHz edge's steps: its bands' powers as they say)
            target, raised = (z, None) if edge is None else with_edge(z, edge, self.edge_groups)
            audio = self.envelope(audio, target, levels, cut, raised)
        audio = audio.reshape(b, c, -1)
        return audio if length is None else audio[..., :length]

    PLAN_MAX_FRAMES = 4  # chunks of up to this many frames (batch 1) go frame by frame

    def _run_streaming(self, name: str, x: Tensor, per_frame: int) -> Tensor:
        """Streaming ``self.<name>`` on whole frames ``x`` ``[B, C, F * per_frame]``.

        Live streaming's few frames per call take a :class:`FramePlan` frame by frame
        (codec/frame.py), run by the native runtime where it builds (codec/native.py); longer chunks
        and batches take the layers' forward, whose convolutions amortise their cost over
        the frames. Both keep the same state, so calls of any size can alternate."""
        network: nn.Module = getattr(self, name)
        frames = x.shape[-1] // per_frame
        if frames == 0:
            out_channels = self.cfg.latent_dim if name == "encoder" else 1
            return x.new_zeros(x.shape[0], out_channels, 0)
        if x.shape[0] != 1 or frames > self.PLAN_MAX_FRAMES or isinstance(network, LogMelEncoder):
            return network(x)  # (the log-mel encoder is one FFT per frame: no plan needed)
        if name not in self._plans:
            plan = FramePlan(network, per_frame)
            self._plans[name] = NativePlan.for_plan(plan, x.shape[1], per_frame) or plan
        plan = self._plans[name]
        if frames == 1:  # (a plan's output is already a tensor of its own)
            return plan(x)
        return torch.cat([plan(x[..., i * per_frame : (i + 1) * per_frame]) for i in range(frames)], dim=-1)

    def _check_caller(self) -> None:
        """A stream's state serves the thread that opened it alone."""
        if self._held is not None and self._owner != threading.get_ident():
            raise ModelBusyError("this model is streaming in another thread: a model object runs one stream at "
                                 "a time (load another with codec.load() for this thread)")

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """An encode or decode: refused while another thread streams; offline ones counted while
        they run, so that no stream opens under them (its modules' state would be theirs)."""
        with _STATE_LOCK:
            self._check_caller()
            offline = self._held is None
            self._offline += offline
        try:
            yield
        finally:
            if offline:
                with _STATE_LOCK:
                    self._offline -= 1

    def _check_stream_shape(self, call: str, b: int, c: int) -> None:
        """While streaming: ``call``'s batch and channels are those it started with."""
        if self._held is None:
            return
        first = self._shapes.setdefault(call, (b, c))
        if first != (b, c):
            raise ValueError(f"a stream keeps its batch and channels: {call} started with B={first[0]}, C={first[1]}, "
                             f"got B={b}, C={c}")

    @contextlib.contextmanager
    def streaming(self) -> Iterator["Codec"]:
        """Keep encoder and decoder state between calls (see class docstring)."""
        with _STATE_LOCK:
            if self._held is not None:
                raise ModelBusyError("this model is already streaming: a model object runs one stream at a time "
                                     "(load another with codec.load() for a second stream)")
            if self._offline:
                raise ModelBusyError("this model is coding offline in another thread: a stream cannot open under it "
                                     "(load another with codec.load() for the stream)")
            self._held, self._owner = torch.zeros(1, 1, 0), threading.get_ident()
        self.postfilter.streaming_on = True
        if self.envelope is not None:
            self.envelope.streaming_on = True
        try:
            with contextlib.ExitStack() as stack:
                for part in (self.encoder, self.decoder, self.lowband_encoder, self.lowband_decoder):
                    if part is not None:
                        stack.enter_context(streaming(part))
                yield self
        finally:
            self._held, self._plans, self._owner, self._shapes = None, {}, None, {}
            self.postfilter.streaming_on, self.postfilter.state = False, None
            if self.envelope is not None:
                self.envelope.streaming_on, self.envelope.state = False, None


def _shape_of(x: object) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__


def _checked_audio(wav: Tensor | np.ndarray) -> Tensor:
    """:meth:`Codec.encode`'s input ``[B, C, T]`` (a tensor, or a NumPy array taken as one) of
    finite float samples, at most :data:`MAX_CHANNELS` channels (more is audio laid out ``[B,
    T, C]``); integer PCM is refused, not scaled (it would code as loud noise)."""
    if isinstance(wav, np.ndarray):  # (native byte order, contiguous and writable, as torch takes it)
        wav = torch.from_numpy(np.require(wav, wav.dtype.newbyteorder("="), ["C_CONTIGUOUS", "WRITEABLE"]))
    if not isinstance(wav, Tensor) or wav.dim() != 3:
        raise ValueError(f"expected audio [B, C, T] (a torch.Tensor or NumPy array), got {_shape_of(wav)}")
    require_float(wav.dtype)
    if wav.shape[1] > MAX_CHANNELS:
        raise ValueError(f"expected audio [B, C, T] with at most {MAX_CHANNELS} channels, got shape "
                         f"{tuple(wav.shape)} (channels last? transpose to [B, C, T])")
    if not torch.isfinite(wav).all():  # NaN or infinity would spread through the codes
        raise AudioError("the input has a non-finite sample (NaN or infinity)")
    return wav
