"""Streaming encoder and decoder: audio in, ``.rvq`` bytes out as frames complete, and back.

Both classes take and return plain arrays and bytes and do no I/O, so the file commands
(:mod:`codec.files`) and live streams over pipes and sockets (:mod:`codec.live`) share this
one implementation and cannot drift apart. The model keeps its streaming state between
calls, so the bytes an encoder produces do not depend on how its input was cut into chunks.

The decoder is tolerant by default: a damaged or missing packet is concealed (the last good
frame is decoded again, fading to silence over 40 ms, and faded back in when packets
resume), and counted in :class:`StreamStats`.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soxr
import torch

from .bitstream import (
    MAX_RATE, UNKNOWN_LENGTH, BitstreamError, End, Header, PacketParser, encode_end, encode_packet, parse_header,
)
from .audio_io import AudioError, require_float
from .errors import CodecError
from .model import Codec
from .weights import builtin_for, fingerprint, load, reads

LIVE_PACKET_SECONDS = 0.02
FADE_SECONDS = 0.04
CONCEAL_BLOCK_FRAMES = 75  # frames concealed (decoded) at a time at the end of a cut stream


FILE_PACKET_SECONDS = 1.0
FILE_PACKET_CODE_BYTES = 750  # a packet's 8 bytes of framing are then at most 1.07% of its codes


def file_packet_frames(frame_rate: float, n_q: int, bits: int, channels: int) -> int:
    """Frames per packet for files: one second's worth, or more at low bitrates, so that every
    packet holds at least ``FILE_PACKET_CODE_BYTES`` of codes and its framing costs no larger
    a share of the file than at 6 kbps (75 frames at 75 Hz and 6 kbps, 300 at 1.5 kbps mono:
    a lost packet is then 4 s of audio, the price of the smaller file)."""
    per_frame = n_q * bits * channels / 8
    return min(2**16 - 1, max(math.ceil(FILE_PACKET_SECONDS * frame_rate - 1e-9),
                              math.ceil(FILE_PACKET_CODE_BYTES / per_frame - 1e-9)))


def live_packet_frames(frame_rate: float) -> int:
    """Frames per packet for live streams: the fewest lasting at least 20 ms (2 at 75 Hz).

    20 ms is the input chunk and the usual VoIP packet time: packetising adds at most one
    frame of latency, a lost packet (27 ms) is short enough to conceal, and the 8 bytes of
    framing per packet (2.4 kbps at 75 Hz) are small next to the 40-odd bytes of TCP/IP
    header each packet carries on a network anyway. Files use longer packets (:func:`file_packet_frames`).
    """
    return max(1, math.ceil(LIVE_PACKET_SECONDS * frame_rate - 1e-9))


def expected_frames(header: Header, num_samples: int, delay: int = 0) -> int:
    """Frames an encoder emits for ``num_samples`` input samples per channel, coding ``delay``
    samples of silence past them (the model's ``cfg.output_delay``: :meth:`StreamEncoder.finish`).

    soxr's streaming resampler yields ``round(n * sample_rate / original_rate)`` samples in
    all (halves up), and the model pads the last frame.
    """
    resampled = (2 * num_samples * header.sample_rate + header.original_rate) // (2 * header.original_rate)
    return -(-(resampled + delay) // round(header.sample_rate / header.frame_rate))


def lead_samples(model: Codec, header: Header) -> int:
    """The model's streamed output delay (``Codec.stream_delay``) at the stream's original rate:
    the decoded samples to drop so that the output lines up with the input."""
    return round(model.stream_delay * header.original_rate / model.sample_rate)


class _SameRate:
    """A stream "resampled" to its own rate: soxr passes such chunks through unchanged, and
    skipping it saves a live frame a call."""

    @staticmethod
    def resample_chunk(x: np.ndarray, last: bool = False) -> np.ndarray:
        return np.ascontiguousarray(x)  # (as soxr's are)


def resampler(rate_in: int, rate_out: int, channels: int) -> "soxr.ResampleStream | _SameRate":
    """A chunk-by-chunk resampler from ``rate_in`` to ``rate_out`` (float32 ``[T, C]``)."""
    if rate_in == rate_out:
        return _SameRate()
    return soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")


def resolve_model(model: Codec | str | Path | None) -> Codec:
    return model if isinstance(model, Codec) else load(model)


def model_for(header: Header, model: Codec | str | Path | None = None) -> Codec:
    """The model that decodes a stream: the one given, else the built-in one named in the
    header, else a built-in one that reads the codes of the earlier release that made it."""
    codec = resolve_model(model) if model is not None else builtin_for(header.model_id, header.weights_hash)
    if codec is None:
        raise CodecError(f"file was made by model {header.model_id!r}, which is not built in; pass --model PATH")
    if not reads(codec, header.weights_hash):
        weights = fingerprint(codec)[:8]
        theirs = f"file was made by model {header.model_id!r} with weights {header.weights_hash.hex()}"
        if model is None:
            raise CodecError(f"{theirs}, not by the built-in {codec.cfg.name} ({weights.hex()}): pass --model PATH "
                             "with the weights that wrote it")
        raise CodecError(f"{theirs}, not by the weights given ({codec.cfg.name}, {weights.hex()})")
    if (codec.sample_rate, codec.cfg.codebook_size) != (header.sample_rate, header.codebook_size) \
            or header.n_q > codec.cfg.n_q or abs(header.frame_rate - codec.frame_rate) > 1e-4 * codec.frame_rate:
        raise CodecError("file's stream parameters do not match the model")
    return codec


class StreamEncoder:
    """Audio ``[T, C]`` float32 at ``rate`` in, ``.rvq`` bytes out.

    Write ``header.encode()`` first, then whatever each :meth:`push` returns (the packets its
    audio completed, often none), then what :meth:`finish` returns: the last partial packet
    and, when ``num_samples`` was not known up front, the end record. Use inside ``with``;
    a model streams one way at a time (decode with another instance meanwhile).
    """

    def __init__(self, model: Codec, rate: int, channels: int, kbps: float = 6.0,
                 packet_frames: int | None = None, num_samples: int | None = None) -> None:
        """``packet_frames``: frames per packet; default a file's (:func:`file_packet_frames`)."""
        if not 1 <= channels <= 255:
            raise CodecError(f"channels must be 1..255, got {channels}")
        if kbps is None:
            raise CodecError("kbps must be one of the model's bitrates, got None")
        if not 0 < rate <= MAX_RATE:
            raise CodecError(f"sample rate {rate} Hz is outside the 1..{MAX_RATE} Hz a .rvq file holds")
        self.model, self.n_q, self.channels = model, model.n_q_for(kbps), channels
        if packet_frames is None:
            packet_frames = file_packet_frames(model.frame_rate, self.n_q, model.cfg.bits_per_code, channels)
        if not 1 <= packet_frames < 2**16:
            raise CodecError(f"frames per packet must be 1..65535, got {packet_frames}")
        length = UNKNOWN_LENGTH if num_samples is None else num_samples
        self.header = Header(model.cfg.name, fingerprint(model)[:8], model.sample_rate, rate, channels,
                             model.frame_rate, model.cfg.codebook_size, self.n_q, length, packet_frames)
        self.samples = self.frames = self.packets = 0  # pushed, and written into packets
        self._resampler = resampler(rate, model.sample_rate, channels)
        self._pending = np.zeros((0, channels, self.n_q), np.int64)  # frames not yet in a packet
        self._context: ExitStack | None = None
        self._finished = False

    def __enter__(self) -> "StreamEncoder":
        if self._context is not None:
            raise RuntimeError("a StreamEncoder codes one stream: make another for the next")
        self._context = ExitStack()
        self._context.enter_context(self.model.streaming())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.close()

    def push(self, audio: np.ndarray) -> bytes:
        """``audio`` ``[T, C]`` float (integer PCM is refused: divide it by its full scale) ->
        the packets completed so far (``b""`` while a packet fills)."""
        self._check_open()
        require_float(np.asarray(audio).dtype)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2 or audio.shape[1] != self.channels:
            raise ValueError(f"expected audio [T, {self.channels}], got shape {audio.shape}")
        if not np.isfinite(audio).all():  # NaN would spread through the whole stream
            at = self.samples + int(np.argmax(~np.isfinite(audio).all(axis=1)))
            raise AudioError(f"the input has a non-finite sample (NaN or infinity) at {at / self.header.original_rate:.3f} s")
        self.samples += len(audio)
        return self._encode(self._resampler.resample_chunk(audio, last=False))

    def finish(self) -> bytes:
        """Flush the resampler and the last partial frame; the last packet and end record."""
        self._check_open()
        self._finished = True
        out = self._encode(self._resampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True))
        # StreamDecoder drops the first output_delay samples it decodes (lead_samples): code
        # that much silence past the end, so that the decoded audio still covers it.
        out += self._encode(np.zeros((self.model.cfg.output_delay, self.channels), np.float32))
        out += self._add(self.model.flush(1, self.channels, n_q=self.n_q))
        if len(self._pending):
            out += self._emit(len(self._pending))
        if self.header.num_samples == UNKNOWN_LENGTH:
            out += encode_end(self.samples)
        return out

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("this stream is finished: a StreamEncoder codes one stream")

    def _encode(self, y: np.ndarray) -> bytes:
        if self._context is None:
            raise RuntimeError("use StreamEncoder inside `with`: the model must keep its state")
        return self._add(self.model.encode(torch.from_numpy(y.T.copy())[None], n_q=self.n_q))

    def _add(self, codes: torch.Tensor) -> bytes:
        """codes ``[1, C, K, F]`` -> every full packet that is now complete."""
        self._pending = np.concatenate([self._pending, codes[0].permute(2, 0, 1).numpy()])
        out = b""
        while len(self._pending) >= self.header.packet_frames:
            out += self._emit(self.header.packet_frames)
        return out

    def _emit(self, n: int) -> bytes:
        packet = encode_packet(self._pending[:n], self.header.bits_per_code)
        self._pending = self._pending[n:]
        self.frames, self.packets = self.frames + n, self.packets + 1
        return packet


