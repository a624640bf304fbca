"""Reading, resampling and writing audio files (soundfile + soxr, no torchaudio)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from .errors import CodecError


class AudioError(CodecError):
    """A user-facing problem with an audio file (missing, unreadable, empty)."""


_MUTE_LOCK = threading.Lock()
_mute = {"depth": 0, "saved": None}  # callers inside; the descriptor that fd 2 was (None: not redirected)


@contextlib.contextmanager
def native_stderr_muted(on: bool = True) -> Iterator[None]:
    """With ``on``, the process's standard error (file descriptor 2, where C libraries write)
    sent to the null device while inside: libsndfile's MP3 decoder (libmpg123) writes notes
    there ("Illegal Audio-MPEG-Header", "Trying to resync...") around the one line rvqcodec
    gives for the same damage, and ViSQOL's TFLite runtime an INFO line. Python's own stderr is
    flushed first. Safe from several threads (the first in redirects, the last out restores),
    but what any thread writes to fd 2 meanwhile is lost. Where fd 2 cannot be redirected
    (closed, no descriptors left), the body runs as it is."""
    if not on:
        yield
        return
    with _MUTE_LOCK:
        if _mute["depth"] == 0:
            _mute["saved"] = _redirect_fd2()
        _mute["depth"] += 1
    try:
        yield
    finally:
        with _MUTE_LOCK:
            _mute["depth"] -= 1
            saved = _mute["saved"]
            if _mute["depth"] == 0 and saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                _mute["saved"] = None


def _redirect_fd2() -> int | None:
    """fd 2 pointed at the null device; a copy of what it was, or None where that failed."""
    with contextlib.suppress(AttributeError, ValueError, OSError):  # (no sys.stderr, or a closed one)
        sys.stderr.flush()
    saved = null = None
    try:
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        return saved
    except OSError:
        if saved is not None:
            os.close(saved)
        return None
    finally:
        if null is not None:
            os.close(null)


def is_mpeg(path: Path) -> bool:
    """Whether ``path`` names an MP3 (or MP2) file, by its suffix: those are decoded by libmpg123."""
    return Path(path).suffix.lower() in (".mp3", ".mp2", ".mpga")


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
        with native_stderr_muted(is_mpeg(path)):
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
