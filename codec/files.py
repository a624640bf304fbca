"""Compressing and decompressing files in constant memory through the streaming path.

Audio is read block by block, resampled with a streaming soxr resampler, encoded with the
model in streaming mode and written packet by packet (and the reverse for decoding), so a
one-hour file needs no more memory than a one-second one. The streaming path gives exactly
the same codes as offline encoding (log-mel models; README, "Live streaming", for the SEANet
encoder of ``rvq24k-v10``), so there is only one way a file can come out.
"""

from __future__ import annotations

import errno
import math
import os
import shlex
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from .audio_io import AudioError, is_mpeg, native_stderr_muted
from .config import CodecConfig
from .bitstream import UNKNOWN_LENGTH, BitstreamError, End, Header, PacketParser, iter_packets, read_header
from .errors import ClippingWarning, CodecError
from .model import Codec
from .pcm import pcm16
from .stream import StreamDecoder, StreamEncoder, expected_frames, resolve_model
from .weights import ModelError, registered_config

BLOCK_SECONDS = 1.0
READ_BYTES = 1 << 13
DECODE_BLOCK_FRAMES = 75  # frames per decoder call, whatever the file's packet size
PROGRESS_MIN_SECONDS = 10.0


@dataclass(frozen=True)
class CompressResult:
    output: Path
    seconds: float
    bytes: int
    frames: int
    channels: int
    nominal_kbps: float  # codes only, all channels
    damage: str | None = None  # why the input was coded only in part (None: it was read whole)

    @property
    def actual_kbps(self) -> float:
        """File size (header and packet framing included) over duration."""
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


@dataclass(frozen=True)
class FileInfo:
    header: Header
    bytes: int
    packets: int
    frames: int
    damaged_packets: int
    truncated: bool
    num_samples: int
    trailing_bytes: int = 0  # after the end record, or after the last frame of a file of known length

    @property
    def seconds(self) -> float:
        """Duration; NaN for a stream whose length never arrived (no end record)."""
        if self.num_samples == UNKNOWN_LENGTH:
            return math.nan
        return self.num_samples / self.header.original_rate

    @property
    def actual_kbps(self) -> float:
        """File size over duration; NaN while the duration is unknown."""
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else math.nan


