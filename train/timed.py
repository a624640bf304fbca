"""Train for a wall-clock budget: one or more recipes side by side, each with a cosine
schedule that ends when the time does.

    python -m train.timed --config configs/logmel24k-gpu.yaml --config configs/logmel24k-gan.yaml \
        --data .gpu/data/manifest.tsv --init .gpu/init.safetensors --seconds 500 --out /tmp/timed

For a machine held for minutes (a lent GPU): a step count guessed in advance either runs
past the time, losing the run, or stops early with the rate still high. Here each recipe
first runs ``probe_steps`` steps, all recipes at once as in the real runs, to measure its
speed; then each trains again from ``init`` for as many steps as its speed fits into the
time left, with ``decay_steps`` = that count, and is exported to ``out/<recipe>.safetensors``.
The exact recipe of each run is written beside it (``out/<recipe>.yaml``: the input's
recipe as ``base``, the measured step count on top), so the run can be repeated.

Steps of the real runs = speed x (time left - ``startup_seconds``) x ``margin``. A run that
still reaches the time is stopped (SIGTERM: it checkpoints) and exported as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from codec.errors import CodecError
from codec.listing import DataError
from train.config import TrainConfig
from train.prepare import ensure_cache

EXPORT_SECONDS = 30.0  # kept back at the end for exports


@dataclass(frozen=True)
class Plan:
    """One recipe's run: its derived recipe file, steps and measured speed (steps/s)."""

    name: str
    recipe: Path
    steps: int
    speed: float


def read_recipe(source: Path) -> TrainConfig:
    """``source``'s config, refused unless its rate follows a cosine (whose length we set)."""
    cfg = TrainConfig.from_yaml(source)
    if cfg.optim.schedule != "cosine":
        raise DataError(f"{source}: a timed run needs `optim.schedule: cosine` (it sizes decay_steps to the time)")
    return cfg


def derived_recipe(source: Path, dest: Path, steps: int, log_every: int, checkpoint_every: int) -> Path:
    """``source`` as ``base`` with ``steps`` as the schedule's length and the run's end."""
    recipe = {
        "base": str(source.resolve()),
        "optim": {"decay_steps": steps},
        "max_steps": steps,
        "log_every": log_every,
        "checkpoint_every": checkpoint_every,
    }
    dest.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest


def launch(recipe: Path, cache: Path, run_dir: Path, steps: int, init: str | None, device: str | None,
           seconds: float, log: Path) -> subprocess.Popen:
    """``python -m train`` in a child process, stopped by SIGTERM after ``seconds``."""
    cmd = [sys.executable, "-m", "train", "--config", str(recipe), "--data", str(cache), "--out", str(run_dir),
           "--max-steps", str(steps), "-q"]
    cmd += ["--init", init] if init else []
    cmd += ["--device", device] if device else []
    with open(log, "w") as f:  # the child writes through its own copy of the descriptor
        return subprocess.Popen(["timeout", "-s", "TERM", f"{max(seconds, 1.0):.0f}", *cmd],
                                stdout=f, stderr=subprocess.STDOUT)


def measured_speed(run_dir: Path) -> float:
    """Steps/s of the run's last logged interval (after start-up)."""
    lines = (run_dir / "log.jsonl").read_text().splitlines() if (run_dir / "log.jsonl").exists() else []
    speeds = [json.loads(line).get("speed/steps_per_s") for line in lines]
    speeds = [s for s in speeds if s]
    if not speeds:
        raise DataError(f"the probe in {run_dir} logged no speed (see {run_dir}.log)")
    return float(speeds[-1])


def run_timed(configs: list[Path], data: Path, out: Path, seconds: float, init: str | None = None,
              device: str | None = None, probe_steps: int = 60, startup_seconds: float = 25.0,
              margin: float = 0.9, workers: int | None = None, say=print) -> list[Plan]:
    """Probe, then train and export every recipe of ``configs`` within ``seconds`` of now."""
    t0 = time.monotonic()
    names = [c.stem for c in configs]
    if len(set(names)) != len(names):
        raise DataError("two recipes share a file name: their runs would share a folder")
    rates = {read_recipe(c).model.sample_rate for c in configs}  # refused before any decoding
    out.mkdir(parents=True, exist_ok=True)
    if len(rates) != 1:
        raise DataError("the recipes have different sample rates")
    cache = ensure_cache(data, out / "cache", rates.pop(), workers or os.cpu_count() or 2)
    say(f"[{time.monotonic() - t0:.0f} s] corpus ready: {cache}")

    log_every = max(1, probe_steps // 3)
    probes = {}
    for config, name in zip(configs, names):
        recipe = derived_recipe(config, out / f"probe-{name}.yaml", probe_steps, log_every, 10**9)
        probes[name] = launch(recipe, cache, out / f"probe-{name}", probe_steps, init, device,
                              seconds - (time.monotonic() - t0), out / f"probe-{name}.log")
    for proc in probes.values():
        proc.wait()
    speeds = {name: measured_speed(out / f"probe-{name}") for name in names}

    left = seconds - (time.monotonic() - t0) - EXPORT_SECONDS
    plans, procs = [], {}
    for config, name in zip(configs, names):
        steps = int(speeds[name] * (left - startup_seconds) * margin)
        if steps < 1:
            raise DataError(f"no time left to train {name} ({left:.0f} s after the probes)")
        recipe = derived_recipe(config, out / f"{name}.yaml", steps, max(1, min(100, steps // 10)), 10**9)
        plans.append(Plan(name, recipe, steps, speeds[name]))
        procs[name] = launch(recipe, cache, out / name, steps, init, device, left, out / f"{name}.log")
        say(f"[{time.monotonic() - t0:.0f} s] {name}: {speeds[name]:.2f} steps/s, {steps} steps")
    for proc in procs.values():
        proc.wait()

    from train.export import export_run  # the losses' imports, only once training is done

    for plan in plans:
        try:
            path = export_run(out / plan.name, out / f"{plan.name}.safetensors")
            say(f"[{time.monotonic() - t0:.0f} s] {plan.name}: exported {path}")
        except CodecError as e:  # a run stopped before its first step: the others still count
            say(f"[{time.monotonic() - t0:.0f} s] {plan.name}: not exported ({e}; see {out / plan.name}.log)")
    return plans


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, action="append", required=True, help="recipe (repeat to run several at once)")
    ap.add_argument("--data", type=Path, required=True, help="corpus folder, manifest.tsv or prepared cache")
    ap.add_argument("--out", type=Path, required=True, help="folder for the cache, runs, recipes and exports")
    ap.add_argument("--seconds", type=float, required=True, help="wall-clock budget, exports included")
    ap.add_argument("--init", default=None, help="release weights to start every run from (name or .safetensors)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--startup-seconds", type=float, default=25.0, help="a run's start-up before its first step")
    a = ap.parse_args(argv)
    try:
        run_timed(a.config, a.data, a.out, a.seconds, a.init, a.device, a.probe_steps, a.startup_seconds,
                  say=lambda m: print(m, file=sys.stderr, flush=True))
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
