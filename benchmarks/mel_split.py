"""Where a codec's mel distance comes from: the multi-scale mel distance (codec/metrics.py) of
decoded clips split by the centre frequency of the metric's mel bands and by its windows, next
to Opus's; optionally, how far the original's phase in a frequency range would take it.

    python benchmarks/mel_split.py ../shared/dev/manifest.tsv rvq24k-v22 rvq24k-v21 opus \\
        [--kbps 12] [--category speech] [--phase-oracle 860-4000,860-8000,4000-8000] [--json PATH]

Models as benchmarks/heldout.py takes them ('opus': Opus at the same bitrate, opus-tools).
Each clip is coded offline at ``--kbps`` with the model's output delay dropped, as a file
decodes (Opus's output is lined up already), and scored against the original without a
further shift. The parts of a row sum to its mel distance: per window, the mean over bins
and frames of ``|log10 mel(ref) - log10 mel(est)|`` (the metric's terms); per frequency
range, the share of those terms from the bands whose centre lies in it; and per class of the
original's level around each frame (20 ms, in dB re full scale), the share from those frames.
``--phase-oracle LO-HI``: also the model's decoded audio with its 512-point STFT (hop 128)
taking the original's phase from LO to HI Hz (its own magnitudes kept), scored by mel distance
and (speech) wideband PESQ: an upper bound on what a better phase there would give, not a
codec. Prints tables and writes JSON (default ``reports/mel_split.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import librosa
import numpy as np
import soxr
import torch

from common import print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec import load, opus  # noqa: E402
from codec.audio_io import read_audio  # noqa: E402
from codec.errors import CodecError  # noqa: E402
from codec.evaluate import list_clips  # noqa: E402
from codec.metrics import _mel_loss, mel_distance, pesq_wb  # noqa: E402
from heldout import load_any, opus_audio, round_trip  # noqa: E402

RANGES_HZ = (0.0, 1000.0, 4000.0, 8000.0)  # lower edges; the last range runs to Nyquist
ORACLE_FFT, ORACLE_HOP = 512, 128
LEVELS_DB = (-60.0, -50.0, -40.0, -30.0)  # classes of the reference's level, split at these
LEVEL_SECONDS = 0.02  # the span its level is measured over
TIME_WINDOW = 256  # the window whose frames give each class's share of the time


def _terms(ref: np.ndarray, est: np.ndarray, rate: int) -> Iterator[tuple[int, np.ndarray]]:
    """Per window of the metric: ``(window, terms)``, the metric's terms ``[M, frames]``."""
    loss = _mel_loss(rate)
    x, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None] for a in (ref, est))
    with torch.no_grad():
        for w in loss.windows:
            yield w, loss.log_distance(loss.mel(x, w), loss.mel(y, w))[0].numpy()


