"""Reading, resampling and writing audio files (soundfile + soxr, no torchaudio)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from .errors import CodecError


class AudioError(CodecError):
    """A user-facing problem with an audio file (missing, unreadable, empty)."""


@contextlib.contextmanager
def decoder_notes_muted() -> Iterator[None]:
    """The process's standard error (file descriptor 2) sent to the null device while inside:
    libsndfile's MP3 decoder (libmpg123) writes its notes there ("Illegal Audio-MPEG-Header",
    "Trying to resync..."), around the one-line warning or error rvqcodec gives for the same
    damage. Python's own output is flushed first and written as usual after."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to begin with
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def require_float(dtype: object) -> None:
    """Refuse integer (or other non-float) samples: coded as they are, they would be loud noise."""
    if not (getattr(dtype, "is_floating_point", False) or getattr(dtype, "kind", "") == "f"):
        raise AudioError(f"expected float samples in -1..1, got {dtype} (divide integer PCM by its full scale, "
                         "e.g. int16 by 32768)")


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read any file soundfile understands.

    Returns:
        (wav, sample_rate) with wav float32 of shape ``[C, T]``.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"input file not found: {path}")
    if path.is_dir():
        raise AudioError(f"input is a directory, not an audio file: {path}")
    try:
        with decoder_notes_muted():
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"cannot read audio from {path}: {_short(exc)}") from None
    if data.shape[0] == 0:
        raise AudioError(f"input has no audio samples: {path}")
    return np.ascontiguousarray(data.T), int(sr)


def to_rate(wav: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``[T]`` or ``[C, T]`` float32 audio with soxr (high quality)."""
    if rate_in == rate_out:
        return wav.astype(np.float32, copy=False)
    if wav.ndim == 1:
        return soxr.resample(wav, rate_in, rate_out, quality="HQ").astype(np.float32)
    out = soxr.resample(wav.T, rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, wav.shape[0]).T)


def write_audio(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    """Write ``[C, T]`` float audio; format from the suffix (.wav is 16-bit PCM, .flac 16-bit)."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"unsupported output format {path.suffix!r}: use .wav or .flac")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), np.clip(wav.T, -1.0, 1.0), sample_rate, format=fmt, subtype="PCM_16")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
