"""Objective quality metrics: a decoded signal against its original.

Every function takes mono numpy float arrays ``[T]``, reference first. The scores return a
plain float (higher is better, except :func:`mel_distance`) and need sample-aligned signals of
equal length: use :func:`estimate_lag` and :func:`align` first. The heavy optional packages
(``pesq``, ``pystoi``, ``visqol-python``, the mel loss with librosa) are imported
on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import soxr
import torch
from scipy import signal

from .audio_io import native_stderr_muted

# PESQ (P.862.2) and STOI are defined on 16 kHz audio; ViSQOL's speech mode at 16 kHz and its
# audio mode at 48 kHz.
SPEECH_RATE = 16000
VISQOL_RATES = {"speech": 16000, "audio": 48000}
# SI-SDR of identical signals is infinite; the epsilon caps it (at about 150 dB for speech at
# -23 dBFS) so that results stay finite numbers in JSON.
_EPS = 1e-12
# Every metric :func:`score_clip` knows, in the order reports list them.
METRICS = ("si_sdr", "mel_distance", "pesq_wb", "stoi", "visqol")
SPEECH_ONLY = ("pesq_wb", "stoi")  # meaningless on music and other sounds


def _check(ref: np.ndarray, est: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    if ref.ndim != 1 or est.ndim != 1:
        raise ValueError(f"metrics take mono signals [T], got {ref.shape} and {est.shape}")
    if ref.shape != est.shape:
        raise ValueError(f"signals differ in length ({len(ref)} vs {len(est)}): align them first")
    if len(ref) == 0:
        raise ValueError("empty signal")
    return ref, est


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    return x if rate_in == rate_out else soxr.resample(x, rate_in, rate_out, quality="HQ")


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), zero-mean."""
    ref, est = _check(ref, est)
    ref, est = ref - ref.mean(), est - est.mean()
    target = (est @ ref + _EPS) / (ref @ ref + _EPS) * ref
    noise = est - target
    return float(10 * np.log10((target @ target + _EPS) / (noise @ noise + _EPS)))


@functools.lru_cache(maxsize=4)
def _mel_loss(sample_rate: int) -> torch.nn.Module:
    # One class is both the training loss and this metric, so they cannot drift apart.
    # Imported here because it pulls in librosa.
    from .mel import MultiScaleMelLoss

    return MultiScaleMelLoss(sample_rate).eval()


