"""Codebook usage of a model on a set of audio files: per level, the fraction of the entries
that code at least one frame, and the perplexity (exp of the entropy of the code histogram).

    python benchmarks/codebook_usage.py ../shared/dev/manifest.tsv [--model rvq24k] [--json PATH]

Every file is encoded at the model's highest bitrate (all levels); levels are nested, so the
usage of level i is the same at every bitrate that includes it. The default-model issue asks
for at least 80% of the entries in use at every level. Prints a table and writes JSON
(default ``reports/codebook_usage.json``, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from common import print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codec import load  # noqa: E402
from codec.audio_io import read_audio, to_rate  # noqa: E402
from codec.listing import list_entries  # noqa: E402
from codec.quantizer import code_usage  # noqa: E402


def usage(model, paths: list[Path]) -> tuple[np.ndarray, int]:
    """Code histogram ``[K, codebook_size]`` over all channels of all files, and the frame count."""
    k, size = model.cfg.n_q, model.cfg.codebook_size
    hist = np.zeros((k, size), dtype=np.int64)
    frames = 0
    for path in paths:
        audio, rate = read_audio(path)  # [C, T]
        x = torch.from_numpy(np.ascontiguousarray(to_rate(audio, rate, model.sample_rate)))[None]
        codes = model.encode(x, n_q=k, levels_only=True)[0]  # [C, K, F]: every level (not the low band's words)
        for level in range(k):
            hist[level] += np.bincount(codes[:, level].reshape(-1).numpy(), minlength=size)
        frames += codes.shape[0] * codes.shape[-1]
    return hist, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder of audio or manifest.tsv")
    p.add_argument("--model", default=None, help="built-in name or .safetensors path (default: rvq24k)")
    p.add_argument("--json", type=Path, default=Path("reports/codebook_usage.json"))
    args = p.parse_args()
    model = load(args.model)
    hist, frames = usage(model, [e.path for e in list_entries(args.input)])
    used, perplexity = code_usage(torch.from_numpy(hist))
    rows = [{"level": i, "used": float(u), "perplexity": float(pp)} for i, (u, pp) in enumerate(zip(used, perplexity))]
    print(f"model {model.cfg.name}: {frames} frames of {args.input}; "
          f"{model.cfg.codebook_size} entries per level (max usage possible {min(1.0, frames / model.cfg.codebook_size):.0%})")
    print_table(["level", "entries used", "perplexity"], [[r["level"], f"{r['used']:.1%}", f"{r['perplexity']:.0f}"] for r in rows])
    below = [r["level"] for r in rows if r["used"] < 0.8]
    print(f"levels under 80% usage: {below if below else 'none'}")
    write_json(args.json, {"model": model.cfg.name, "frames": frames, "levels": rows})


if __name__ == "__main__":
    main()
