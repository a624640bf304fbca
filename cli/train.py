"""``rvqcodec train`` and ``rvqcodec export``: parse, call :mod:`train`, report.

Multi-GPU / multi-node runs use PyTorch's launcher with the same options:
``torchrun --nproc_per_node N -m train --config ... --data ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from train.prepare import DataWarning

from .errors import fail, one_line_warnings, user_errors


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("export")(export)


def train(
    config: Annotated[Path, typer.Option("--config", help="Training recipe, e.g. configs/general24k.yaml.")],
    data: Annotated[Path, typer.Option("--data", help="Folder of audio (searched recursively), a manifest.tsv, or a prepared cache.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<config name>).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop at this step (default: the config's max_steps).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's newest checkpoint (a run folder that has checkpoints needs it).")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from release weights: a built-in model name or a .safetensors file.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder for the decoded corpus (default <run folder>/cache); reused when present.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when available).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a codec on your own audio.

    Several GPUs or machines: the same options through PyTorch's launcher,
    torchrun --nproc_per_node N -m train --config ... --data ...
    """
    from train.loop import train as run_training  # the losses (auraloss, librosa) load only to train

    if device not in (None, "cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}", 1)
    with user_errors(), one_line_warnings(DataWarning):  # (a skipped file is never silenced)
        result = run_training(config, data, out, max_steps, resume, init, cache, device, progress=not quiet)
    if not result.main:
        return
    if result.checkpoint is None:
        typer.echo(f"nothing to do: {result.run_dir} is already at step {result.step}", err=True)
    else:
        how = "stopped" if result.stopped else "done"
        typer.echo(f"{how} at step {result.step}: {result.checkpoint}", err=True)
    if result.stopped:  # (saved and resumable, but not done: `train ... && export ...` stops here)
        raise typer.Exit(128 + result.signal)


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (its newest checkpoint) or one step_N checkpoint.")],
    output: Annotated[Path, typer.Argument(help="The release .safetensors file to write.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name written into .rvq headers.")] = None,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Export the raw generator even if the run kept an EMA copy.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")] = False,
    no_int8: Annotated[bool, typer.Option("--no-int8", help="Keep the deepest layers' weights as trained, not rounded to "
                                                           "int8 rows for the live-frame runtime.")] = False,
) -> None:
    """Write a release model (weights + config, no optimiser state) for --model."""
    from train.export import export_run

    if output.exists() and not force:
        fail(f"output exists: {output} (use --force to overwrite)", 1)
    with user_errors():
        path = export_run(run_dir, output, name=name, use_ema=not no_ema, int8=not no_int8)
    typer.echo(f"{path}: written")

