"""Quality evaluation: code a set of clips with rvqcodec (and optionally Opus), score the
decoded audio against the originals, and write ``results.json``, ``report.md`` and plots.

Each system runs the way a user would run it: rvqcodec through :func:`compress_file` and
:func:`decompress_file`, Opus through ``opusenc``/``opusdec``. The actual bitrate is the coded
file's size over the clip's duration. Decoded audio is scored sample-aligned: the delay of each
system at each bitrate is measured by cross-correlation and undone before scoring.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from . import metrics, opus
from .audio_io import read_audio
from .errors import ClippingWarning, CodecError
from .eval_results import Clip, EvalResult, Row, write_outputs
from .files import compress_file, decompress_file, open_audio
from .listing import list_entries  # the same listing (and categories) as the training data
from .model import Codec
from .weights import fingerprint, load

# Codecs delay by at most a few tens of ms; a wider search only risks locking onto the
# periodicity of music (a beat, a repeated bar) instead of the delay.
MAX_LAG_SECONDS = 0.1
MIN_CLIP_SECONDS = 0.5  # PESQ and STOI need some 0.3-0.4 s of speech, plus the delay search
# Below this waveform correlation at the best lag, the peak is noise: the decoded waveform
# does not follow the original (phase-free reconstruction, or no reconstruction at all), and
# the clip's delay is that of its loudness contour instead (metrics.envelope_lag), if the
# contours correlate at least this well (else the output does not follow the clip at all).
MIN_LAG_CORRELATION = 0.1
MIN_CONTOUR_CORRELATION = 0.5
VISQOL_MISSING = 'not installed (pip install "visqol-python[lattice]")'


@dataclass(frozen=True)
class Coded:
    """One clip coded by one system at one bitrate; ``decoded`` lives in the work folder."""

    clip: Clip
    system: str
    kbps: float
    actual_kbps: float
    decoded: Path
    lag: int | None  # measured delay of the decoded audio, in samples at the clip's rate (None: none found)
    correlation: float  # waveform correlation at that delay


def list_clips(input: Path) -> list[Clip]:
    """The clips of a folder (searched recursively; category from a ``speech/``, ``music/``
    or ``general/`` top folder) or of a ``manifest.tsv`` (``category`` column)."""
    input = Path(input)
    if not input.exists():
        raise CodecError(f"input not found: {input}")
    if input.is_file() and input.suffix.lower() != ".tsv":
        raise CodecError(f"input must be a folder of audio files or a .tsv manifest: {input}")
    try:
        entries = list_entries(input)
    except CodecError:
        raise
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CodecError(f"cannot list clips in {input}: {exc}") from None
    root = input if input.is_dir() else input.parent
    return [_clip(e.path, root, e.category) for e in entries]


def _clip(path: Path, root: Path, category: str) -> Clip:
    with open_audio(path) as info:  # the same checks and messages as compress
        rate, channels, frames = info.samplerate, info.channels, info.frames
    if frames < MIN_CLIP_SECONDS * rate:
        raise CodecError(f"clip too short to score: {path} is {frames / rate:.3f} s "
                         f"(evaluation clips must be at least {MIN_CLIP_SECONDS:g} s)")
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:  # a manifest may point outside its own folder
        name = str(path)
    return Clip(path, name, category.strip().lower() or "general", rate, channels, frames)


def parse_kbps(text: str) -> tuple[float, ...]:
    """``"1.5,3,6"`` -> ``(1.5, 3.0, 6.0)``."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CodecError(f"--kbps must be comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise CodecError(f"--kbps must be comma-separated positive numbers, got {text!r}")
    return tuple(sorted(set(values)))


def evaluate(
    input: Path, work: Path, kbps: tuple[float, ...] | None = None, model: Codec | str | Path | None = None,
    baseline: str | None = None, quiet: bool = True,
) -> EvalResult:
    """Code every clip of ``input`` with each system at each bitrate and score it.

    ``work`` is an existing folder for the coded and decoded files. ``kbps`` defaults to the
    model's bitrates; ``baseline`` is None or ``"opus"`` (at the bitrates Opus supports).
    """
    if baseline not in (None, "opus"):
        raise CodecError(f"unknown baseline {baseline!r}: the only baseline is 'opus'")
    if baseline == "opus":
        opus.require_tools()
    systems = ("rvqcodec",) + (("opus",) if baseline else ())
    clips = list_clips(Path(input))
    codec = model if isinstance(model, Codec) else load(model)
    kbps = tuple(sorted(kbps or codec.cfg.bandwidths))
    for k in kbps:
        codec.n_q_for(k)  # CodecError listing the valid bitrates

    jobs = [(i, s, k) for i in range(len(clips)) for s in systems for k in kbps
            if s == "rvqcodec" or opus.supports(k)]
    coded = [_code(clips[i], i, s, k, codec, work)
             for i, s, k in tqdm(jobs, desc="coding", disable=quiet, leave=False)]
    lags = _system_lags(coded)
    rows = [_score(c, round((lags[c.system][c.kbps] or 0.0) / 1000 * c.clip.sample_rate))
            for c in tqdm(coded, desc="scoring", disable=quiet, leave=False)]
    return EvalResult(
        input=str(input), model=codec.cfg.name, weights=fingerprint(codec)[:8].hex(),
        model_rate=codec.sample_rate, kbps=kbps, systems=systems, clips=tuple(clips),
        lag_ms=lags, lag_search_ms=MAX_LAG_SECONDS * 1000, min_lag_correlation=MIN_LAG_CORRELATION,
        rows=tuple(rows), unavailable={} if metrics.visqol_available() else {"visqol": VISQOL_MISSING},
    )