def split(ref: np.ndarray, est: np.ndarray, rate: int, edges: tuple[float, ...] = RANGES_HZ,
          computed: list[tuple[int, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mel distance of ``est`` against ``ref`` (both ``[T]``, at least the longest window
    long) split two ways: per window ``[W]`` and per frequency range ``[len(edges)]`` (bands by
    their centre), each summing to the distance. ``computed``: what :func:`_terms` gives for
    the pair, if already computed."""
    per_window, per_range = [], np.zeros(len(edges))
    for w, terms in computed or _terms(ref, est, rate):
        centres = librosa.mel_frequencies(terms.shape[0] + 2, fmin=0.0, fmax=rate / 2)[1:-1]
        which = np.searchsorted(np.asarray(edges), centres, side="right") - 1  # [M] range of each band
        per_window.append(terms.mean())
        per_range += np.bincount(which, weights=terms.sum(axis=1), minlength=len(edges)) / terms.size
    return np.array(per_window), per_range


def split_by_level(ref: np.ndarray, est: np.ndarray, rate: int, edges_db: tuple[float, ...] = LEVELS_DB,
                   computed: list[tuple[int, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The mel distance of ``est`` against ``ref`` (both ``[T]``, at least the longest window
    long) split by the level of ``ref`` around each frame of the metric (:func:`levels_db`;
    ``edges_db`` are the lower edges of the classes after the first): ``[len(edges_db) + 1]``
    parts summing to the distance, and the share of ``ref``'s time in each class (the frames
    of the metric's :data:`TIME_WINDOW`-sample window). ``computed``: as :func:`split` takes it."""
    loss = _mel_loss(rate)
    if TIME_WINDOW not in loss.windows:
        raise ValueError(f"TIME_WINDOW {TIME_WINDOW} is not one of the metric's windows {loss.windows}")
    parts, time = np.zeros(len(edges_db) + 1), np.zeros(len(edges_db) + 1)
    level = level_curve_db(ref, rate)  # (once for all windows)
    for w, terms in computed or _terms(ref, est, rate):
        centres = np.arange(terms.shape[1]) * (w // 4)  # frame i is centred on sample i * hop (center=True)
        which = np.searchsorted(np.asarray(edges_db), _at(level, centres), side="right")  # [frames]
        parts += np.bincount(which, weights=terms.sum(axis=0), minlength=len(parts)) / terms.size
        if w == TIME_WINDOW:
            time = np.bincount(which, minlength=len(parts)) / terms.shape[1]
    return parts, time


def levels_db(audio: np.ndarray, rate: int, centres: np.ndarray) -> np.ndarray:
    """The mean square of ``audio`` ``[T]`` over :data:`LEVEL_SECONDS` centred on each sample
    of ``centres`` ``[N]`` (clipped to the audio; at its ends, over the samples there are), in
    dB re full scale: ``[N]``."""
    return _at(level_curve_db(audio, rate), centres)


def _at(curve: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``curve`` ``[T]`` at samples ``centres`` ``[N]``, those past its end at its last."""
    return curve[np.minimum(centres, len(curve) - 1)]


def level_curve_db(audio: np.ndarray, rate: int) -> np.ndarray:
    """:func:`levels_db` at every sample of ``audio`` ``[T]``: ``[T]``."""
    span = max(1, round(LEVEL_SECONDS * rate))
    kernel = np.ones(span)
    energy = np.convolve(np.asarray(audio, dtype=np.float64) ** 2, kernel, mode="same")
    count = np.convolve(np.ones(len(audio)), kernel, mode="same")
    return 10 * np.log10(energy / count + 1e-20)


def with_original_phase(ref: np.ndarray, est: np.ndarray, rate: int, lo: float, hi: float) -> np.ndarray:
    """``est`` ``[T]`` with the phase of ``ref``'s STFT from ``lo`` to ``hi`` Hz (its own
    magnitudes): an oracle."""
    window = torch.hann_window(ORACLE_FFT, dtype=torch.float64)

    def stft(a: np.ndarray) -> torch.Tensor:
        return torch.stft(torch.from_numpy(a.astype(np.float64)), ORACLE_FFT, ORACLE_HOP, window=window, return_complex=True)

    r, e = stft(ref), stft(est)
    hz = torch.arange(r.shape[0], dtype=torch.float64) * rate / ORACLE_FFT
    band = ((hz >= lo) & (hz < hi))[:, None]
    mixed = torch.where(band, e.abs() * torch.exp(1j * r.angle()), e)
    return torch.istft(mixed, ORACLE_FFT, ORACLE_HOP, window=window, length=len(est)).numpy().astype(np.float32)


def _ranges(text: str) -> list[tuple[float, float]]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out.append((float(lo), float(hi)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LO-HI in Hz, got {part!r}") from None
        if not 0 <= out[-1][0] < out[-1][1]:
            raise argparse.ArgumentTypeError(f"expected LO-HI with 0 <= LO < HI, got {part!r}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder or manifest.tsv, as `rvqcodec eval` takes it")
    p.add_argument("models", nargs="+", help="built-in names, .safetensors files, run folders or checkpoints; 'opus'")
    p.add_argument("--kbps", type=float, default=12.0)
    p.add_argument("--category", choices=("speech", "music", "general"), default="speech")
    p.add_argument("--phase-oracle", type=_ranges, default=[], metavar="LO-HI,...")
    p.add_argument("--json", type=Path, default=Path("reports/mel_split.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    clips = [c for c in list_clips(args.input) if c.category == args.category]
    if not clips:
        raise CodecError(f"no {args.category} clips in {args.input}")
    models = {spec: None if spec == "opus" else load_any(spec) for spec in args.models}
    if any(m is None for m in models.values()):
        opus.require_tools()
    rates = {m.sample_rate for m in models.values() if m is not None} or {load().sample_rate}
    if len(rates) > 1:
        raise CodecError(f"the models run at different sample rates: {sorted(rates)}")
    rate = rates.pop()
    if any(hi > rate / 2 for _, hi in args.phase_oracle):
        raise CodecError(f"--phase-oracle ranges must end by {rate / 2:g} Hz")
    names = [f"{lo:g}-{hi:g} Hz" for lo, hi in zip(RANGES_HZ, (*RANGES_HZ[1:], rate / 2))]
    level_names = [f"under {LEVELS_DB[0]:g} dB", *(f"{lo:g} to {hi:g} dB" for lo, hi in zip(LEVELS_DB, LEVELS_DB[1:])),
                   f"{LEVELS_DB[-1]:g} dB and up"]
    rows, level_rows, oracle_rows, results = [], [], [], {}
    for spec, model in models.items():
        windows, ranges, levels, times, oracles = [], [], [], [], {r: [] for r in args.phase_oracle}
        for clip in clips:
            audio, clip_rate = read_audio(clip.path)
            ref = audio.mean(axis=0).astype(np.float32)
            if clip_rate != rate:
                ref = soxr.resample(ref, clip_rate, rate).astype(np.float32)
            est = opus_audio(ref, args.kbps, rate, "PCM_24") if model is None else round_trip(model, ref, args.kbps, aligned=True)
            terms = list(_terms(ref, est, rate))  # (the mel spectra once for both splits)
            w, r = split(ref, est, rate, computed=terms)
            windows.append(w)
            ranges.append(r)
            by_level, time = split_by_level(ref, est, rate, computed=terms)
            levels.append(by_level)
            times.append(time)
            for lo, hi in args.phase_oracle if model is not None else ():
                z = with_original_phase(ref, est, rate, lo, hi)
                score = pesq_wb(ref, z, rate) if args.category == "speech" else None
                oracles[lo, hi].append((mel_distance(ref, z, rate), score))
        w, r, lv = np.mean(windows, axis=0), np.mean(ranges, axis=0), np.mean(levels, axis=0)
        rows.append([spec, f"{w.sum():.3f}", *(f"{v:.3f}" for v in r), *(f"{v:.3f}" for v in w)])
        level_rows.append([spec, f"{w.sum():.3f}", *(f"{v:.3f}" for v in lv)])
        results[spec] = {"mel_distance": float(w.sum()), "by_range": dict(zip(names, r.tolist())),
                         "by_level": dict(zip(level_names, lv.tolist())),
                         "by_window": dict(zip(map(str, _mel_loss(rate).windows), w.tolist())),
                         "phase_oracle": {f"{lo:g}-{hi:g}": {"mel_distance": float(np.mean([s[0] for s in v])),
                                                            "pesq_wb": _mean([s[1] for s in v])}
                                          for (lo, hi), v in oracles.items() if v}}
        for band, scores in results[spec]["phase_oracle"].items():
            pesq = "-" if scores["pesq_wb"] is None else f"{scores['pesq_wb']:.3f}"
            oracle_rows.append([spec, band, f"{scores['mel_distance']:.3f}", pesq])
    print(f"\n{len(clips)} {args.category} clips of {args.input}, {args.kbps:g} kbps: mel distance and its parts")
    print_table(["model", "mel distance", *names, *(f"window {w}" for w in _mel_loss(rate).windows)], rows)
    print(f"\nby the original's level around each frame of the metric (mean square over {LEVEL_SECONDS * 1000:g} ms, "
          f"dB re full scale); its share of the time: "
          + ", ".join(f"{n} {t:.0%}" for n, t in zip(level_names, np.mean(times, axis=0))))
    print_table(["model", "mel distance", *level_names], level_rows)
    if oracle_rows:
        print("\nwith the original's phase in a range (512-point STFT, hop 128; an oracle)")
        print_table(["model", "range (Hz)", "mel distance", "PESQ-WB"], oracle_rows)
    write_json(args.json, {"input": str(args.input), "kbps": args.kbps, "category": args.category, "sample_rate": rate,
                           "phase_oracle": [list(r) for r in args.phase_oracle], "clips": [c.name for c in clips],
                           "time_by_level": dict(zip(level_names, np.mean(times, axis=0).tolist())),
                           "results": results})


def _mean(scores: list[float | None]) -> float | None:
    """The mean of the scores PESQ could give (NaN where it cannot score a clip); None for none."""
    found = [v for v in scores if v is not None and np.isfinite(v)]
    return float(np.mean(found)) if found else None


if __name__ == "__main__":
    try:
        main()
    except CodecError as exc:  # a model, clip or bitrate that is not there: one line
        sys.exit(f"mel_split: {exc}")