# Errors that a write raises without naming a file: the output could not be written.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextmanager
def atomic_output(path: Path, force: bool, source: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only on success. An
    error creating or writing it (a folder that cannot be written, a full disk) is a
    :class:`CodecError` that names ``path``, not the temporary file."""
    path = check_output(path, force, source)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        _publish(tmp, path, force)
    except OSError as exc:
        if exc.filename not in (str(tmp), tmp) and not (exc.filename is None and exc.errno in _WRITE_ERRNOS):
            raise
        raise CodecError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _exists(path: Path, why: str = "") -> CodecError:
    return CodecError(f"output file exists: {path} ({why}--force, or force=True in Python, overwrites it)")


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """``tmp`` renamed to ``path``; without ``force``, only if nothing has taken ``path`` since
    :func:`check_output` looked (another run, or the user, writing there meanwhile): a hard link
    fails where a name exists, a rename would replace it."""
    if force:
        os.replace(tmp, path)
        return
    taken = _exists(path, "it appeared while this ran; ")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise taken from None
    except OSError:  # a file system without hard links (EPERM, ENOSYS on FUSE...): check, then rename
        if os.path.lexists(path):
            raise taken from None
        os.replace(tmp, path)  # (a file system that cannot write at all says so here)
        return
    tmp.unlink()


@contextmanager
def audio_output(tmp: Path, path: Path, rate: int, channels: int) -> Iterator[sf.SoundFile]:
    """``tmp`` open for 16-bit audio in the format of ``path``'s suffix. libsndfile's errors
    opening or writing it (it reports a full disk or a folder it cannot write as "System
    error.") become a :class:`CodecError` that names ``path``."""
    fmt = audio_format(path)
    if fmt == "FLAC" and channels > 8:
        raise CodecError(f"FLAC holds at most 8 channels, the file has {channels}: write a .wav file")
    try:
        with sf.SoundFile(str(tmp), "w", rate, channels, format=fmt, subtype="PCM_16") as f:
            yield f
    except sf.LibsndfileError as exc:
        hint = " (a full disk, or a folder that cannot be written?)" if exc.error_string == "System error." else ""
        raise CodecError(f"cannot write {path}: {exc.error_string}{hint}") from None


def output_path(output: str | bytes | os.PathLike) -> Path:
    """``output`` as a path, refused where its text names a folder (``out.rvq/``,
    ``out.rvq/.``): ``Path`` would drop the slash or the dot and write a file of that name."""
    text = os.fsdecode(output)
    if not text:
        raise CodecError("the output's name is empty: give a file name")
    if os.path.basename(text) in ("", ".", ".."):
        raise CodecError(f"output {text} names a folder: give a file name")
    return Path(text)


def check_output(path: Path, force: bool, source: Path | None = None) -> Path:
    """Refuse an output path that cannot be written (before any work is done): an existing
    file without ``force``, and even with it a folder, a device or pipe (the output is
    renamed into place, which would replace the node itself), or the input ``source``."""
    path = Path(path)
    if path.is_dir():
        raise CodecError(f"output is a directory: {path}")
    if path.exists() and not path.is_file():
        raise CodecError(f"output is not a regular file (a device or a pipe): {path}")
    if os.path.lexists(path) and not force:  # (a link to nowhere too: the output would replace it)
        raise _exists(path)
    if source is not None and path.exists() and Path(source).exists() and os.path.samefile(path, source):
        raise CodecError(f"output is the input file: {path}")
    if not path.parent.exists():
        raise CodecError(f"output folder does not exist: {path.parent}")
    if not path.parent.is_dir():
        raise CodecError(f"output folder is not a folder: {path.parent}")
    return path


def open_audio(path: Path) -> sf.SoundFile:
    """An audio file for block reading; one-line errors for missing, unreadable or empty files."""
    path = Path(path)
    if not path.exists():
        stdin = "; `rvqcodec stream encode -i -` reads standard input" if str(path) == "-" else ""
        raise AudioError(f"input file not found: {path}{stdin}")
    if path.is_dir():
        raise AudioError(f"input is a directory, not an audio file: {path}")
    if not path.is_file():  # compress needs the length and a seekable file up front
        raise AudioError(f"input is not a regular file (a pipe or a device): {path}; "
                         "`rvqcodec stream encode` reads WAV or raw PCM from a pipe")
    try:
        with native_stderr_muted(is_mpeg(path)):
            f = sf.SoundFile(str(path))
    except Exception as exc:
        raise AudioError(f"cannot read audio from {path}: {str(exc).strip().splitlines()[0]}") from None
    if f.frames == 0:
        f.close()
        raise AudioError(f"input has no audio samples: {path}")
    return f


class Progress:
    """A progress bar in seconds of audio, shown for inputs over ``PROGRESS_MIN_SECONDS``
    unless ``quiet``. Advances stop at the total: tqdm drops a total that its count passes,
    and its bar then fails to format."""

    def __init__(self, total: int, rate: int, quiet: bool, what: str) -> None:
        self.rate = rate
        show = not quiet and total / rate > PROGRESS_MIN_SECONDS
        self.bar = tqdm(total=round(total / rate, 1), unit="s", desc=what, disable=not show, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")

    def advance(self, samples: int) -> None:
        step = min(samples / self.rate, self.bar.total - self.bar.n)
        if step > 0:
            self.bar.update(step)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


DAMAGE_PIECE_SECONDS = 0.02  # how finely a chunk that fails to decode is read again


class FileAudio:
    """An audio file in any format soundfile reads, chunk by chunk. A file that stops
    decoding part way (a cut FLAC) ends there, with ``damage`` saying so; one that decodes
    nothing is an :class:`AudioError`. The chunk that fails is read again in pieces of
    :data:`DAMAGE_PIECE_SECONDS`, so that what decodes before the damage is kept."""

    def __init__(self, f: sf.SoundFile, chunk: int) -> None:
        self.f, self.chunk, self.rate, self.channels = f, chunk, f.samplerate, f.channels
        self.samples, self.damage = 0, None
        self.mpeg = is_mpeg(f.name)  # libmpg123 decodes it: its notes are muted (audio_io.native_stderr_muted)

    def read(self) -> np.ndarray | None:
        if self.damage:
            return None
        try:
            with native_stderr_muted(self.mpeg):
                x = self.f.read(self.chunk, dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            x = self._up_to_damage()
            if not self.samples and not len(x):
                raise AudioError(f"cannot decode {self.f.name}: {exc}") from None
            end = (self.samples + len(x)) / self.rate
            self.damage = f"{self.f.name} is damaged: cannot decode past {end:.2f} s ({exc})"
            if not len(x):
                return None
        self.samples += len(x)
        return x if len(x) else None

    def _up_to_damage(self) -> np.ndarray:
        """The failed chunk again from its start, in small pieces, up to the first that fails:
        ``[T, C]`` (T below the chunk)."""
        piece = max(1, int(self.rate * DAMAGE_PIECE_SECONDS))
        pieces, got = [np.zeros((0, self.channels), np.float32)], 0
        try:
            with native_stderr_muted(self.mpeg):
                self.f.seek(self.samples)
                while got < self.chunk:
                    y = self.f.read(min(piece, self.chunk - got), dtype="float32", always_2d=True)
                    if not len(y):
                        break
                    pieces.append(y)
                    got += len(y)
        except (sf.LibsndfileError, RuntimeError):  # (the damage again, or a file that cannot seek)
            pass
        return np.concatenate(pieces)


def compress_file(
    input: Path, output: Path, kbps: float = 6.0, model: Codec | str | Path | None = None,
    force: bool = False, quiet: bool = True, packet_frames: int | None = None,
) -> CompressResult:
    """Encode an audio file (any rate, any channel count) into a ``.rvq`` file, in packets of
    ``packet_frames`` frames (default :func:`~codec.stream.file_packet_frames`).

    A damaged input (one that ends before the length it declares, or that stops decoding part
    way) is coded as far as it can be read, and the result's ``damage`` says so; one of which
    nothing can be read is an :class:`AudioError`."""
    output = output_path(output)
    check_suffix(output)
    codec = resolve_model(model)
    with open_audio(Path(input)) as src, atomic_output(output, force, source=Path(input)) as tmp:
        rate, channels, total = src.samplerate, src.channels, src.frames
        encoder = StreamEncoder(codec, rate, channels, kbps, packet_frames, num_samples=total)
        with open(tmp, "wb") as out, encoder, Progress(total, rate, quiet, "compress") as progress:
            out.write(encoder.header.encode())
            # read() until it returns nothing, not blocks(): blocks() counts down the length the
            # file declares and pads a damaged file's missing end with stale samples.
            audio = FileAudio(src, max(1, int(rate * BLOCK_SECONDS)))
            while (x := audio.read()) is not None:
                out.write(encoder.push(x))
                progress.advance(len(x))
            damage = audio.damage
            if not encoder.samples:
                raise AudioError(f"no audio could be read from {input}")
            out.write(encoder.finish())
            if encoder.samples != total:  # a damaged file ends before (or after) the length it declares
                out.seek(0)
                out.write(replace(encoder.header, num_samples=encoder.samples).encode())  # the same size
            # (a length some formats only estimate, MP3 without a Xing header, may be a little off)
            if encoder.samples < total - max(rate // 10, total // 100) and damage is None:
                damage = (f"{input} is damaged: it ends at {encoder.samples / rate:.2f} s of the "
                          f"{total / rate:.2f} s it declares")
        size = tmp.stat().st_size
    return CompressResult(Path(output), encoder.samples / rate, size, encoder.frames, channels, encoder.header.kbps,
                          damage)


class TrimmingWriter:
    """Writes float ``[T, C]`` blocks to ``out`` (anything with ``write([T, C])``) as 16-bit
    samples (:func:`~codec.pcm.pcm16`), keeping exactly ``length`` samples (padding with
    zeros).

    While the length is unknown (a stream whose end record has not arrived) the last
    ``holdback`` samples are held back, so that the encoder's padding can still be cut once
    :meth:`finish` learns the length. Live outputs use no holdback: they must not wait.
    """

    def __init__(self, out: sf.SoundFile, length: int | None, holdback: int = 0) -> None:
        self.out, self.length, self.holdback, self.written = out, length, holdback, 0
        self.held: np.ndarray | None = None
        self.clipped = self.values = 0  # samples written (every channel's), those clipped to the 16-bit range

    def write(self, y: np.ndarray) -> None:
        if not len(y):
            return
        if self.length is None:
            if self.held is not None:
                y = np.concatenate([self.held, y])
            cut = max(0, len(y) - self.holdback)
            y, self.held = y[:cut], y[cut:]
        keep = y if self.length is None else y[: max(0, self.length - self.written)]
        if len(keep):
            samples, clipped = pcm16(keep)
            self.out.write(samples)
            self.written += len(keep)
            self.clipped += clipped
            self.values += keep.size

    def warn_clipped(self, name: str) -> None:
        """A :class:`~codec.errors.ClippingWarning` if any sample written was clipped."""
        if self.clipped:
            warnings.warn(f"{name}: clipped at full scale: {self.clipped:,} of {self.values:,} decoded samples "
                          "(every channel's)", ClippingWarning, stacklevel=3)

    def finish(self, channels: int, length: int | None = None, pad: bool = True) -> None:
        """Write what is held back, cut to ``length`` (if the length is now known) and, with
        ``pad``, padded to it (without: a stream stopped early ends where its audio does)."""
        if self.length is None:
            held, self.held, self.length, self.holdback = self.held, None, length, 0
            if held is not None:
                self.write(held)
        if pad and self.length is not None and self.written < self.length:
            self.out.write(np.zeros((self.length - self.written, channels), np.int16))
            self.written = self.length


def decompress_file(
    input: Path, output: Path, model: Codec | str | Path | None = None, force: bool = False, quiet: bool = True,
) -> Path:
    """Decode a ``.rvq`` file to WAV or FLAC (from the suffix) at its original rate and length.

    Streams written before their length was known (``rvqcodec stream encode``) are cut to the
    length in their end record. The output is the same whatever the file's packet size.
    Decoded samples beyond full scale are clipped; once the output is written, a
    :class:`~codec.errors.ClippingWarning` says how many.
    """
    input, output = Path(input), output_path(output)
    audio_format(output)  # an unsupported suffix is refused before any work
    check_input(input)
    with open(input, "rb") as f, StreamDecoder(model, strict=True, block_frames=DECODE_BLOCK_FRAMES) as decoder:
        header = read_header(f)
        decoder.start(header)
        rate, channels = header.original_rate, header.channels
        length = None if header.num_samples == UNKNOWN_LENGTH else header.num_samples
        total = _estimated_samples(header, input) if length is None else length
        with atomic_output(output, force, source=input) as tmp:
            with audio_output(tmp, output, rate, channels) as dst, Progress(total, rate, quiet, "decompress") as progress:
                writer = TrimmingWriter(dst, length, holdback_samples(header))
                try:
                    while data := f.read(READ_BYTES):
                        y = decoder.push(data)
                        writer.write(y)
                        progress.advance(len(y))
                    writer.write(decoder.finish())
                except BitstreamError as exc:  # damage or a cut: the rest can still be had
                    raise BitstreamError(f"{exc} (`rvqcodec stream decode --input {shlex.quote(str(input))} --output "
                                         "OUT` decodes the rest, the damage concealed)") from None
                writer.finish(channels, decoder.num_samples)
    writer.warn_clipped(str(output))
    return output


def check_suffix(path: Path) -> None:
    """Bitstreams are written only to ``.rvq`` names (as audio only to .wav or .flac)."""
    if Path(path).suffix.lower() != ".rvq":
        raise CodecError(f"output must be a .rvq file, got {Path(path).name!r}")


def check_input(path: Path) -> None:
    """A ``.rvq`` input that exists and is not a folder."""
    if not path.exists():
        raise CodecError(f"input file not found: {path}")
    if path.is_dir():
        raise CodecError(f"input is a directory, not a .rvq file: {path}")


def audio_format(path: Path) -> str:
    """soundfile format for an output path, from its suffix."""
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(Path(path).suffix.lower())
    if fmt is None:
        raise CodecError(f"unsupported output format {Path(path).suffix!r}: use .wav or .flac")
    return fmt


def holdback_samples(header: Header) -> int:
    """Decoded samples that can lie beyond the true length: the last frame's padding after
    resampling, plus a margin for rounding."""
    hop = round(header.sample_rate / header.frame_rate)
    return -(-hop * header.original_rate // header.sample_rate) + 8


def _estimated_samples(header: Header, path: Path) -> int:
    return int(path.stat().st_size * 8 / 1000 / header.kbps * header.original_rate)


def builtin_config(header: Header) -> CodecConfig | None:
    """The config of the built-in model a header names, if its stream fits that model (sample
    rate, codebooks, frame rate), from the weights file's metadata alone; None otherwise (or
    for a package without that weights file)."""
    try:
        cfg = registered_config(header.model_id)
    except ModelError:
        return None
    if cfg is None or (cfg.codebook_size, cfg.sample_rate) != (header.codebook_size, header.sample_rate) \
            or header.n_q > cfg.n_q or abs(cfg.frame_rate - header.frame_rate) > 1e-3:
        return None
    return cfg


def read_info(path: Path) -> FileInfo:
    """Header fields and a CRC check of every packet (damage is reported, not raised). The
    frames a file should hold count the output delay its encoder coded past the end where the
    header names a built-in model; for others they are a lower bound, without it, and bytes
    after them are read as packets, not counted as trailing (the frames may be the delay's)."""
    path = Path(path)
    check_input(path)
    with open(path, "rb") as f:
        header = read_header(f)
        cfg = builtin_config(header)
        delay = cfg.output_delay if cfg is not None else 0
        known = header.num_samples != UNKNOWN_LENGTH and cfg is not None
        parser = PacketParser(header, strict=False, frames=expected_frames(header, header.num_samples, delay) if known else None)
        damaged, num_samples = 0, header.num_samples
        for record in iter_packets(f, header, parser=parser):
            if isinstance(record, End):
                num_samples = record.num_samples
            elif record.codes is None:
                damaged += record.packets
        size = os.fstat(f.fileno()).st_size
        trailing = parser.trailing + size - f.tell()  # (left unread after the end)
        # A stream of unknown length without its end record was cut short.
        truncated = num_samples == UNKNOWN_LENGTH or parser.truncated \
            or parser.frames < expected_frames(header, num_samples, delay)
    return FileInfo(header, size, parser.index, parser.frames, damaged, truncated, num_samples, trailing)
