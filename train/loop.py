"""The training loop: steps, logging, validation, checkpoints, a clean stop on SIGINT/SIGTERM,
and resume. :func:`train` is the whole command (config file and data path in, run folder
out); :func:`run` the loop itself, given a prepared cache."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from codec.endpoints import StopFlag, stop_on_signals
from codec.errors import CodecError
from codec.weights import locate

from . import distributed
from .checkpoint import list_checkpoints
from .codes import ensure_code_cache, wait_for_code_cache
from .config import TrainConfig
from .data import validation_clips
from .monitor import Monitor
from .prepare import ensure_cache
from .trainer import Trainer
from .validate import validate

PROGRESS_KEYS = ("total", "rec/mel", "speed/steps_per_s")


def refuse_earlier_run(run_dir: Path, resume: bool) -> None:
    """A run folder that holds checkpoints is continued only with ``resume`` (see :func:`run`)."""
    if not resume and (earlier := list_checkpoints(run_dir)):
        raise CodecError(f"{run_dir} holds an earlier run (up to {earlier[-1].name}): "
                         "continue it with --resume, or train into another --out")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    step: int
    checkpoint: Path | None  # written by this call (None: nothing to do, or not the main process)
    stopped: bool  # by a signal, before the last step
    main: bool = True  # the process that writes checkpoints and logs
    signal: int = 0  # the signal that stopped it (SIGINT when another process of the run was signalled)


def train(
    config: Path, data: Path, out: Path | None = None, max_steps: int | None = None, resume: bool = False,
    init: str | None = None, cache: Path | None = None, device: str | None = None, progress: bool = True,
) -> RunResult:
    """Train from a YAML config on a folder / manifest of audio (or a prepared cache).

    ``out`` defaults to ``runs/<config name>``; the decoded corpus goes to ``cache``
    (default ``out/cache``). Under ``torchrun`` every process calls this.
    """
    config = Path(config)
    cfg = TrainConfig.from_yaml(config)
    run_dir = Path(out) if out is not None else Path("runs") / config.stem
    refuse_earlier_run(run_dir, resume)  # before the corpus is decoded, not after
    if init and not (resume and list_checkpoints(run_dir)):  # (a resumed run ignores --init)
        locate(init)  # a mistyped name, too, before the corpus is decoded
    ctx = distributed.setup(device)
    finished = False
    try:
        cache_dir = ensure_cache(
            Path(data), Path(cache) if cache else run_dir / "cache", cfg.model.sample_rate,
            cfg.data.decode_workers, build=ctx.local_rank == 0,
        )
        result = run(cfg, cache_dir, run_dir, max_steps, resume, init=init, ctx=ctx, progress=progress)
        finished = True
        return result
    finally:
        distributed.teardown(finished)


def run(
    cfg: TrainConfig, cache: Path, run_dir: Path, max_steps: int | None = None, resume: bool = False, *,
    init: str | None = None, ctx: distributed.Context | None = None, progress: bool = True,
) -> RunResult:
    """Train until step ``max_steps`` (default ``cfg.max_steps``), counted from the run's start.

    A run folder that holds checkpoints is continued only with ``resume``: a new run there
    would lose its own checkpoints to the older, higher-numbered ones (only the newest are
    kept), and exports and resumes would take the old run's."""
    ctx = ctx or distributed.Context()
    run_dir = Path(run_dir)
    refuse_earlier_run(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, cache, run_dir, ctx)
    resumed = resume and trainer.resume()
    if init and not resumed:
        trainer.init_from(init)
    if ctx.is_main:
        (run_dir / "config.json").write_text(trainer.cfg.to_json())  # with what --init carried over
    last = max_steps if max_steps is not None else cfg.max_steps
    clips = validation_clips(cache, cfg.data, cfg.model.sample_rate, cfg.model.hop_length) if ctx.is_main else []
    monitor = Monitor(run_dir, trainer.step, last, enabled=ctx.is_main, progress=progress)
    monitor.message(f"resumed at step {trainer.step}" if resumed else f"training {run_dir} from step 0")
    if not clips:
        monitor.message("no validation clips (data.val_fraction selects no speaker or track): validation is off")
    audio_per_step = cfg.data.batch_size * ctx.world_size * cfg.segment / cfg.model.sample_rate
    saved_at, checkpoint, stopped, signum = (trainer.step if resumed else -1), None, False, 0
    try:
        if cfg.data.code_crops:  # the first process encodes, the others wait for it
            if ctx.is_main:
                ensure_code_cache(trainer.gen, cfg, cache, run_dir / "codes", monitor.message)
            else:
                wait_for_code_cache(trainer.gen, cfg, cache, run_dir / "codes")
            trainer.use_codes(run_dir / "codes")
        with stop_on_signals(StopFlag()) as stop:  # a second signal interrupts (KeyboardInterrupt)
            for batch in trainer.data.loader(trainer.step, last):
                log = trainer.train_step(batch)
                step = trainer.step
                if step % cfg.log_every == 0:
                    values = distributed.mean(log, ctx) | monitor.throughput(step, audio_per_step)
                    values = monitor.scalars(step, values)
                    monitor.advance(step, {k: values[k] for k in PROGRESS_KEYS if k in values})
                if step % cfg.validate_every == 0 and clips:
                    result = validate(trainer.release_model, clips, ctx.device)
                    monitor.scalars(step, result.metrics)
                    monitor.audio(step, result.audio, cfg.model.sample_rate)
                if step % cfg.checkpoint_every == 0:
                    checkpoint, saved_at = trainer.save(), step
                monitor.advance(step)
                if distributed.any_true(bool(stop), ctx):
                    stopped, signum = step < last, stop.signal or signal.SIGINT
                    monitor.message(f"stopping at step {step}")
                    break
            if trainer.step != saved_at:
                checkpoint = trainer.save()
    finally:
        monitor.close()
    return RunResult(run_dir, trainer.step, checkpoint, stopped, ctx.is_main, signum if stopped else 0)