@dataclass
class StreamStats:
    """What a decoder received; ``lost_frames`` were concealed."""

    frames: int = 0  # decoded from intact packets
    lost_frames: int = 0  # damaged, missing, or never received before the end
    damaged_packets: int = 0
    truncated: bool = False  # the input stopped inside a packet
    ended: bool = False  # the end record arrived: the encoder finished the stream
    trailing_bytes: int = 0  # ignored after the last frame of a stream of known length


class StreamDecoder:
    """``.rvq`` bytes in (any cut), audio ``[T, C]`` float32 at the original rate out.

    Feed bytes to :meth:`push` as they arrive; it returns the audio of every complete packet.
    :meth:`finish` at the end of input. ``strict`` raises :class:`BitstreamError` on any damage
    instead of concealing it. ``block_frames``: decode in blocks of that many frames counted
    from the start, so that the output does not depend on the packet size (float results of
    a convolution vary in the last bit with its input length); None decodes each packet as
    soon as it arrives, for latency. Use inside ``with``.

    The output runs on past the stream's length by up to a frame and the resampler's tail
    (the encoder's padding): keep the first :attr:`num_samples` samples per channel, as
    ``decompress_file`` and ``decode_live`` do (:class:`codec.files.TrimmingWriter`, which
    holds back the last :func:`codec.files.holdback_samples` until the length is known).
    """

    def __init__(self, model: Codec | str | Path | None = None, strict: bool = False,
                 block_frames: int | None = None) -> None:
        self.strict, self.block_frames = strict, block_frames
        self.header: Header | None = None
        self.stats = StreamStats()
        self._model_arg = model
        self._buf = bytearray()  # bytes before the header is complete
        self._end: int | None = None
        self._queue: list[tuple[np.ndarray, np.ndarray]] = []  # (codes [F, C, K], gains [F, 2])
        self._last: np.ndarray | None = None  # last intact frame [C, K]
        self._gap = 0  # frames concealed since it
        self._tail_gain = 1.0  # the last decoded frame's closing gain
        self._stack = ExitStack()

    def __enter__(self) -> "StreamDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def num_samples(self) -> int | None:
        """Samples per channel: from the header, or from the end record once it arrived."""
        if self.header is not None and self.header.num_samples != UNKNOWN_LENGTH:
            return self.header.num_samples
        return self._end

    def start(self, header: Header) -> None:
        """Use ``header`` (read by the caller); otherwise :meth:`push` reads it from the bytes."""
        self.model = model_for(header, self._model_arg)
        self.header = header
        known = header.num_samples != UNKNOWN_LENGTH
        frames = expected_frames(header, header.num_samples, self.model.cfg.output_delay) if known else None
        self._parser = PacketParser(header, self.strict, frames)
        self._resampler = resampler(header.sample_rate, header.original_rate, header.channels)
        self._fade = max(1.0, FADE_SECONDS * header.frame_rate)
        self._lead = lead_samples(self.model, header)  # still to drop from the output's start
        self._stack.enter_context(self.model.streaming())

    def push(self, data: bytes) -> np.ndarray:
        """``data``: the next bytes of the stream, header first -> audio ``[T, C]``, T often 0
        (``[0, 0]`` while the header is incomplete)."""
        if self.header is None:
            self._buf += data
            parsed = parse_header(self._buf)
            if parsed is None:
                return self._silence()
            self.start(parsed[0])
            data, self._buf = bytes(self._buf[parsed[1]:]), bytearray()
        return self._drop_lead(self._records(self._parser.feed(data)))

    def finish(self, conceal: bool = True) -> np.ndarray:
        """End of input: decode what is left -> audio ``[T, C]`` (all of :meth:`finish_blocks`)."""
        return np.concatenate(list(self.finish_blocks(conceal)))

    def finish_blocks(self, conceal: bool = True) -> Iterator[np.ndarray]:
        """End of input: decode what is left, block by block. With ``conceal``, frames missing
        from a known length (a cut file) are concealed, ``CONCEAL_BLOCK_FRAMES`` at a time so
        that memory does not grow with what is missing; without it (the stream was stopped on
        purpose) the audio ends where the frames do. Iterate it once, to its end."""
        if self.header is None:
            raise BitstreamError("the stream ended before its .rvq header was complete")
        yield self._drop_lead(self._records(self._parser.close()))
        self.stats.truncated, self.stats.trailing_bytes = self._parser.truncated, self._parser.trailing
        if self.strict and self.num_samples is None:
            raise BitstreamError("truncated .rvq stream: it has no end record")
        if self.num_samples is not None:
            missing = expected_frames(self.header, self.num_samples, self.model.cfg.output_delay) \
                - self.stats.frames - self.stats.lost_frames
            if missing > 0 and self.strict:
                raise BitstreamError(f"truncated .rvq file: {missing} frames are missing")
            while conceal and missing > 0:
                n = min(missing, CONCEAL_BLOCK_FRAMES)
                self.stats.lost_frames += n
                missing -= n
                self._queue.append(self._conceal(n))
                yield self._drop_lead(self._decode(last=False))
        yield self._drop_lead(self._decode(last=True))
        tail = self.model.drain(1, self.header.channels)[0].T.numpy() * self._tail_gain  # (envelope matching's lag)
        yield self._drop_lead(self._resampler.resample_chunk(tail, last=False))
        yield self._drop_lead(self._resampler.resample_chunk(self._silence(), last=True))

    def _drop_lead(self, audio: np.ndarray) -> np.ndarray:
        """``audio`` without what is left of the model's output delay at its start, so that the
        output lines up with the input."""
        cut = min(self._lead, len(audio))
        self._lead -= cut
        return audio[cut:]

    def _silence(self) -> np.ndarray:
        return np.zeros((0, self.header.channels if self.header else 0), np.float32)

    def _records(self, records: list) -> np.ndarray:
        for r in records:
            if isinstance(r, End):
                self._end, self.stats.ended = r.num_samples, True
            elif r.codes is not None:
                self.stats.frames += r.frames
                gains = np.ones((r.frames, 2), np.float32)
                if self._gap:  # fade back in from where concealment left off
                    gains[0, 0] = self._gain(self._gap) if self._last is not None else 0.0
                self._last, self._gap = r.codes[-1], 0
                self._queue.append((r.codes, gains))
            else:
                self.stats.damaged_packets += r.packets
                self.stats.lost_frames += r.frames
                if r.frames:
                    self._queue.append(self._conceal(r.frames))
        return self._decode(last=False)

    def _gain(self, position: int | np.ndarray) -> np.ndarray:
        return np.clip(1.0 - np.asarray(position, np.float32) / self._fade, 0.0, 1.0)

    def _conceal(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` lost frames: the last intact frame again, fading out (silence if there is none)."""
        h = self.header
        last = self._last if self._last is not None else np.zeros((h.channels, h.n_q), np.int64)
        g = self._gain(self._gap + np.arange(n + 1)) * (self._last is not None)
        self._gap += n
        return np.repeat(last[None], n, axis=0), np.stack([g[:-1], g[1:]], axis=1)

    def _decode(self, last: bool) -> np.ndarray:
        """Decode what is queued and resample it: each packet on its own, or whole blocks
        (everything left if ``last``). Either way the decoder's input lengths, hence its
        output, do not depend on how the bytes arrived."""
        if self.block_frames is None:
            batches, self._queue = self._queue, []
        else:
            batches = self._blocks(last)
        if not batches:
            return self._silence()
        return self._resampler.resample_chunk(np.concatenate([self._run(*b) for b in batches]), last=False)

    def _blocks(self, last: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Take the queued frames as whole blocks of ``block_frames`` off the queue."""
        block, queued = self.block_frames, sum(len(codes) for codes, _ in self._queue)
        n = queued if last else queued - queued % block
        if not n:
            return []
        codes, gains = (np.concatenate(x) for x in zip(*self._queue))
        self._queue = [(codes[n:], gains[n:])] if n < len(codes) else []
        return [(codes[i : i + block], gains[i : i + block]) for i in range(0, n, block)]

    def _run(self, codes: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """codes ``[F, C, K]`` -> audio ``[F * hop, C]`` at the model rate, with the gain envelope."""
        audio = self.model.decode(torch.from_numpy(codes).permute(1, 2, 0)[None])[0].T.numpy()
        self._tail_gain = float(gains[-1, 1])  # for the samples the model still owes at the end
        if (gains != 1.0).any():
            hop = len(audio) // len(codes)
            ramp = np.arange(hop, dtype=np.float32) / hop
            envelope = (gains[:, :1] + (gains[:, 1:] - gains[:, :1]) * ramp).reshape(-1, 1)
            audio = audio * envelope
        return audio
