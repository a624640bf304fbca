"""Live encoding and decoding: codes as the audio arrives, audio as the packets arrive.

:func:`encode_live` reads audio in small chunks (20 ms) from a file or stdin (WAV, or raw
PCM) and writes each ``.rvq`` packet as soon as its frames are complete, header first, end
record last: written to a file, the stream is a valid ``.rvq`` file that ``decompress``
turns into exactly the samples ``compress`` + ``decompress`` give. :func:`decode_live`
writes audio as packets arrive and conceals damaged or missing ones. Both run the shared
:class:`~codec.stream.StreamEncoder` / :class:`~codec.stream.StreamDecoder`; this module only
moves bytes and samples (see :mod:`codec.endpoints` for where they come from and go to).
"""

from __future__ import annotations

import contextlib
import math
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from .audio_io import AudioError
from .bitstream import UNKNOWN_LENGTH, Header
from .endpoints import (
    ByteReader, StopFlag, open_byte_sink, open_byte_source, parse_address, stdout_writer,
)
from .errors import CodecError
from .files import (FileAudio, TrimmingWriter, atomic_output, audio_format, audio_output, check_output, check_suffix,
                    holdback_samples, open_audio, output_path)
from .model import Codec
from .pcm import PcmFormat, read_wav_header
from .stream import StreamDecoder, StreamEncoder, StreamStats, live_packet_frames, resolve_model

CHUNK_SECONDS = 0.02
MAX_CHUNK_SECONDS = 10.0


class AudioSource(Protocol):
    rate: int
    channels: int

    damage: str | None  # set when the input stopped decoding part way (read() then ends it)

    def read(self) -> np.ndarray | None:
        """The next chunk ``[T, C]`` float32 (T may be 0 while waiting); None at the end."""


class PcmStream:
    """WAV or raw PCM bytes from a :class:`ByteReader`: the whole sample frames that have
    arrived, at most a chunk at a time, so nothing waits for a chunk to fill."""

    def __init__(self, reader: ByteReader, fmt: PcmFormat, data_bytes: int | None, chunk: int) -> None:
        self.reader, self.fmt, self.left, self.chunk = reader, fmt, data_bytes, chunk
        self.rate, self.channels = fmt.rate, fmt.channels
        self.damage = None  # a stream that stops early just ends
        self._rest = b""  # a sample frame cut between two reads

    def read(self) -> np.ndarray | None:
        want = self.chunk * self.fmt.frame_bytes - len(self._rest)
        data = self.reader.read(want if self.left is None else min(want, self.left)) if self.left != 0 else b""
        if not data:
            return None  # a trailing partial sample frame is dropped
        if self.left is not None:
            self.left -= len(data)
        data = self._rest + data
        whole = len(data) - len(data) % self.fmt.frame_bytes
        self._rest = data[whole:]
        return self.fmt.to_float(data[:whole])


@contextlib.contextmanager
def open_audio_source(spec: str, raw: PcmFormat | None, chunk_seconds: float, stop: StopFlag) -> Iterator[AudioSource]:
    """A file in any format, or WAV / raw PCM (``raw``) from a file, a named pipe or stdin (``-``)."""
    if parse_address(spec) is not None:
        raise CodecError("stream encode reads a file or - (stdin); tcp:// inputs are for stream decode")
    if spec != "-" and raw is None and not _is_stream(Path(spec)):
        with open_audio(Path(spec)) as f:
            yield FileAudio(f, max(1, round(f.samplerate * chunk_seconds)))
        return
    with open_byte_source(spec, stop) as reader:
        fmt, size = (raw, None) if raw is not None else _wav_header(reader, stop)
        yield PcmStream(reader, fmt, size, max(1, round(fmt.rate * chunk_seconds)))


def _is_stream(path: Path) -> bool:
    """A named pipe or a character device (``/dev/stdin``): read as a WAV stream, in order."""
    try:
        return stat.S_ISFIFO(path.stat().st_mode) or stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


def _wav_header(reader: ByteReader, stop: StopFlag) -> tuple[PcmFormat, int | None]:
    try:
        return read_wav_header(reader.read_exact)
    except AudioError:
        if stop:
            raise KeyboardInterrupt from None  # stopped before any audio: nothing to finalise
        raise


@dataclass(frozen=True)
class EncodeReport:
    seconds: float  # of input audio
    frames: int
    packets: int
    bytes: int  # header, packets and end record
    interrupted: bool
    damage: str | None = None  # why the input ended early (a file that stopped decoding)

    @property
    def kbps(self) -> float:
        """Everything sent, framing included, over the duration."""
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


