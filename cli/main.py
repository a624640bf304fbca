"""``rvqcodec``: compress, decompress and inspect ``.rvq`` files.

Every command parses its options, calls the library (:mod:`codec`) and reports; no logic
lives here, so the Python API and the CLI cannot disagree.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from codec import ClippingWarning, compress_file, decompress_file, read_info
from codec.bitstream import Header
from codec.files import builtin_config
from codec.lowband import describe

from .errors import OneLineErrors, one_line_warnings, user_errors
from .options import FileThreadsOpt, ForceOpt, KbpsOpt, ModelOpt, QuietOpt, set_threads

app = typer.Typer(
    cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="rvqcodec: neural audio codec, 1.5-24 kbps, streaming.",
)


@app.command()
def compress(
    input: Annotated[Path, typer.Argument(help="Audio file (WAV, FLAC, OGG, MP3...), any rate and channels.")],
    output: Annotated[str, typer.Argument(help="The .rvq file to write.")],
    kbps: KbpsOpt = 6.0,
    model: ModelOpt = None,
    threads: FileThreadsOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compress an audio file to a .rvq bitstream."""
    set_threads(threads)
    with user_errors():
        r = compress_file(input, output, kbps=kbps, model=model, force=force, quiet=quiet)
    if r.damage:
        print(f"warning: {r.damage}; coded as far as it could be read", file=sys.stderr)
    if not quiet:
        typer.echo(
            f"{r.output}: {r.seconds:.2f} s, {r.channels} ch, {r.bytes} bytes, "
            f"{r.actual_kbps:.3f} kbps ({r.nominal_kbps:g} kbps of codes)"
        )


@app.command()
def decompress(
    input: Annotated[Path, typer.Argument(help="The .rvq file to read.")],
    output: Annotated[str, typer.Argument(help="Audio file to write (.wav or .flac).")],
    model: ModelOpt = None,
    threads: FileThreadsOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Decompress a .rvq file to audio at its original rate, channels and length."""
    set_threads(threads)
    with user_errors(), one_line_warnings(ClippingWarning):
        out = decompress_file(input, output, model=model, force=force, quiet=quiet)
    if not quiet:
        typer.echo(f"{out}: written")


def layout_row(h: Header) -> list[tuple[str, str]]:
    """What the codes of a frame hold, as the built-in model of the header's name lays them
    out (its config only: no weights read); nothing for a model that is not built in (or
    whose weights file the package lacks: the header alone still shows)."""
    cfg = builtin_config(h)
    return [] if cfg is None else [("codes", describe(cfg, h.n_q))]


@app.command()
def info(file: Annotated[Path, typer.Argument(help="The .rvq file to inspect.")]) -> None:
    """Show a .rvq file's header, duration, bitrate, packets and CRC check."""
    with user_errors():
        i = read_info(file)
    h = i.header
    length = "unknown" if math.isnan(i.seconds) else f"{i.num_samples} ({i.seconds:.3f} s)"
    crc = ([f"{i.damaged_packets} damaged packet(s)"] if i.damaged_packets else []) + (["truncated"] if i.truncated else [])
    trailing = f" ({i.trailing_bytes} bytes after the last packet ignored)" if i.trailing_bytes else ""
    rows = [
        ("model", f"{h.model_id} (weights {h.weights_hash.hex()})"),
        ("sample rate", f"{h.original_rate} Hz (model {h.sample_rate} Hz)"),
        ("channels", h.channels),
        ("frame rate", f"{h.frame_rate:g} Hz"),
        ("codebooks", f"{h.n_q} x {h.codebook_size} entries ({h.bits_per_code} bits)"),
        *layout_row(h),
        ("samples", length),
        ("bitrate", ("unknown" if math.isnan(i.actual_kbps) else f"{i.actual_kbps:.3f} kbps")
         + f" actual, {h.kbps:g} kbps of codes"),
        ("size", f"{i.bytes} bytes"),
        ("packets", f"{i.packets} ({i.frames} frames, {h.packet_frames} per packet)"),
        ("crc", (", ".join(crc) or "ok") + trailing),
    ]
    for key, value in rows:
        typer.echo(f"{key:12s} {value}")
    if i.damaged_packets or i.truncated:
        raise typer.Exit(1)


# Commands that live in their own modules (training, evaluation, streaming) register
# themselves here: each module defines ``register(app)``.
for _name in ("cli.train", "cli.evaluate", "cli.stream"):
    try:
        importlib.import_module(_name).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:
            raise
