"""Which part of a model's output limits its scores: decoded held-out speech with one part of
its short-time spectrum replaced by the original's, scored again.

    python benchmarks/oracle.py ~/.cache/rvqcodec/corpus24k [rvq24k] [--kbps 6] [--clips 40] \\
        [--per-group 4] [--json reports/oracle.json]

Parts (a 512-point STFT, hop 128, of the decoded audio and of the original):
    phase          the original's phase under the decoded magnitude
    magnitude      the original's magnitude under the decoded phase
    mag <1 kHz, mag 1-4 kHz, mag >4 kHz   the original's magnitude in that band only
    envelope       the original's spectral envelope (cepstrum, first 30 quefrencies: about
                   800 Hz of smoothing) times the decoded fine structure
    fine structure the decoded envelope times the original's fine structure
    magnitude, phase retrieved   the original's magnitude, its phase found by Griffin-Lim
                   from random phases (100 iterations): what a decoder that got every
                   magnitude right but made up its own consistent phase would score
    decoded, phase retrieved     the same from the decoded magnitude: whether a phase
                   consistent with the decoded magnitudes would score higher than the decoder's
A part whose replacement lifts a score a lot is where the model loses it. It also prints
the decoded audio's band power against the original's (over frames within 30 dB of the
clip's loudest), and with ``--boost LO-HI:DB`` (repeatable) scores the decoded audio with
that fixed gain in that band (Hz), the same for every clip: whether a fixed equaliser would
make up a band's missing power. The excerpts are ``benchmarks/heldout.py``'s speech excerpts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common import print_table, write_json
from heldout import load_any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec.errors import CodecError  # noqa: E402
from codec.metrics import score_clip  # noqa: E402
from train.config import DataConfig  # noqa: E402
from train.data import validation_clips  # noqa: E402

N_FFT, HOP, QUEFRENCIES = 512, 128, 30
PARTS = ("decoded", "phase", "magnitude", "mag <1 kHz", "mag 1-4 kHz", "mag >4 kHz", "envelope", "fine structure",
         "magnitude, phase retrieved", "decoded, phase retrieved")
GRIFFIN_LIM_ITERATIONS = 100
BAND_PARTS = {"mag <1 kHz": (0, 1000), "mag 1-4 kHz": (1000, 4000), "mag >4 kHz": (4000, 10**6)}
BANDS = ((0, 500), (500, 1000), (1000, 2000), (2000, 4000), (4000, 8000), (8000, 12000))
METRIC_NAMES = ("pesq_wb", "stoi", "visqol", "mel_distance")


def _stft(a: np.ndarray) -> Tensor:
    return torch.stft(torch.from_numpy(a).float(), N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)


def _istft(spec: Tensor, length: int) -> np.ndarray:
    out = torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT), length=length)
    return out.numpy().astype(np.float32)


def _envelope(mag: Tensor) -> Tensor:
    """The smooth part of ``mag [F, T]``: its log, liftered to the first quefrencies."""
    cep = torch.fft.irfft(torch.log(mag + 1e-7), dim=0)
    cep[QUEFRENCIES:-QUEFRENCIES] = 0
    return torch.exp(torch.fft.rfft(cep, n=mag.shape[0] * 2 - 2, dim=0).real)


def griffin_lim(mag: Tensor, length: int, iterations: int = GRIFFIN_LIM_ITERATIONS, seed: int = 0) -> np.ndarray:
    """Audio ``[length]`` whose STFT magnitude is near ``mag [F, T]``: Griffin-Lim's
    alternating projections from random phases (seeded: the same audio every run)."""
    g = torch.Generator().manual_seed(seed)
    spec = torch.polar(mag, 2 * np.pi * torch.rand(mag.shape, generator=g))
    for _ in range(iterations):
        spec = torch.polar(mag, _stft(_istft(spec, length)).angle())
    return _istft(spec, length)


def with_original_part(x: np.ndarray, y: np.ndarray, part: str, sample_rate: int) -> np.ndarray:
    """``y [T]`` (decoded) with ``part`` (one of PARTS) of its spectrum taken from ``x [T]``."""
    if part == "decoded":
        return y
    if part == "magnitude, phase retrieved":
        return griffin_lim(_stft(x).abs(), len(y))
    if part == "decoded, phase retrieved":
        return griffin_lim(_stft(y).abs(), len(y))
    X, Y = _stft(x), _stft(y)
    xm, ym, yphase = X.abs(), Y.abs(), torch.exp(1j * Y.angle())
    freqs = torch.arange(xm.shape[0])[:, None] * sample_rate / N_FFT
    if part == "phase":
        spec = ym * torch.exp(1j * X.angle())
    elif part == "magnitude":
        spec = xm * yphase
    elif part in BAND_PARTS:
        lo, hi = BAND_PARTS[part]
        spec = torch.where((freqs >= lo) & (freqs < hi), xm, ym) * yphase
    elif part == "envelope":
        spec = _envelope(xm) * ym / _envelope(ym) * yphase
    elif part == "fine structure":
        spec = _envelope(ym) * xm / _envelope(xm) * yphase
    else:
        raise ValueError(f"unknown part {part!r}; known: {PARTS}")
    return _istft(spec, len(y))


def boosted(y: np.ndarray, bands: list[tuple[float, float, float]], sample_rate: int) -> np.ndarray:
    """``y [T]`` with a fixed gain of ``db`` in each ``(lo, hi, db)`` band (Hz)."""
    Y = _stft(y)
    freqs = torch.arange(Y.shape[0]) * sample_rate / N_FFT
    gain = torch.ones_like(freqs)
    for lo, hi, db in bands:
        gain[(freqs >= lo) & (freqs < hi)] = 10 ** (db / 20)
    return _istft(Y * gain[:, None], len(y))


def _band_gain(text: str) -> tuple[float, float, float]:
    """``LO-HI:DB`` -> (lo, hi, db)."""
    try:
        band, db = text.split(":")
        lo, hi = band.split("-")
        return float(lo), float(hi), float(db)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI:DB (Hz, dB), e.g. 4000-8000:4, got {text!r}") from None


def band_power_db(x: np.ndarray, y: np.ndarray, sample_rate: int) -> list[float]:
    """Power of ``y`` against ``x`` in each of BANDS (dB), over the frames of ``x`` within
    30 dB of its loudest."""
    xp, yp = _stft(x).abs().pow(2), _stft(y).abs().pow(2)
    energy = xp.sum(0)
    active = energy > energy.max() * 1e-3
    freqs = torch.arange(xp.shape[0]) * sample_rate / N_FFT
    out = []
    for lo, hi in BANDS:
        rows = (freqs >= lo) & (freqs < hi)
        ratio = (yp[rows][:, active].mean() + 1e-12) / (xp[rows][:, active].mean() + 1e-12)
        out.append(float(10 * torch.log10(ratio)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cache", type=Path, help="the corpus cache a run trains on (train/prepare.py)")
    p.add_argument("model", nargs="?", default="rvq24k", help="built-in name, .safetensors file, run folder or checkpoint")
    p.add_argument("--kbps", type=float, default=6.0)
    p.add_argument("--clips", type=int, default=40, help="excerpts of all categories, as heldout.py draws them")
    p.add_argument("--per-group", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--boost", type=_band_gain, action="append", default=[], metavar="LO-HI:DB",
                   help="also score the decoded audio with this fixed band gain (repeatable: one equaliser)")
    p.add_argument("--json", type=Path, default=Path("reports/oracle.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if not (args.cache.expanduser() / "index.tsv").is_file():
        raise CodecError(f"{args.cache} is not a prepared corpus cache (python -m train.prepare makes one)")
    model = load_any(args.model)
    data = dataclasses.replace(DataConfig(), val_clips=args.clips, val_seconds=args.seconds)
    clips = [c for c in validation_clips(args.cache.expanduser(), data, model.sample_rate, model.hop_length, args.per_group)
             if c.category == "speech"]
    print(f"{len(clips)} held-out speech excerpts of {args.seconds:g} s, {args.model} at {args.kbps:g} kbps")
    parts = (*PARTS, "boosted") if args.boost else PARTS
    scores: dict[str, list[dict[str, float | None]]] = {part: [] for part in parts}
    powers = []
    with torch.no_grad():
        for clip in clips:
            x = torch.from_numpy(clip.audio)[None, None]
            y = model.decode(model.encode(x, kbps=args.kbps), length=x.shape[-1])[0, 0].numpy()
            powers.append(band_power_db(clip.audio, y, model.sample_rate))
            for part in parts:
                if part == "boosted":
                    z = boosted(y, args.boost, model.sample_rate)
                else:
                    z = with_original_part(clip.audio, y, part, model.sample_rate)
                scores[part].append(score_clip(clip.audio, z, model.sample_rate, "speech", METRIC_NAMES))
    means = {part: {m: float(np.mean([r[m] for r in rows if r[m] is not None] or [np.nan])) for m in METRIC_NAMES}
             for part, rows in scores.items()}
    print_table(["original's part", *METRIC_NAMES], [[part, *(f"{v[m]:.3f}" for m in METRIC_NAMES)] for part, v in means.items()])
    band_mean = np.mean(powers, axis=0)
    print_table(["band (Hz)", "decoded power (dB)"], [[f"{lo}-{hi}", f"{v:+.1f}"] for (lo, hi), v in zip(BANDS, band_mean)])
    write_json(args.json, {"model": args.model, "kbps": args.kbps, "boost": args.boost, "clips": [c.name for c in clips], "scores": means,
                           "band_power_db": {f"{lo}-{hi}": float(v) for (lo, hi), v in zip(BANDS, band_mean)}})


if __name__ == "__main__":
    try:
        main()
    except CodecError as e:
        sys.exit(f"oracle: {e}")