def mel_distance(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """Multi-scale mel distance as DAC defines it (lower is better, 0 for identical signals).

    The L1 distance of ``log10(clamp(mel, 1e-5))`` averaged over bins and frames, summed over
    windows 32..2048 (hop window/4) with 5..320 mel bands: ``codec.mel.MultiScaleMelLoss``.
    Clips shorter than the longest window are scored with zeros appended up to its length.
    """
    ref, est = _check(ref, est)
    loss = _mel_loss(int(sample_rate))
    pad = max(0, max(loss.windows) - len(ref))  # the STFT's reflect padding needs that much
    x = torch.from_numpy(np.pad(ref, (0, pad))).float()[None, None]
    y = torch.from_numpy(np.pad(est, (0, pad))).float()[None, None]
    with torch.no_grad():
        return float(loss(x, y))


def pesq_wb(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """Wideband PESQ (ITU-T P.862.2, MOS-LQO 1.04..4.64) at 16 kHz.

    NaN when PESQ cannot score the pair (no speech found in the reference, or under about
    a quarter of a second of audio): the score is undefined there, and a number would be
    mistaken for a measurement.
    """
    from pesq import PesqError, pesq

    ref, est = _check(ref, est)
    if not ref.any():
        return float("nan")
    r, e = _resample(ref, sample_rate, SPEECH_RATE), _resample(est, sample_rate, SPEECH_RATE)
    try:
        return float(pesq(SPEECH_RATE, r, e, "wb"))
    except PesqError:
        return float("nan")


def stoi(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """Short-time objective intelligibility (Taal et al. 2011, 0..1) computed at 16 kHz."""
    from pystoi import stoi as _stoi

    ref, est = _check(ref, est)
    r, e = _resample(ref, sample_rate, SPEECH_RATE), _resample(est, sample_rate, SPEECH_RATE)
    return float(_stoi(r, e, SPEECH_RATE, extended=False))


def visqol_available() -> bool:
    """Whether the optional ``visqol-python`` package is installed."""
    return importlib.util.find_spec("visqol") is not None


@functools.lru_cache(maxsize=2)
def _visqol_api(mode: str):  # -> visqol.VisqolApi
    from visqol import VisqolApi

    api = VisqolApi()
    with native_stderr_muted():
        api.create(mode=mode)
    return api


def visqol(ref: np.ndarray, est: np.ndarray, sample_rate: int, mode: str) -> float | None:
    """ViSQOL v3 MOS-LQO (1..5): ``mode`` ``"speech"`` at 16 kHz or ``"audio"`` at 48 kHz.

    None when ``visqol-python`` is not installed (``pip install "visqol-python[lattice]"``).
    """
    if mode not in VISQOL_RATES:
        raise ValueError(f"ViSQOL mode must be 'speech' or 'audio', got {mode!r}")
    if not visqol_available():
        return None
    ref, est = _check(ref, est)
    rate = VISQOL_RATES[mode]
    r, e = _resample(ref, sample_rate, rate), _resample(est, sample_rate, rate)
    with native_stderr_muted():
        return float(_visqol_api(mode).measure_from_arrays(r, e, rate).moslqo)


def estimate_lag(ref: np.ndarray, est: np.ndarray, max_lag: int) -> int:
    """Delay of ``est`` behind ``ref`` in samples, within ``[-max_lag, max_lag]``.

    The peak of the cross-correlation: ``est[n + lag]`` best matches ``ref[n]``. Signals may
    differ in length. 0 when nothing correlates positively (silence, noise), since there is
    then no evidence of any delay.
    """
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    corr = signal.correlate(est, ref, mode="full", method="fft")
    lags = signal.correlation_lags(len(est), len(ref), mode="full")
    window = np.abs(lags) <= max_lag
    corr, lags = corr[window], lags[window]
    if len(corr) == 0 or corr.max() <= 0:
        return 0
    return int(lags[np.argmax(corr)])


def envelope_lag(ref: np.ndarray, est: np.ndarray, max_lag: int, sample_rate: int) -> tuple[int, float]:
    """Delay of ``est``'s loudness contour behind ``ref``'s, in samples, within
    ``[-max_lag, max_lag]``, and the contours' correlation there: the peak of the
    cross-correlation of their log power envelopes (5-ms moving averages). For decoders
    whose waveform does not follow the original (a phase made up from magnitudes), whose
    waveform cross-correlation peaks anywhere."""
    width = max(1, round(0.005 * sample_rate))

    def contour(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        power = x * x
        sums = np.concatenate([[0.0], np.cumsum(power)])
        smooth = (sums[width:] - sums[:-width]) / width
        log = np.log(smooth + 1e-6 * power.mean() + 1e-12)  # silence does not dominate
        return log - log.mean()

    if min(len(ref), len(est)) <= width:
        return 0, 0.0
    a, b = contour(ref), contour(est)
    lag = estimate_lag(a, b, min(max_lag, min(len(a), len(b)) // 2))  # at least half of each overlaps
    return lag, correlation(*align(a, b, lag))


def correlation(ref: np.ndarray, est: np.ndarray) -> float:
    """Pearson correlation of two aligned signals (0 when either is constant)."""
    ref, est = _check(ref, est)
    ref, est = ref - ref.mean(), est - est.mean()
    norm = np.sqrt((ref @ ref) * (est @ est))
    return float(ref @ est / norm) if norm > 0 else 0.0


def align(ref: np.ndarray, est: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Undo a delay of ``lag`` samples: ``(ref, est)`` cut to their common, aligned part."""
    if lag >= 0:
        est = est[lag:]
    else:
        ref = ref[-lag:]
    n = min(len(ref), len(est))
    return ref[:n], est[:n]


def score_clip(
    ref: np.ndarray, est: np.ndarray, sample_rate: int, category: str, names: tuple[str, ...] = METRICS,
) -> dict[str, float | None]:
    """The metrics ``names`` of one aligned pair ``[T]``: name -> score, or None where the
    metric does not apply (PESQ and STOI on anything but ``category == "speech"``), cannot
    score the pair (a NaN or inf), or is not installed (ViSQOL). ViSQOL runs in speech mode on
    speech and audio mode on everything else. The one scorer behind ``rvqcodec eval``,
    training validation and ``benchmarks/heldout.py``, so their numbers agree.
    """
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
    speech = category == "speech"
    scorers = {
        "si_sdr": lambda: si_sdr(ref, est),
        "mel_distance": lambda: mel_distance(ref, est, sample_rate),
        "pesq_wb": lambda: pesq_wb(ref, est, sample_rate),
        "stoi": lambda: stoi(ref, est, sample_rate),
        "visqol": lambda: visqol(ref, est, sample_rate, "speech" if speech else "audio"),
    }
    scores: dict[str, float | None] = {}
    for name in names:
        value = None if name in SPEECH_ONLY and not speech else scorers[name]()
        scores[name] = value if value is not None and np.isfinite(value) else None
    return scores


def mean_scores(rows: list[dict[str, float | None]]) -> dict[str, float]:
    """Per metric, the mean of the scores :func:`score_clip` gave (``rows``, one per clip);
    None (not applicable, not scorable) is left out, and a metric with no score at all is
    absent from the result."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if value is not None:
                values.setdefault(name, []).append(value)
    return {name: float(np.mean(v)) for name, v in values.items()}
