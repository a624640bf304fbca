"""Fit a model's residual VQ afresh: k-means of each level on frames of training crops.

    python -m train.fit_codebooks --config configs/logmel24k-anneal.yaml --data CACHE --init rvq24k-v13 \\
        --out W.safetensors [--crops 4000] [--iters 20] [--min-fraction 0.5] [--seed 0] [--name NAME]

The crops are drawn as training draws them (the config's category weights, gain range and
silence threshold, from the training split), encoded by the model's encoder; level 0 is the
k-means of those frames, level ``i`` the k-means of what levels ``0 .. i-1`` leave over. An
entry that fewer than ``min_fraction`` of the mean count of frames choose is moved to a random
frame while the centres move (as the EMA quantizer re-seeds its dead entries in training). The
encoder and decoder are copied from ``--init``; train the decoder on the new codes with
``freeze_encoder: true`` (``configs/logmel24k-refit.yaml``), which keeps the codebooks as fitted.

Why: the EMA codebooks of a long run drift to the batches they see. v13's first level, after
26,000 steps of dead entries re-seeded from single frames of small batches, used 77.9% of its
entries on the corpus's validation split (dev clips: 76.7%); the fit of this module (4,000
crops, 20 iterations, floor 0.5) uses 86.1% there and every other level 97% or more. Without
the floor, the middle levels spend entries on rare residuals: levels 7-14 then used 76-79% of
their entries on the dev clips (docs/model_card.md, "Codebook usage").
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from codec.errors import CodecError
from codec.kmeans import kmeans, nearest
from codec.model import Codec
from codec.weights import load as load_release
from codec.weights import save_model

from .config import TrainConfig
from .data import CropSampler
from .prepare import check_rate, is_cache


def fit_rvq(frames: Tensor, n_q: int, size: int, iters: int, generator: torch.Generator, min_fraction: float = 0.0,
            log=print) -> Tensor:
    """Codebooks ``[n_q, size, D]`` of a residual VQ of ``frames`` ``[N, D]``, level by level.
    ``frames`` is overwritten by what the levels leave over."""
    if frames.shape[0] < size:
        raise CodecError(f"k-means of {size} entries needs at least {size} frames, got {frames.shape[0]}")
    residual = frames
    books = []
    for level in range(n_q):
        t = time.monotonic()
        centres = kmeans(residual, size, iters, generator, min_fraction)
        residual -= centres[nearest(residual, centres)]
        books.append(centres)
        log(f"level {level}: residual power {residual.square().mean().item():.4f} ({time.monotonic() - t:.0f} s)")
    return torch.stack(books)


@torch.no_grad()
def training_frames(model: Codec, sampler: CropSampler, crops: int) -> Tensor:
    """The encoder's frames ``[N, D]`` of ``crops`` training crops, batch by batch (steps 0, 1, ...)."""
    frames, step, done = [], 0, 0
    while done < crops:
        batch = sampler.batch(step)[: crops - done]
        z = model.encoder(batch)  # [B, D, F]
        frames.append(z.transpose(1, 2).reshape(-1, z.shape[1]).float())
        done += batch.shape[0]
        step += 1
    return torch.cat(frames)


def refit(model: Codec, frames: Tensor, iters: int, seed: int, min_fraction: float = 0.0, log=print) -> None:
    """Replace ``model``'s codebooks by a k-means RVQ of ``frames`` (in place; ``frames`` is
    overwritten by the residual of the last level)."""
    q = model.quantizer
    books = fit_rvq(frames, q.n_q, q.codebook_size, iters, torch.Generator().manual_seed(seed), min_fraction, log)
    with torch.no_grad():
        q.codebooks.copy_(books)
        q.reset_statistics()
        q.initialized.fill_(True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True, help="training config: its data section draws the crops")
    p.add_argument("--data", type=Path, required=True, help="corpus cache of train.prepare")
    p.add_argument("--init", required=True, help="built-in model name or .safetensors: encoder and decoder")
    p.add_argument("--out", type=Path, required=True, help="weights to write (.safetensors)")
    p.add_argument("--crops", type=int, default=4000, help="training crops of the config's segment length")
    p.add_argument("--iters", type=int, default=20, help="k-means iterations per level")
    p.add_argument("--min-fraction", type=float, default=0.5,
                   help="re-seed entries with fewer frames than this fraction of the mean (0: plain k-means)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None,
                   help="model name stored in the weights (default: --init's with -refit: new codes, so not its name)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args(argv)
    if args.crops < 1 or args.iters < 1 or not 0.0 <= args.min_fraction < 1.0 or args.threads < 0:
        p.error("--crops and --iters must be at least 1, --min-fraction in [0, 1), --threads at least 0")
    if args.name is not None and not args.name.strip():
        p.error("--name must not be empty")
    if not args.out.parent.is_dir():
        p.error(f"--out: folder {args.out.parent} does not exist")
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = TrainConfig.from_yaml(args.config)
        if not is_cache(args.data):
            raise CodecError(f"{args.data} is not a corpus cache (python -m train.prepare MANIFEST CACHE makes one)")
        model = load_release(args.init).float().eval()
        check_rate(args.data, model.sample_rate)
        segment = int(cfg.data.segment_seconds * model.sample_rate) // model.hop_length * model.hop_length
        sampler = CropSampler(args.data, cfg.data, segment, seed=args.seed)
        frames = training_frames(model, sampler, args.crops)
        print(f"{frames.shape[0]} frames of {args.crops} crops; fitting {model.quantizer.n_q} levels "
              f"of {model.quantizer.codebook_size} entries", flush=True)
        refit(model, frames, args.iters, args.seed, args.min_fraction, log=lambda m: print(m, flush=True))
        model.cfg = dataclasses.replace(model.cfg, name=args.name if args.name is not None else f"{model.cfg.name}-refit")
        save_model(model, args.out)
        print(f"wrote {args.out}")
    except (CodecError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
