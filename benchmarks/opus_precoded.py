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

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import print_table, write_json  # noqa: E402
from codec import load, opus  # noqa: E402
from codec.eval_results import METRICS, means  # noqa: E402
from codec.evaluate import evaluate, list_clips, parse_kbps  # noqa: E402


def precode(clips, folder: Path, kbps: float) -> Path:
    """Opus copies of ``clips`` (16-bit WAV at each clip's rate) and their manifest."""
    rows = ["path\tcategory"]
    for i, clip in enumerate(clips):
        coded = opus.code(clip.path, folder, kbps, clip.sample_rate, clip.channels, clip.seconds)
        name = f"{i:03d}.wav"
        audio, rate = sf.read(str(coded.output), dtype="float32")
        sf.write(str(folder / name), audio, rate, subtype="PCM_16")
        rows.append(f"{name}\t{clip.category}")
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="a folder of clips or a manifest.tsv")
    ap.add_argument("--category", default="speech")
    ap.add_argument("--kbps", default="12", help="bitrates to compare at")
    ap.add_argument("--precode", type=float, default=24.0, help="Opus bitrate of the copies (the corpus's speech: 24)")
    ap.add_argument("--model", default=None, help="built-in name or .safetensors file (default: the default model)")
    ap.add_argument("--json", type=Path, default=Path("reports/opus_precoded.json"))
    args = ap.parse_args()
    opus.require_tools()
    kbps = parse_kbps(args.kbps)
    clips = [c for c in list_clips(args.input) if c.category == args.category]
    if not clips:
        sys.exit(f"error: no {args.category} clips in {args.input}")
    model = load(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in ("copies", "work-originals", "work-copies"):
            (tmp / d).mkdir()
        originals = tmp / "originals.tsv"
        originals.write_text("path\tcategory\n" + "".join(f"{c.path.resolve()}\t{c.category}\n" for c in clips))
        inputs = {"originals": originals, f"through Opus {args.precode:g} kbps": precode(clips, tmp / "copies", args.precode)}
        for (label, manifest), work in zip(inputs.items(), ("work-originals", "work-copies")):
            r = evaluate(manifest, tmp / work, kbps, model, baseline="opus")
            results[label] = {system: {f"{k:g}": means(r, args.category, system, k) for k in kbps} for system in r.systems}
    header = ["clips", "system", "kbps", *METRICS]
    rows = [[label, system, k, *(f"{cell[m]:.3f}" if cell and cell[m] is not None else "n/a" for m in METRICS)]
            for label, systems in results.items() for system, by_kbps in systems.items()
            for k, cell in by_kbps.items()]
    print(f"{len(clips)} {args.category} clips of {args.input}, model {model.cfg.name}")
    print_table(header, rows)
    write_json(args.json, {"input": str(args.input), "category": args.category, "model": model.cfg.name,
                           "precode_kbps": args.precode, "results": results})


if __name__ == "__main__":
    main()
