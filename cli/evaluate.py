"""``rvqcodec eval``: objective quality of rvqcodec (and Opus) on a set of clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import user_errors


def evaluate(
    input: Annotated[Path, typer.Argument(
        help="Folder of audio files (category from a speech/, music/ or general/ subfolder) "
             "or a manifest.tsv with a category column.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json, report.md and the plots.")],
    kbps: Annotated[Optional[str], typer.Option(
        help="Comma-separated bitrates, e.g. 1.5,3,6,12,24 (default: every bitrate of the model).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Built-in model name or path to a .safetensors file.")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        help="Also code with this baseline at the same bitrates: 'opus' (needs opus-tools).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite results in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Score decoded audio against the originals (SI-SDR, mel distance, PESQ, STOI, ViSQOL)."""
    from codec.evaluate import parse_kbps, run

    with user_errors():
        rates = parse_kbps(kbps) if kbps is not None else None
        result = run(input, out, rates, model, baseline, force=force, quiet=quiet)
    if not quiet:
        typer.echo(f"{out}: {len(result.clips)} clips x {len(result.systems)} systems; see {out / 'report.md'}")
        for metric, why in result.unavailable.items():
            typer.echo(f"note: {metric} {why}")


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
