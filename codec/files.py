"""Compressing and decompressing files in constant memory through the streaming path.

Audio is read block by block, resampled with a streaming soxr resampler, encoded with the
model in streaming mode and written packet by packet (and the reverse for decoding), so a
one-hour file needs no more memory than a one-second one. The streaming path gives exactly
the same codes as offline encoding, so there is only one way a file can come out.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from .audio_io import AudioError
from .bitstream import UNKNOWN_LENGTH, BitstreamError, Header, encode_packet, iter_packets, read_header
from .errors import CodecError
from .model import Codec
from .weights import REGISTRY, fingerprint, load

BLOCK_SECONDS = 1.0
PROGRESS_MIN_SECONDS = 10.0


@dataclass(frozen=True)
class CompressResult:
    output: Path
    seconds: float
    bytes: int
    frames: int
    channels: int
    nominal_kbps: float  # codes only, all channels

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

    @property
    def seconds(self) -> float:
        return self.num_samples / self.header.original_rate

    @property
    def actual_kbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1000 if self.seconds else 0.0


@contextmanager
def atomic_output(path: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only on success."""
    path = Path(path)
    if path.exists() and not force:
        raise CodecError(f"output file exists: {path} (use --force to overwrite)")
    if path.exists() and path.is_dir():
        raise CodecError(f"output is a directory: {path}")
    if not path.parent.exists():
        raise CodecError(f"output folder does not exist: {path.parent}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _open_input(path: Path) -> sf.SoundFile:
    path = Path(path)
    if not path.exists():
        raise AudioError(f"input file not found: {path}")
    if path.is_dir():
        raise AudioError(f"input is a directory, not an audio file: {path}")
    try:
        f = sf.SoundFile(str(path))
    except Exception as exc:
        raise AudioError(f"cannot read audio from {path}: {str(exc).strip().splitlines()[0]}") from None
    if f.frames == 0:
        f.close()
        raise AudioError(f"input has no audio samples: {path}")
    return f


def _resolve(model: Codec | str | Path | None) -> Codec:
    return model if isinstance(model, Codec) else load(model)


def _progress(total: int, rate: int, quiet: bool, what: str) -> tqdm:
    show = not quiet and total / rate > PROGRESS_MIN_SECONDS
    return tqdm(total=round(total / rate, 1), unit="s", desc=what, disable=not show, leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]")


class PacketWriter:
    """Collects frames ``[F, C, K]`` and writes full packets as soon as they are complete."""

    def __init__(self, out: BinaryIO, header: Header) -> None:
        self.out, self.header = out, header
        self.pending: list[np.ndarray] = []
        self.count = 0
        self.frames = 0

    def add(self, codes: torch.Tensor) -> None:
        """codes ``[1, C, K, F]`` from the model."""
        if codes.shape[-1] == 0:
            return
        self.pending.append(codes[0].permute(2, 0, 1).numpy())
        self.count += codes.shape[-1]
        while self.count >= self.header.packet_frames:
            self._emit(self.header.packet_frames)

    def finish(self) -> None:
        if self.count:
            self._emit(self.count)

    def _emit(self, n: int) -> None:
        block = np.concatenate(self.pending, axis=0)
        self.out.write(encode_packet(block[:n], self.header.bits_per_code))
        self.frames += n
        rest = block[n:]
        self.pending, self.count = ([rest] if len(rest) else []), len(rest)


def compress_file(
    input: Path, output: Path, kbps: float = 6.0, model: Codec | str | Path | None = None,
    force: bool = False, quiet: bool = True, packet_frames: int = 75,
) -> CompressResult:
    """Encode an audio file (any rate, any channel count) into a ``.rvq`` file."""
    codec = _resolve(model)
    n_q = codec.n_q_for(kbps)
    with _open_input(Path(input)) as src, atomic_output(Path(output), force) as tmp:
        rate, channels, total = src.samplerate, src.channels, src.frames
        if channels > 255:
            raise AudioError(f"too many channels ({channels})")
        header = Header(codec.cfg.name, fingerprint(codec)[:8], codec.sample_rate, rate, channels,
                        codec.frame_rate, codec.cfg.codebook_size, n_q, total, packet_frames)
        resampler = soxr.ResampleStream(rate, codec.sample_rate, channels, dtype="float32", quality="HQ")
        block = max(1, int(rate * BLOCK_SECONDS))
        with open(tmp, "wb") as out, codec.streaming(), _progress(total, rate, quiet, "compress") as bar:
            out.write(header.encode())
            writer = PacketWriter(out, header)
            try:
                for x in src.blocks(blocksize=block, dtype="float32", always_2d=True):
                    y = resampler.resample_chunk(x, last=False)
                    writer.add(codec.encode(torch.from_numpy(y.T.copy())[None], n_q=n_q))
                    bar.update(round(len(x) / rate, 1))
            except sf.LibsndfileError as exc:
                raise AudioError(f"cannot decode {input}: {exc}") from None
            y = resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True)
            writer.add(codec.encode(torch.from_numpy(y.T.copy())[None], n_q=n_q))
            writer.add(codec.flush(1, channels, n_q=n_q))
            writer.finish()
        size = tmp.stat().st_size
    return CompressResult(Path(output), total / rate, size, writer.frames, channels, header.kbps)


