"""Training speed of a recipe: steps/s and audio-seconds/s, fp32 against bf16 autocast.

    python benchmarks/train_speed.py                       # seanet24k (the SEANet recipe) on this CPU, 2 threads
    python benchmarks/train_speed.py --device cuda         # on a GPU
    python benchmarks/train_speed.py --steps 3 --warmup 1  # a quick check that it runs

Two phases per precision: ``reconstruction`` (the warm-up: mel + STFT + VQ losses) and
``adversarial`` (discriminator update + adversarial and feature-matching losses as well).
Batches are drawn before timing, so the numbers are the optimisation step alone (the data
loader runs in its own processes during training). A recipe with a code cache
(``data.code_crops``) trains on the codes of 16 crops encoded first (a step's cost does not
depend on how many). Prints a Markdown table and writes JSON (default
``reports/train_speed.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_json  # noqa: E402
from train.codes import ensure_code_cache  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.distributed import Context  # noqa: E402
from train.prepare import build_cache  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def synthetic_cache(root: Path, sample_rate: int, files: int = 4, seconds: float = 6.0) -> Path:
    """Chirps plus noise: the model's speed does not depend on what it hears."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for i in range(files):
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i + 300 * t) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(root / "audio" / f"{i}.wav"), x.astype(np.float32), sample_rate)
    build_cache(root / "audio", root / "cache", sample_rate, workers=1)
    return root / "cache"


def measure(cfg: TrainConfig, cache: Path, run_dir: Path, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per optimisation step, after ``warmup`` untimed steps."""
    trainer = Trainer(cfg, cache, run_dir, Context(device=device))
    if cfg.freeze_encoder:  # a decoder alone learns from trained codes: the built-in model's
        trainer.init_from("rvq24k")
    if cfg.data.code_crops:
        few = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, code_crops=16))
        trainer.use_codes(ensure_code_cache(trainer.gen, few, cache, run_dir / "codes", log=lambda message: None))
    batches = [trainer.data.batch(s) for s in range(warmup + steps)]
    for batch in batches[:warmup]:
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def variant(cfg: TrainConfig, bf16: bool, phase: str) -> TrainConfig:
    start = 0 if phase == "adversarial" else 10**9
    data = dataclasses.replace(cfg.data, val_fraction=0.0)
    return dataclasses.replace(
        cfg, data=data, optim=dataclasses.replace(cfg.optim, bf16=bf16),
        loss=dataclasses.replace(cfg.loss, adversarial_start_step=start),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "seanet24k.yaml")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--phase", choices=["reconstruction", "adversarial", "both"], default="both")
    ap.add_argument("--json", type=Path, default=Path("reports/train_speed.json"))
    a = ap.parse_args(argv)
    cfg = TrainConfig.from_yaml(a.config)
    cfg = dataclasses.replace(cfg, threads=a.threads if a.device == "cpu" else cfg.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no GPU is available")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} threads"
    precisions = ["fp32", "bf16"] if a.precision == "both" else [a.precision]
    phases = ["reconstruction", "adversarial"] if a.phase == "both" else [a.phase]
    audio_per_step = cfg.data.batch_size * cfg.segment / cfg.model.sample_rate
    print(f"{a.config.stem}: batch {cfg.data.batch_size} x {cfg.segment / cfg.model.sample_rate:.2f} s, {name}")
    print("| device | precision | phase | s/step | steps/s | audio-s/s |")
    print("|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = synthetic_cache(Path(tmp), cfg.model.sample_rate)
        for precision in precisions:
            for phase in phases:
                seconds = measure(variant(cfg, precision == "bf16", phase), cache, Path(tmp) / "run",
                                  device, a.steps, a.warmup)
                print(f"| {device.type} | {precision} | {phase} | {seconds:.3f} | {1 / seconds:.2f} | "
                      f"{audio_per_step / seconds:.2f} |", flush=True)
                rows.append({"precision": precision, "phase": phase, "seconds_per_step": seconds,
                             "audio_seconds_per_s": audio_per_step / seconds})
    write_json(a.json, {"config": a.config.stem, "device": name, "batch": cfg.data.batch_size,
                        "segment_seconds": cfg.segment / cfg.model.sample_rate, "code_crops": cfg.data.code_crops, "rows": rows})


if __name__ == "__main__":
    main()
