"""Quick quality check of models on the training corpus's own validation split: the
speakers and tracks a run never trains on, so that trials can be compared (and a run's
checkpoints followed) without touching the development set.

    python benchmarks/heldout.py ~/.cache/rvqcodec/corpus24k rvq24k runs/mine runs/mine/step_2000 \\
        [--kbps 6] [--clips 24] [--per-group 1] [--seconds 6] [--category speech] [--postfilter S] \\
        [--envelope-floor F] \\
        [--lowband 0,0,0,6,8] [--aligned] [--json PATH]

A model is a built-in name, a ``.safetensors`` file, a run folder (its newest checkpoint)
or one ``step_N`` checkpoint; checkpoints are scored as ``rvqcodec export`` would write them
(EMA copy, int8 rows). Excerpts are the validation split's (``train.data.validation_clips``,
round-robin over the categories, the middle of each file). Per category it prints the mean
mel distance and SI-SDR, on speech wideband PESQ, STOI and ViSQOL (speech mode), and on
music ViSQOL (audio mode) where ``visqol-python`` is installed; ``--category`` scores only
that category's excerpts (the same ones it would score without it). ``--postfilter`` scores
every model with that pitch-postfilter strength instead of its own, ``--envelope-floor`` with
that ``envelope_floor`` (codec/envelope.py), ``--lowband`` with those
``lowband_levels`` (one per bandwidth, codec/lowband.py; ``none`` for no low band).
``--aligned`` drops each model's output delay as decoding a file does (without it the decoded
audio trails by it, which lowers STOI and the mel distance's short windows). Writes
JSON (default ``reports/heldout.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from common import print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec import load, opus  # noqa: E402
from codec.errors import CodecError  # noqa: E402
from codec.metrics import METRICS, mean_scores, score_clip  # noqa: E402
from codec.model import Codec  # noqa: E402
from train.config import DataConfig  # noqa: E402
from train.data import ValidationClip, validation_clips  # noqa: E402
from train.export import run_model  # noqa: E402


def load_any(spec: str, postfilter: float | None = None, lowband: tuple[int, ...] | None = None,
             envelope_floor: float | None = None) -> Codec:
    """A built-in name or ``.safetensors`` path, else a run folder / checkpoint; with
    ``postfilter``, ``envelope_floor`` or ``lowband``, rebuilt with that postfilter strength,
    that envelope-matching floor or those ``lowband_levels``."""
    path = Path(spec).expanduser()
    model = run_model(path)[0] if path.is_dir() else load(spec)
    changes = {k: v for k, v in (("postfilter", postfilter), ("envelope_floor", envelope_floor)) if v is not None}
    if envelope_floor is not None and not model.cfg.envelope_match:
        raise CodecError(f"{spec}: --envelope-floor needs a model with envelope matching (envelope_match > 0)")
    if changes:
        try:
            rebuilt = Codec(dataclasses.replace(model.cfg, **changes))
        except ValueError as exc:  # a strength or floor out of range
            raise CodecError(f"{spec}: {exc}") from None
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    if lowband is not None:
        try:
            model.set_lowband(lowband)
        except ValueError as exc:  # a low band that this model cannot take
            raise CodecError(f"{spec}: {exc}") from None
    return model.eval()


def _levels(text: str) -> tuple[int, ...]:
    return () if text == "none" else tuple(int(v) for v in text.split(","))


def of_category(clips: list[ValidationClip], category: str | None) -> list[ValidationClip]:
    """The excerpts of ``category`` (None: all), in their order."""
    return [c for c in clips if category in (None, c.category)]


def opus_round_trip(clip: ValidationClip, kbps: float, rate: int) -> np.ndarray:
    """``clip`` through Opus at ``kbps`` (codec/opus.py, as ``rvqcodec eval`` codes it)."""
    return opus_audio(clip.audio, kbps, rate)


def opus_audio(audio: np.ndarray, kbps: float, rate: int, subtype: str = "PCM_16") -> np.ndarray:
    """Mono ``audio`` ``[T]`` through Opus at ``kbps``, written for opusenc as ``subtype``, back
    at its length ``[T]``."""
    with tempfile.TemporaryDirectory() as work:
        wav = Path(work) / "clip.wav"
        sf.write(wav, audio, rate, subtype=subtype)
        result = opus.code(wav, Path(work), kbps, rate, 1, len(audio) / rate)
        y, _ = sf.read(result.output, dtype="float32")
    return np.pad(y, (0, max(0, len(audio) - len(y))))[: len(audio)]


@torch.no_grad()
def round_trip(model: Codec, audio: np.ndarray, kbps: float, aligned: bool = False) -> np.ndarray:
    """``audio`` ``[T]`` coded and decoded offline at ``kbps`` -> ``[T]``; ``aligned``: as a
    file decodes it, the model's output delay dropped (the encoder codes that much silence past
    the end, the decoder drops as much at the start), else as the decoder makes it."""
    delay = model.cfg.output_delay if aligned else 0
    x = torch.nn.functional.pad(torch.from_numpy(audio)[None, None], (0, delay))
    return model.decode(model.encode(x, kbps=kbps))[0, 0, delay : delay + len(audio)].numpy()


@torch.no_grad()
def score(model: Codec | None, clips: list[ValidationClip], kbps: float, rate: int,
          aligned: bool = False) -> dict[str, dict[str, float]]:
    """Mean of every metric per category: ``{category: {metric: value}}`` (a metric no
    excerpt could score is absent). ViSQOL only on speech and music: it is the slowest metric.
    ``model`` None: Opus at ``kbps``; ``aligned``: see :func:`round_trip`."""
    rows: dict[str, list[dict[str, float | None]]] = {}
    for clip in clips:
        if model is None:
            y = opus_round_trip(clip, kbps, rate)
        else:
            y = round_trip(model, clip.audio, kbps, aligned)
        names = tuple(m for m in METRICS if clip.category in ("speech", "music") or m != "visqol")
        rows.setdefault(clip.category, []).append(score_clip(clip.audio, y, rate, clip.category, names))
    return {cat: mean_scores(scored) for cat, scored in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cache", type=Path, help="the corpus cache a run trains on (train/prepare.py)")
    p.add_argument("models", nargs="+", help="built-in names, .safetensors files, run folders or checkpoints; "
                                             "'opus': Opus at the same bitrate (opus-tools)")
    p.add_argument("--kbps", type=float, default=6.0)
    p.add_argument("--clips", type=int, default=24, help="excerpts, round-robin over the categories")
    p.add_argument("--per-group", type=int, default=1, help="files per speaker / track (the split has few speakers)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each excerpt")
    p.add_argument("--category", choices=("speech", "music", "general"), default=None,
                   help="score only this category's excerpts (chosen as without it)")
    p.add_argument("--postfilter", type=float, default=None, help="pitch-postfilter strength for every model")
    p.add_argument("--envelope-floor", type=float, default=None,
                   help="envelope_floor for every model (codec/envelope.py; 1: log-mel values, as v21)")
    p.add_argument("--lowband", type=_levels, default=None, metavar="L1,L2,...",
                   help="lowband_levels for every model, one per bandwidth ('none': no low band)")
    p.add_argument("--aligned", action="store_true",
                   help="drop each model's output delay, as files decode (Opus's output is lined up anyway)")
    p.add_argument("--json", type=Path, default=Path("reports/heldout.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if not (args.cache.expanduser() / "index.tsv").is_file():
        raise CodecError(f"{args.cache} is not a prepared corpus cache (python -m train.prepare makes one)")
    first_spec = next((m for m in args.models if m != "opus"), "rvq24k")  # also sets the rate for Opus
    first = load_any(first_spec, args.postfilter, args.lowband, args.envelope_floor)
    data = dataclasses.replace(DataConfig(), val_clips=args.clips, val_seconds=args.seconds)
    clips = of_category(validation_clips(args.cache.expanduser(), data, first.sample_rate, first.hop_length,
                                         args.per_group), args.category)
    counts = {c: sum(k.category == c for k in clips) for c in sorted({k.category for k in clips})}
    print(f"{len(clips)} held-out excerpts of {args.seconds:g} s ({counts}), {args.kbps:g} kbps")
    results, rows = {}, []
    for spec in args.models:
        if spec == "opus":
            opus.require_tools()
            results[spec] = score(None, clips, args.kbps, first.sample_rate)
        else:
            model = first if spec == first_spec else load_any(spec, args.postfilter, args.lowband, args.envelope_floor)
            results[spec] = score(model, clips, args.kbps, model.sample_rate, args.aligned)
        speech = results[spec].get("speech", {})
        music = results[spec].get("music", {})
        rows.append([spec, *(f"{speech.get(k, float('nan')):.3f}" for k in ("pesq_wb", "stoi", "visqol", "mel_distance")),
                     *(f"{music.get(k, float('nan')):.3f}" for k in ("visqol", "mel_distance")),
                     f"{results[spec].get('general', {}).get('mel_distance', float('nan')):.3f}"])
    print_table(["model", "speech PESQ", "speech STOI", "speech ViSQOL", "speech mel", "music ViSQOL", "music mel",
                 "general mel"], rows)
    write_json(args.json, {"kbps": args.kbps, "aligned": args.aligned, "postfilter": args.postfilter, "envelope_floor": args.envelope_floor, "lowband": args.lowband, "clips": [c.name for c in clips], "results": results})


if __name__ == "__main__":
    try:
        main()
    except CodecError as e:  # a model or cache that is not there, a low band it cannot take: one line
        sys.exit(f"heldout: {e}")
