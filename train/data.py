"""Random training crops drawn from a decoded corpus cache (see :mod:`train.prepare`)."""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig


@dataclass(frozen=True)
class Clip:
    path: str
    category: str
    group: str  # speaker or track: the unit of the validation split
    start: int
    length: int


def load_index(cache: Path) -> list[Clip]:
    with open(Path(cache) / "index.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        Clip(r["path"], r["category"], r["speaker"] or r["path"], int(r["start"]), int(r["length"]))
        for r in rows
    ]


def is_validation(clip: Clip, fraction: float) -> bool:
    """Deterministic split by speaker / track, so no voice is in both sets."""
    h = int(hashlib.sha1(clip.group.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


class CropSampler:
    """Draws batches ``[B, 1, T]`` of random crops with random gain, skipping silence.

    Sampling: a category by ``category_weights`` (renormalised over those present), then a
    file of it with probability proportional to its length, then a uniform crop.
    """

    def __init__(self, cache: Path, cfg: DataConfig, segment: int, split: str, seed: int) -> None:
        self.audio = np.load(Path(cache) / "audio.npy", mmap_mode="r")
        clips = [c for c in load_index(cache) if c.length >= segment]
        want_val = split == "val"
        self.clips = [c for c in clips if is_validation(c, cfg.val_fraction) == want_val]
        if not self.clips:
            raise ValueError(f"no {split} clips of at least {segment} samples in the cache")
        self.cfg, self.segment = cfg, segment
        self.rng = np.random.default_rng(seed)
        cats = sorted({c.category for c in self.clips})
        w = np.array([cfg.category_weights.get(c, 0.0) for c in cats], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(cats))
        self.categories, self.cat_p = cats, w / w.sum()
        self.by_cat = {c: [i for i, clip in enumerate(self.clips) if clip.category == c] for c in cats}
        self.len_p = {
            c: np.array([self.clips[i].length for i in idx], dtype=np.float64) / sum(self.clips[i].length for i in idx)
            for c, idx in self.by_cat.items()
        }

    def crop(self) -> np.ndarray:
        """One crop ``[T]`` float32 in [-1, 1] with random gain."""
        for attempt in range(20):
            cat = self.categories[self.rng.choice(len(self.categories), p=self.cat_p)]
            clip = self.clips[self.by_cat[cat][self.rng.choice(len(self.by_cat[cat]), p=self.len_p[cat])]]
            off = clip.start + int(self.rng.integers(0, clip.length - self.segment + 1))
            x = self.audio[off : off + self.segment].astype(np.float32) / 32768.0
            rms = math.sqrt(float(np.mean(x * x)) + 1e-12)
            if 20 * math.log10(rms) >= self.cfg.min_rms_db or attempt == 19:
                break
        gain = 10 ** (self.rng.uniform(*self.cfg.gain_db) / 20)
        peak = float(np.abs(x).max()) + 1e-9
        return x * min(gain, 0.99 / peak)

    def batch(self, size: int | None = None) -> torch.Tensor:
        n = size or self.cfg.batch_size
        return torch.from_numpy(np.stack([self.crop() for _ in range(n)]))[:, None, :]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
