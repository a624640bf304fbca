"""PCM byte streams: WAV read from a pipe (no seeking) and raw interleaved samples.

soundfile needs a seekable file, so a WAV arriving on stdin is parsed here: the header's
chunks are read in order up to ``data``, whose size may be a placeholder (0 or 0xFFFFFFFF,
as written by tools that stream WAV) meaning "until the end of input". Samples become
float32 exactly as libsndfile would make them (integer / 2**(bits-1)), so a WAV piped in
encodes to the same codes as the same file read from disk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .audio_io import AudioError

_FORMATS = {(1, 8): "u1", (1, 16): "i2", (1, 24): "i3", (1, 32): "i4", (3, 32): "f4", (3, 64): "f8"}
RAW_SAMPLE = "i2"  # raw PCM: signed 16-bit little-endian, interleaved
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


@dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian samples: ``sample`` is u1, i2, i3, i4, f4 or f8."""

    rate: int
    channels: int
    sample: str = RAW_SAMPLE

    def __post_init__(self) -> None:
        if not 1 <= self.rate < 2**32 or not 1 <= self.channels <= 255:
            raise AudioError(f"unsupported PCM format: {self.rate} Hz, {self.channels} channels")

    @property
    def frame_bytes(self) -> int:
        return int(self.sample[1]) * self.channels

    def to_float(self, data: bytes) -> np.ndarray:
        """Whole sample frames of ``data`` -> ``[T, C]`` float32 in [-1, 1)."""
        width = int(self.sample[1])
        raw = np.frombuffer(data, np.uint8)
        if self.sample == "u1":
            x = (raw.astype(np.int16) - 128).astype(np.float32) * np.float32(2.0**-7)
        elif self.sample == "i3":
            b = raw.reshape(-1, 3).astype(np.int32)
            x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) * np.float32(2.0**-23)
        elif self.sample[0] == "i":
            x = np.frombuffer(data, f"<i{width}").astype(np.float32) * np.float32(2.0 ** (1 - 8 * width))
        else:
            x = np.frombuffer(data, f"<f{width}").astype(np.float32)
        return x.reshape(-1, self.channels)


def pcm16(y: np.ndarray) -> tuple[np.ndarray, int]:
    """Float audio -> int16, the inverse of reading 16-bit samples (``k / 32768`` -> ``k``),
    clipped to the 16-bit range (NaN as 0, infinities as full scale); and how many values were
    clipped: those that round beyond it (from 32767.5 / 32768 up, under -1 - 0.5 / 32768).
    Every 16-bit output (WAV, FLAC, raw PCM) is made here, so they hold the same samples
    whatever libsndfile's own rounding (which has varied)."""
    scaled = np.rint(np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0) * 32768.0)
    clipped = int(np.count_nonzero(scaled > 32767)) + int(np.count_nonzero(scaled < -32768))
    return np.clip(scaled, -32768, 32767).astype(np.int16), clipped


def to_pcm16(y: np.ndarray) -> np.ndarray:
    """:func:`pcm16`'s samples alone."""
    return pcm16(y)[0]


def read_wav_header(read_exact: Callable[[int], bytes]) -> tuple[PcmFormat, int | None]:
    """Parse a WAV header from a byte stream, stopping at the first sample.

    Returns the format and the size of the sample data in bytes (None: until end of input).
    """
    riff = read_exact(12)
    if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
        raise AudioError("input is not a WAV stream (use --raw for headerless PCM)")
    fmt: PcmFormat | None = None
    while True:
        head = read_exact(8)
        if len(head) < 8:
            raise AudioError("the WAV stream ended before its sample data")
        chunk, size = head[:4], struct.unpack("<I", head[4:])[0]
        if chunk == b"data":
            if fmt is None:
                raise AudioError("WAV stream has sample data before its format chunk")
            unknown = size in _UNKNOWN_SIZES or riff[:4] == b"RF64"  # RF64 keeps sizes in 'ds64'
            return fmt, None if unknown else size
        body = read_exact(size + (size & 1))  # chunks are padded to even sizes
        if len(body) < size:
            raise AudioError("the WAV stream ended inside its header")
        if chunk == b"fmt ":
            fmt = _parse_fmt(body)


def _parse_fmt(body: bytes) -> PcmFormat:
    if len(body) < 16:
        raise AudioError("WAV stream has a damaged format chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the GUID
        tag = struct.unpack("<H", body[24:26])[0]
    sample = _FORMATS.get((tag, bits))
    if sample is None:
        raise AudioError(f"unsupported WAV encoding (format {tag}, {bits} bits): use PCM or float")
    return PcmFormat(rate, channels, sample)