def encode_live(
    input: str = "-", output: str = "-", model: Codec | str | Path | None = None, kbps: float = 6.0,
    raw: PcmFormat | None = None, chunk_seconds: float = CHUNK_SECONDS, packet_frames: int | None = None,
    realtime: bool = False, force: bool = False, stop: StopFlag | None = None,
) -> EncodeReport:
    """Encode ``input`` (file or ``-``) to ``output`` (file, ``-`` or ``tcp://HOST:PORT``) as it
    is read. ``realtime`` paces the input at real time; ``stop`` ends the stream cleanly.

    Packets hold ``packet_frames`` frames; by default 20 ms worth to stdout or TCP
    (:func:`~codec.stream.live_packet_frames`), and to a file, which appears only once
    complete, those of ``compress`` (:func:`~codec.stream.file_packet_frames`), whose framing
    keeps the file near its bitrate."""
    stop = stop if stop is not None else StopFlag()
    codec = resolve_model(model)
    codec.n_q_for(kbps)  # refuse a bad bitrate before waiting for any input
    if not (math.isfinite(chunk_seconds) and 0 < chunk_seconds <= MAX_CHUNK_SECONDS):
        raise CodecError(f"the read size (--chunk-ms) must be over 0 and at most {MAX_CHUNK_SECONDS * 1000:g} ms, got {chunk_seconds * 1000:g} ms")
    if packet_frames is not None and not 1 <= packet_frames < 2**16:
        raise CodecError(f"frames per packet must be 1..65535, got {packet_frames}")
    to_file = output != "-" and parse_address(output) is None
    if to_file:
        path = output_path(output)
        check_suffix(path)
        check_output(path, force, source=None if input == "-" else Path(input))
    sent = 0
    with open_audio_source(input, raw, chunk_seconds, stop) as source:
        if packet_frames is None and not to_file:  # (None: a file's packets, as compress writes)
            packet_frames = live_packet_frames(codec.frame_rate)
        encoder = StreamEncoder(codec, source.rate, source.channels, kbps, packet_frames)
        with open_byte_sink(output, force) as write, encoder:
            def send(data: bytes) -> None:
                nonlocal sent
                if data:
                    write(data)
                    sent += len(data)

            send(encoder.header.encode())
            start = time.monotonic()
            while not stop and (x := source.read()) is not None:
                if realtime:  # a chunk exists once its last sample has been "captured"
                    stop.sleep(start + (encoder.samples + len(x)) / source.rate - time.monotonic())
                send(encoder.push(x))
            if not encoder.samples and not stop:
                raise AudioError("no audio samples arrived on the input")
            send(encoder.finish())
    return EncodeReport(encoder.samples / source.rate, encoder.frames, encoder.packets, sent, bool(stop), source.damage)


class RawPcmWriter:
    """16-bit samples ``[T, C]`` (from :class:`~codec.files.TrimmingWriter`) -> little-endian
    interleaved bytes: the samples a WAV or FLAC output holds."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def write(self, y: np.ndarray) -> None:
        self._write(y.astype("<i2").tobytes())


@contextlib.contextmanager
def open_audio_sink(spec: str, header: Header, force: bool) -> Iterator[TrimmingWriter]:
    """Raw PCM to stdout as it comes, or a WAV/FLAC file cut to the stream's exact length."""
    length = None if header.num_samples == UNKNOWN_LENGTH else header.num_samples
    rate, channels = header.original_rate, header.channels
    if spec == "-":
        # No holdback: a live listener must not wait a frame for the sake of the last one.
        yield TrimmingWriter(RawPcmWriter(stdout_writer()), length)
        return
    with atomic_output(Path(spec), force) as tmp, audio_output(tmp, Path(spec), rate, channels) as f:
        yield TrimmingWriter(f, length, holdback_samples(header))


@dataclass(frozen=True)
class DecodeReport:
    seconds: float  # of audio written
    stats: StreamStats
    interrupted: bool
    timed_out: bool  # no data arrived for ``timeout`` seconds
    frame_rate: float
    unfinished: bool  # a stream of unknown length whose end record never came

    @property
    def lost_seconds(self) -> float:
        return self.stats.lost_frames / self.frame_rate


def decode_live(
    input: str = "-", output: str = "-", model: Codec | str | Path | None = None, force: bool = False,
    timeout: float | None = None, stop: StopFlag | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> DecodeReport:
    """Decode ``input`` (file, ``-`` or ``tcp://HOST:PORT`` to listen on) to ``output`` (file or
    ``-``) as packets arrive. Damage is concealed and counted in the report's ``stats``.
    Decoded samples beyond full scale are clipped; at the end, once the output is complete, a
    :class:`~codec.errors.ClippingWarning` says how many."""
    if timeout is not None and not timeout > 0:
        raise CodecError(f"the timeout must be more than 0 seconds, got {timeout:g}")
    stop = stop if stop is not None else StopFlag()
    codec = resolve_model(model) if model is not None else None
    if parse_address(output) is not None:
        raise CodecError("stream decode writes to a file or - (stdout); tcp:// outputs are for stream encode")
    if output != "-":
        path = output_path(output)
        audio_format(path)
        check_output(path, force, source=None if input == "-" or parse_address(input) else Path(input))
    with open_byte_source(input, stop, timeout, on_listening) as reader, StreamDecoder(codec) as decoder:
        first = np.zeros((0, 0), np.float32)
        while decoder.header is None and (data := reader.read()):
            first = decoder.push(data)
        if decoder.header is None:
            if stop:
                raise KeyboardInterrupt
            decoder.finish()  # raises: the stream ended before its header
        with open_audio_sink(output, decoder.header, force) as writer:
            writer.write(first)
            while data := reader.read():
                writer.write(decoder.push(data))
            # Stopped on purpose (a signal) or stalled (--timeout): the audio ends where the
            # frames do. Only a stream that ended by itself short of its length is concealed.
            cut_short = bool(stop) or reader.timed_out
            for block in decoder.finish_blocks(conceal=not cut_short):
                writer.write(block)
            writer.finish(decoder.header.channels, decoder.num_samples, pad=not cut_short)
        writer.warn_clipped("standard output" if output == "-" else output)
    seconds = writer.written / decoder.header.original_rate
    unfinished = decoder.header.num_samples == UNKNOWN_LENGTH and not decoder.stats.ended
    return DecodeReport(seconds, decoder.stats, bool(stop), reader.timed_out, decoder.header.frame_rate, unfinished)
