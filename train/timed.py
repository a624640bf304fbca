"""Train for a wall-clock budget: one or more recipes, each with a cosine schedule that ends
when its time does.

    python -m train.timed --config configs/logmel24k-gpu.yaml --config configs/logmel24k-gan.yaml \
        --chain --data .gpu/data/manifest.tsv --init .gpu/init.safetensors --seconds 500 --out /tmp/timed

For a machine held for minutes (a lent GPU): a step count guessed in advance either runs
past the time, losing the run, or stops early with the rate still high. Here each recipe
first runs ``probe_steps`` steps to measure its speed (with discriminators, heard from its
first step: :func:`derived_recipe`); then it trains again from ``init``
for as many steps as its speed fits into its time, with ``decay_steps`` = that count, and
is exported to ``out/<recipe>.safetensors``. The exact recipe of each run is written beside
it (``out/<recipe>.yaml``: the input's recipe as ``base``, the measured step count on top),
so the run can be repeated. Run folders that an earlier call with the same ``--out`` left
are replaced.

On a GPU the recipes take turns, each for an equal share of the time (two processes on one
GPU time-slice it: on an H200, two recipes side by side did 2.9 and 2.7 steps/s, one alone
12.4); ``--chain`` starts each from the previous one's export. On a CPU they run side by
side (probes too, so that each speed is measured under the same load) and share the time.

Steps of a run = speed x (its time left - ``startup_seconds``) x ``margin`` (:class:`Pacing`). A run that
still reaches its time is stopped (SIGTERM: it checkpoints) and exported as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


LAST_ONLY = 10**9  # a checkpoint interval no run reaches: only the run's last step is saved


@dataclass(frozen=True)
class Pacing:
    """How a run's time is spent: ``probe_steps`` to measure its speed, ``startup_seconds``
    before a run's first step, ``margin`` of the steps that fit actually planned (runs slow
    down when other work shares the machine), ``export_seconds`` kept back for the exports,
    ``checkpoint_every`` steps between a run's checkpoints (the default writes only the last;
    the recipe's ``keep_checkpoints`` says how many stay). A probe's speed leaves out checkpoints
    (it writes only its last, after its steps), so the time that checkpoints take is not
    planned for: each takes seconds, a short interval costs a run its last steps."""

    probe_steps: int = 60
    startup_seconds: float = 25.0
    margin: float = 0.9
    export_seconds: float = 30.0
    checkpoint_every: int = LAST_ONLY


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


def derived_recipe(source: Path, dest: Path, steps: int, log_every: int, checkpoint_every: int,
                   probe: bool = False) -> Path:
    """``source`` as ``base`` with ``steps`` as the schedule's length and the run's end.

    ``probe``: a recipe with discriminators has the generator hear them from its first step,
    so that the probe times the steps most of the run takes. Why: in their warm-up
    (``disc_warmup_steps``) a step is cheaper, and a probe inside it overestimated the speed
    (session 31, the GAN recipe on an H100: 2.59 steps/s probed, about 2.1 over the run,
    stopped at step 847 of the 954 planned). The warm-up's cheaper steps then leave a little of
    the time unused: the safe side."""
    recipe = {
        "base": str(source.resolve()),
        "optim": {"decay_steps": steps},
        "max_steps": steps,
        "log_every": log_every,
        "checkpoint_every": checkpoint_every,
    }
    if probe and read_recipe(source).loss.uses_discriminators:
        recipe["loss"] = {"adversarial_start_step": 0, "disc_warmup_steps": 0}
    dest.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest


def launch(recipe: Path, cache: Path, run_dir: Path, steps: int, init: str | None, device: str | None,
           seconds: float, log: Path) -> subprocess.Popen:
    """``python -m train`` in a child process, stopped by SIGTERM after ``seconds``. ``run_dir``
    is emptied first: a timed run starts afresh from ``init``, and a folder that an earlier
    call with the same ``--out`` left would be refused."""
    shutil.rmtree(run_dir, ignore_errors=True)
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
              device: str | None = None, pacing: Pacing = Pacing(), workers: int | None = None, say=print,
              one_at_a_time: bool | None = None, chain: bool = False) -> list[Plan]:
    """Probe, then train and export every recipe of ``configs`` within ``seconds`` of now.

    Side by side (the default on a CPU) all recipes share the whole time; ``one_at_a_time``
    (the default on a GPU, where two processes time-slice the device: on an H200 two recipes
    side by side did 2.9 and 2.7 steps/s, one alone 12.4) gives each recipe an equal share
    of the time left, in turn. ``chain`` starts each recipe from the previous one's export
    (e.g. reconstruction losses, then adversarial fine-tuning) instead of from ``init``.
    """
    t0 = time.monotonic()
    names = [c.stem for c in configs]
    if len(set(names)) != len(names):
        raise DataError("two recipes share a file name: their runs would share a folder")
    if clash := [n for n in names if n == "cache" or n.startswith("probe-")]:
        raise DataError(f"a recipe named {clash[0]}.yaml would train in a folder train.timed keeps for itself: rename it")
    if one_at_a_time is None:
        one_at_a_time = _on_gpu(device)
    if chain and not one_at_a_time:
        raise DataError("--chain trains the recipes in turn: it needs --one-at-a-time")
    rates = {read_recipe(c).model.sample_rate for c in configs}  # refused before any decoding
    out.mkdir(parents=True, exist_ok=True)
    if len(rates) != 1:
        raise DataError("the recipes have different sample rates")
    cache = ensure_cache(data, out / "cache", rates.pop(), workers or os.cpu_count() or 2)
    say(f"[{time.monotonic() - t0:.0f} s] corpus ready: {cache}")

    def clock() -> float:
        return time.monotonic() - t0

    groups = [[c] for c in configs] if one_at_a_time else [list(configs)]
    plans: list[Plan] = []
    start = init
    for i, group in enumerate(groups):
        budget = (seconds - clock()) / (len(groups) - i)
        say(f"[{clock():.0f} s] {', '.join(c.stem for c in group)}: {budget:.0f} s, from {start or 'scratch'}")
        done = _train_group(group, cache, out, clock() + budget, start, device, pacing, clock, say)
        plans += done
        if chain:
            exported = out / f"{done[0].name}.safetensors"
            if not exported.is_file():
                raise DataError(f"{done[0].name} was not exported: the chain stops there")
            start = str(exported)
    return plans


def _on_gpu(device: str | None) -> bool:
    if device is not None:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def _train_group(configs: list[Path], cache: Path, out: Path, deadline: float, init: str | None,
                 device: str | None, pacing: Pacing, clock, say) -> list[Plan]:
    """Probe ``configs`` side by side, then train and export them, all by ``deadline`` (on ``clock``)."""
    names = [c.stem for c in configs]
    probe_steps = pacing.probe_steps
    probes = {}
    for config, name in zip(configs, names):
        recipe = derived_recipe(config, out / f"probe-{name}.yaml", probe_steps, max(1, probe_steps // 3), LAST_ONLY,
                                probe=True)
        probes[name] = launch(recipe, cache, out / f"probe-{name}", probe_steps, init, device,
                              deadline - clock(), out / f"probe-{name}.log")
    for proc in probes.values():
        proc.wait()
    speeds = {name: measured_speed(out / f"probe-{name}") for name in names}

    left = deadline - clock() - pacing.export_seconds
    plans, procs = [], {}
    for config, name in zip(configs, names):
        steps = int(speeds[name] * (left - pacing.startup_seconds) * pacing.margin)
        if steps < 1:
            raise DataError(f"no time left to train {name} ({left:.0f} s after the probes)")
        recipe = derived_recipe(config, out / f"{name}.yaml", steps, max(1, min(100, steps // 10)),
                                pacing.checkpoint_every)
        plans.append(Plan(name, recipe, steps, speeds[name]))
        procs[name] = launch(recipe, cache, out / name, steps, init, device, left, out / f"{name}.log")
        say(f"[{clock():.0f} s] {name}: {speeds[name]:.2f} steps/s, {steps} steps")
    for proc in procs.values():
        proc.wait()

    from train.export import export_run  # the losses' imports, only once training is done

    for plan in plans:
        try:
            path = export_run(out / plan.name, out / f"{plan.name}.safetensors")
            say(f"[{clock():.0f} s] {plan.name}: exported {path}")
        except CodecError as e:  # a run stopped before its first step: the others still count
            say(f"[{clock():.0f} s] {plan.name}: not exported ({e}; see {out / plan.name}.log)")
    return plans


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, at least 1 (got {text!r})")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, action="append", required=True, help="recipe (repeat to run several at once)")
    ap.add_argument("--data", type=Path, required=True, help="corpus folder, manifest.tsv or prepared cache")
    ap.add_argument("--out", type=Path, required=True, help="folder for the cache, runs, recipes and exports")
    ap.add_argument("--seconds", type=float, required=True, help="wall-clock budget, exports included")
    ap.add_argument("--init", default=None, help="release weights to start from (name or .safetensors; with --chain, the first recipe's)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--probe-steps", type=int, default=Pacing.probe_steps)
    ap.add_argument("--startup-seconds", type=float, default=Pacing.startup_seconds,
                    help="a run's start-up before its first step")
    ap.add_argument("--checkpoint-every", type=_positive, default=Pacing.checkpoint_every,
                    help="steps between checkpoints, to score a long run part way (default: the last only)")
    turns = ap.add_mutually_exclusive_group()
    turns.add_argument("--one-at-a-time", dest="one_at_a_time", action="store_true", default=None,
                       help="train the recipes in turn, each for an equal share of the time (default on a GPU)")
    turns.add_argument("--side-by-side", dest="one_at_a_time", action="store_false",
                       help="train the recipes at once, sharing the whole time (default on a CPU)")
    ap.add_argument("--chain", action="store_true",
                    help="with --one-at-a-time: start each recipe from the previous one's export")
    a = ap.parse_args(argv)
    try:
        run_timed(a.config, a.data, a.out, a.seconds, a.init, a.device,
                  Pacing(probe_steps=a.probe_steps, startup_seconds=a.startup_seconds,
                         checkpoint_every=a.checkpoint_every),
                  say=lambda m: print(m, file=sys.stderr, flush=True), one_at_a_time=a.one_at_a_time, chain=a.chain)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