def _mono(path: Path) -> tuple[np.ndarray, int]:
    wav, rate = read_audio(path)
    return wav.mean(axis=0), rate


def _code(clip: Clip, index: int, system: str, kbps: float, codec: Codec, work: Path) -> Coded:
    if system == "rvqcodec":
        rvq = work / f"{index:05d}-rvq-{kbps:g}kbps.rvq"
        decoded = rvq.with_suffix(".wav")
        actual = compress_file(clip.path, rvq, kbps=kbps, model=codec).actual_kbps
        with warnings.catch_warnings():  # (scored as written; the temporary file's name is no news to a user)
            warnings.simplefilter("ignore", ClippingWarning)
            decompress_file(rvq, decoded, model=codec)
    else:
        result = through_opus(clip, index, kbps, work)
        decoded, actual = result.output, result.actual_kbps
    ref, rate = _mono(clip.path)
    est, _ = _mono(decoded)
    lag, corr = clip_lag(ref, est, rate)
    return Coded(clip, system, kbps, actual, decoded, lag, corr)


def through_opus(clip: Clip, index: int, kbps: float, work: Path) -> opus.OpusResult:
    """``clip`` (any format :func:`list_clips` accepts) through Opus at ``kbps`` per channel,
    decoded to a 16-bit WAV at its rate and channels; files in ``work``, named by ``index``."""
    source = work / f"{index:05d}.wav"
    if not source.exists():  # opusenc reads WAV and FLAC only; give it lossless PCM
        wav, rate = read_audio(clip.path)
        sf.write(str(source), wav.T, rate, subtype="PCM_24")
    return opus.code(source, work, kbps, clip.sample_rate, clip.channels, clip.seconds)


def clip_lag(ref: np.ndarray, est: np.ndarray, rate: int) -> tuple[int | None, float]:
    """Delay of a decoded clip in samples, and its waveform correlation there: the waveform
    cross-correlation's peak, or the loudness contour's where the waveform does not follow;
    None where neither follows the original."""
    lag = metrics.estimate_lag(ref, est, round(MAX_LAG_SECONDS * rate))
    corr = metrics.correlation(*metrics.align(ref, est, lag))
    if corr >= MIN_LAG_CORRELATION:
        return lag, corr
    contour_lag, contour_corr = metrics.envelope_lag(ref, est, round(MAX_LAG_SECONDS * rate), rate)
    return (contour_lag if contour_corr >= MIN_CONTOUR_CORRELATION else None), corr


def _system_lags(coded: list[Coded]) -> dict[str, dict[float, float | None]]:
    """system -> kbps -> delay in ms: the median of the clips' delays (of the waveform where
    it correlates, else of the loudness contour); None where no clip has one (the output is
    then scored unshifted).

    A delay belongs to the system, not to a clip: aligning every clip by its own best
    cross-correlation would let a poor decode pick the shift that flatters it most. Before
    session 19 only clips whose waveform correlated counted, and a phase-free decoder's few
    such clips could put its delay 15 ms off (STOI 0.74 instead of 0.90 for the same audio).
    """
    per: dict[str, dict[float, list[float]]] = {}
    for c in coded:
        found = per.setdefault(c.system, {}).setdefault(c.kbps, [])
        if c.lag is not None:
            found.append(1000 * c.lag / c.clip.sample_rate)
    return {s: {k: float(np.median(v)) if v else None for k, v in by_k.items()} for s, by_k in per.items()}


def _score(c: Coded, lag: int) -> Row:
    ref, rate = _mono(c.clip.path)
    est, _ = _mono(c.decoded)
    ref, est = metrics.align(ref, est, lag)
    scores = metrics.score_clip(ref, est, rate, c.clip.category)
    return Row(c.clip, c.system, c.kbps, c.actual_kbps, lag, c.lag, c.correlation, scores)


def run(
    input: Path, out: Path, kbps: tuple[float, ...] | None = None, model: Codec | str | Path | None = None,
    baseline: str | None = None, force: bool = False, quiet: bool = True,
) -> EvalResult:
    """:func:`evaluate` in a temporary folder, then write ``out``/results.json, report.md, *.png."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CodecError(f"--out must be a folder: {out}")
    if (out / "results.json").exists() and not force:
        raise CodecError(f"{out / 'results.json'} exists (--force, or force=True in Python, overwrites it)")
    with tempfile.TemporaryDirectory(prefix="rvqcodec-eval-") as work:
        result = evaluate(input, Path(work), kbps, model, baseline, quiet)
    write_outputs(result, out)
    return result
