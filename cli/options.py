"""Option types shared by several commands, so that their names and help agree."""

from __future__ import annotations

from typing import Annotated, Optional

import torch
import typer

ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Built-in model name or path to a .safetensors file.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output file if it exists.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and warnings.")]
KbpsOpt = Annotated[float, typer.Option(help="Bitrate per channel (1.5, 3, 6, 12 or 24 for the default model).")]
FileThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads for the model (default: PyTorch's, one per core; 1 is faster on a busy machine).")]
StreamThreadsOpt = Annotated[int, typer.Option(
    "--threads", min=1, help="CPU threads for the model (one frame at a time gains little from more).")]


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for the model (None: PyTorch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)
