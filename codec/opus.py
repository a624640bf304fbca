"""The Opus baseline: libopus through the ``opusenc``/``opusdec`` command-line tools.

Opus is coded the way a user would code it (constant bitrate, default complexity 10, 20 ms
frames) and decoded back to a 16-bit WAV at the clip's own rate, like ``.rvq`` files are.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import CodecError

# opusenc accepts 6..256 kbps per channel.
MIN_KBPS = 6.0
MAX_KBPS = 256.0
INSTALL_HINT = "install opus-tools (Debian/Ubuntu: apt-get install opus-tools; macOS: brew install opus-tools)"


class OpusToolsMissing(CodecError):
    """``opusenc`` or ``opusdec`` is not on PATH."""


@dataclass(frozen=True)
class OpusResult:
    output: Path  # decoded WAV
    bytes: int  # size of the .opus file (Ogg container and headers included)
    seconds: float

    @property
    def actual_kbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1000


def require_tools() -> None:
    """Raise :class:`OpusToolsMissing` with install instructions when a tool is missing."""
    missing = [tool for tool in ("opusenc", "opusdec") if shutil.which(tool) is None]
    if missing:
        raise OpusToolsMissing(f"the Opus baseline needs {' and '.join(missing)}: {INSTALL_HINT}")


def supports(kbps: float) -> bool:
    """Whether Opus can code ``kbps`` per channel."""
    return MIN_KBPS <= kbps <= MAX_KBPS


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CodecError(f"{cmd[0]} failed on {cmd[-2]}: {last}")


def code(wav: Path, work: Path, kbps: float, rate: int, channels: int, seconds: float) -> OpusResult:
    """Encode ``wav`` at ``kbps`` per channel (hard CBR) and decode it to ``rate`` Hz.

    ``work`` is a folder for the ``.opus`` and decoded files. opusdec removes the encoder's
    pre-skip, so the output should already be aligned with the input.
    """
    coded = work / f"{wav.stem}-opus-{kbps:g}kbps.opus"
    decoded = work / f"{wav.stem}-opus-{kbps:g}kbps.wav"
    # --padding 0: no spare metadata room, so the file size is audio, headers and framing only.
    _run(["opusenc", "--quiet", "--hard-cbr", "--bitrate", f"{kbps * channels:g}",
          "--padding", "0", "--discard-comments", str(wav), str(coded)])
    _run(["opusdec", "--quiet", "--rate", str(rate), str(coded), str(decoded)])
    return OpusResult(decoded, coded.stat().st_size, seconds)