def model_for(header: Header, model: Codec | str | Path | None = None) -> Codec:
    """The model that made a file: the one given, or the built-in one named in the header."""
    if model is None:
        if header.model_id not in REGISTRY:
            raise CodecError(
                f"file was made by model {header.model_id!r}, which is not built in; pass --model PATH"
            )
        model = header.model_id
    codec = _resolve(model)
    if fingerprint(codec)[:8] != header.weights_hash:
        raise CodecError(
            f"file was made by model {header.model_id!r} with weights {header.weights_hash.hex()}, "
            f"not by the weights given ({codec.cfg.name}, {fingerprint(codec)[:8].hex()})"
        )
    if (codec.sample_rate, codec.cfg.codebook_size) != (header.sample_rate, header.codebook_size) \
            or header.n_q > codec.cfg.n_q:
        raise CodecError("file's stream parameters do not match the model")
    return codec


class TrimmingWriter:
    """Writes ``[T, C]`` blocks, keeping exactly ``length`` samples (padding with zeros)."""

    def __init__(self, out: sf.SoundFile, length: int) -> None:
        self.out, self.length, self.written = out, length, 0

    def write(self, y: np.ndarray) -> None:
        keep = y[: max(0, self.length - self.written)]
        if len(keep):
            self.out.write(np.clip(keep, -1.0, 1.0))
            self.written += len(keep)

    def finish(self, channels: int) -> None:
        if self.written < self.length:
            self.out.write(np.zeros((self.length - self.written, channels), np.float32))
            self.written = self.length


def decompress_file(
    input: Path, output: Path, model: Codec | str | Path | None = None, force: bool = False, quiet: bool = True,
) -> Path:
    """Decode a ``.rvq`` file to WAV or FLAC (from the suffix) at its original rate and length."""
    input, output = Path(input), Path(output)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(output.suffix.lower())
    if fmt is None:
        raise CodecError(f"unsupported output format {output.suffix!r}: use .wav or .flac")
    if not input.exists() or input.is_dir():
        raise CodecError(f"input file not found: {input}")
    with open(input, "rb") as f:
        header = read_header(f)
        if header.num_samples == UNKNOWN_LENGTH:
            raise BitstreamError("stream without a known length: decode it with `rvqcodec stream decode`")
        codec = model_for(header, model)
        rate, channels = header.original_rate, header.channels
        resampler = soxr.ResampleStream(codec.sample_rate, rate, channels, dtype="float32", quality="HQ")
        with atomic_output(output, force) as tmp:
            with sf.SoundFile(str(tmp), "w", rate, channels, format=fmt, subtype="PCM_16") as dst, \
                    codec.streaming(), _progress(header.num_samples, rate, quiet, "decompress") as bar:
                writer = TrimmingWriter(dst, header.num_samples)
                for packet in iter_packets(f, header, strict=True):
                    if packet.codes is None:  # only an end record reaches here in strict mode
                        continue
                    codes = torch.from_numpy(packet.codes).permute(1, 2, 0)[None]
                    audio = codec.decode(codes)[0].T.numpy()
                    writer.write(resampler.resample_chunk(audio, last=False))
                    bar.update(round(packet.frames / codec.frame_rate, 1))
                writer.write(resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True))
                writer.finish(channels)
    return output


def read_info(path: Path) -> FileInfo:
    """Header fields and a CRC check of every packet (damage is reported, not raised)."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise CodecError(f"input file not found: {path}")
    with open(path, "rb") as f:
        header = read_header(f)
        packets = frames = damaged = 0
        num_samples = header.num_samples
        for packet in iter_packets(f, header, strict=False):
            if packet.frames < 0:
                num_samples = -packet.frames
                continue
            packets += 1
            frames += packet.frames
            damaged += packet.codes is None
        if num_samples == UNKNOWN_LENGTH:
            expected = frames
        else:
            expected = int(np.ceil(num_samples / header.original_rate * header.frame_rate - 1e-9))
        truncated = frames < expected - 1  # one frame of slack for resampling round-off
    return FileInfo(header, path.stat().st_size, packets, frames, damaged, truncated, num_samples)
