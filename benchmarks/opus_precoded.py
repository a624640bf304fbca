"""rvqcodec and Opus on clips as they are, and on copies that went through Opus first.

    python benchmarks/opus_precoded.py ../shared/dev/manifest.tsv --category speech --kbps 12

The training corpus is stored as Ogg Opus (speech at 24 kbps), so its held-out excerpts
(benchmarks/heldout.py) have been through Opus once already. Coding them with Opus again
favours Opus. This measures by how much: every clip of ``input`` (a folder or a manifest, as
``rvqcodec eval`` reads it) of one category is coded by Opus at ``--precode`` kbps and decoded
at the clip's rate, and both sets, the originals and the copies, are scored by ``rvqcodec
eval``'s code (codec.evaluate) with the Opus baseline. Prints a table and writes JSON (default
``reports/opus_precoded.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import print_table, write_json  # noqa: E402
from codec import Codec, load, opus  # noqa: E402
from codec.errors import CodecError  # noqa: E402
from codec.eval_results import METRICS, Clip, means  # noqa: E402
from codec.evaluate import evaluate, list_clips, parse_kbps, through_opus  # noqa: E402

CATEGORIES = ("speech", "music", "general")


def write_manifest(path: Path, rows: list[tuple[Path | str, str]]) -> Path:
    """``path``: a manifest of (audio path, category) rows, as ``rvqcodec eval`` reads one."""
    path.write_text("path\tcategory\n" + "".join(f"{p}\t{category}\n" for p, category in rows))
    return path


def precode(clips: list[Clip], folder: Path, kbps: float) -> Path:
    """Each clip through Opus at ``kbps`` per channel, kept as ``folder/NNN.wav`` (16 bits, the
    clip's rate and channels) -> the copies' manifest, ``folder/manifest.tsv``."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for i, clip in enumerate(clips):
            copy = folder / f"{i:03d}.wav"
            through_opus(clip, i, kbps, Path(work)).output.replace(copy)
            rows.append((copy.name, clip.category))
    return write_manifest(folder / "manifest.tsv", rows)


def compare(clips: list[Clip], kbps: tuple[float, ...], model: Codec, precode_kbps: float) -> dict:
    """Both codecs' mean scores at each of ``kbps``, on ``clips`` (all of one category) as they
    are and through Opus at ``precode_kbps`` first -> ``{label: {system: {kbps: means}}}``."""
    category = clips[0].category
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for sub in ("originals", "copies", "work-originals", "work-copies"):
            (tmp / sub).mkdir()
        sets = {
            "originals": (write_manifest(tmp / "originals" / "manifest.tsv", [(c.path.resolve(), c.category) for c in clips]),
                          tmp / "work-originals"),
            f"through Opus {precode_kbps:g} kbps": (precode(clips, tmp / "copies", precode_kbps), tmp / "work-copies"),
        }
        for label, (manifest, work) in sets.items():
            r = evaluate(manifest, work, kbps, model, baseline="opus")
            results[label] = {system: {f"{k:g}": means(r, category, system, k) for k in kbps} for system in r.systems}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="a folder of clips or a manifest.tsv")
    ap.add_argument("--category", default="speech", choices=CATEGORIES)
    ap.add_argument("--kbps", default="12", help="bitrates to compare at (6 kbps and up: Opus's)")
    ap.add_argument("--precode", type=float, default=24.0, help="Opus bitrate of the copies (the corpus's speech: 24)")
    ap.add_argument("--model", default=None, help="built-in name or .safetensors file (default: the default model)")
    ap.add_argument("--json", type=Path, default=Path("reports/opus_precoded.json"))
    args = ap.parse_args()
    try:
        opus.require_tools()
        kbps = parse_kbps(args.kbps)
        if not all(opus.supports(k) for k in (*kbps, args.precode)):
            raise CodecError(f"Opus codes {opus.MIN_KBPS:g}-{opus.MAX_KBPS:g} kbps: --kbps {args.kbps} --precode {args.precode:g}")
        model = load(args.model)
        for k in kbps:
            model.n_q_for(k)  # (a bitrate the model lacks: refused before any clip is coded)
        clips = [c for c in list_clips(args.input) if c.category == args.category]
        if not clips:
            raise CodecError(f"no {args.category} clips in {args.input}")
        results = compare(clips, kbps, model, args.precode)
    except CodecError as exc:  # a missing input or model, a bitrate either codec lacks: one line
        sys.exit(f"opus_precoded: {exc}")
    rows = [[label, system, k, *(f"{cell[m]:.3f}" if cell and cell[m] is not None else "n/a" for m in METRICS)]
            for label, systems in results.items() for system, by_kbps in systems.items()
            for k, cell in by_kbps.items()]
    print(f"{len(clips)} {args.category} clips of {args.input}, model {model.cfg.name}")
    print_table(["clips", "system", "kbps", *METRICS], rows)
    write_json(args.json, {"input": str(args.input), "category": args.category, "model": model.cfg.name,
                           "precode_kbps": args.precode, "results": results})


if __name__ == "__main__":
    main()
