"""Random training crops and fixed validation excerpts, drawn from a decoded corpus cache
(see :mod:`train.prepare`).

The batch of step ``s`` on process ``rank`` is a pure function of ``(seed, rank, s)``: a
resumed run draws exactly the crops the interrupted one would have, with no sampler state
to save, and loader worker processes can prepare any step ahead of the model.
"""

from __future__ import annotations

import csv
import hashlib
import math
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.listing import DataError

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


def _group_hash(clip: Clip) -> float:
    return int(hashlib.sha1(clip.group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def is_validation(clip: Clip, fraction: float) -> bool:
    """Deterministic split by speaker / track, so no voice is in both sets."""
    return _group_hash(clip) < fraction


def split_clips(clips: list[Clip], fraction: float) -> tuple[list[Clip], list[Clip]]:
    """(train, validation) clips."""
    train = [c for c in clips if not is_validation(c, fraction)]
    return train, [c for c in clips if is_validation(c, fraction)]


def _crop_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, rank, step])


class CropSampler(torch.utils.data.Dataset):
    """Batches ``[B, 1, T]`` of random training crops with random gain, skipping silence.

    ``sampler[step]`` (or ``batch(step)``) is the batch of that step. Sampling: a category
    by ``category_weights`` (renormalised over those present), then a file of it with
    probability proportional to its length, then a uniform crop.
    """

    def __init__(self, cache: Path, cfg: DataConfig, segment: int, seed: int, rank: int = 0) -> None:
        self.path = Path(cache) / "audio.npy"
        self._audio: np.ndarray | None = None  # opened lazily: each worker maps its own
        train, _ = split_clips(load_index(cache), cfg.val_fraction)
        self.clips = [c for c in train if c.length >= segment]
        if not self.clips:
            raise DataError(
                f"no training clips of at least {segment} samples in {cache} "
                f"({len(train)} files outside the validation split)"
            )
        self.cfg, self.segment, self.seed, self.rank = cfg, segment, seed, rank
        cats = sorted({c.category for c in self.clips})
        w = np.array([cfg.category_weights.get(c, 0.0) for c in cats], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(cats))
        self.categories, self.cat_p = cats, w / w.sum()
        self.by_cat = {c: [i for i, clip in enumerate(self.clips) if clip.category == c] for c in cats}
        self.len_p = {}
        for c, idx in self.by_cat.items():
            lengths = np.array([self.clips[i].length for i in idx], dtype=np.float64)
            self.len_p[c] = lengths / lengths.sum()

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            self._audio = np.load(self.path, mmap_mode="r")
        return self._audio

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_audio": None}  # never pickle the mapped corpus

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        """One crop ``[T]`` float32 in [-1, 1] with random gain."""
        for attempt in range(20):
            cat = self.categories[rng.choice(len(self.categories), p=self.cat_p)]
            clip = self.clips[self.by_cat[cat][rng.choice(len(self.by_cat[cat]), p=self.len_p[cat])]]
            off = clip.start + int(rng.integers(0, clip.length - self.segment + 1))
            x = self.audio[off : off + self.segment].astype(np.float32) / 32768.0
            rms = math.sqrt(float(np.mean(x * x)) + 1e-12)
            if 20 * math.log10(rms) >= self.cfg.min_rms_db or attempt == 19:
                break
        gain = 10 ** (rng.uniform(*self.cfg.gain_db) / 20)
        peak = float(np.abs(x).max()) + 1e-9
        return x * min(gain, 0.99 / peak)

    def batch(self, step: int) -> torch.Tensor:
        """The crops of ``step``: ``[B, 1, T]`` float32."""
        rng = _crop_rng(self.seed, self.rank, step)
        return torch.from_numpy(np.stack([self.crop(rng) for _ in range(self.cfg.batch_size)]))[:, None, :]

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.batch(step)

    def loader(self, start: int, stop: int) -> torch.utils.data.DataLoader:
        """Batches of steps ``start .. stop - 1``, prepared by ``loader_workers`` processes."""
        return step_loader(self, start, stop, self.cfg.loader_workers, self.seed)


def step_loader(batches: torch.utils.data.Dataset, start: int, stop: int, workers: int, seed: int) -> torch.utils.data.DataLoader:
    """``batches[step]`` for steps ``start .. stop - 1``, prepared by ``workers`` processes."""
    return torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
        prefetch_factor=4 if workers else None, persistent_workers=False,
        # Its own generator: drawing the loader's base seed must not advance the global
        # RNG, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_stop_signals,
    )


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C / SIGTERM sent to the whole process group: the training
    process must still receive its batches while it finishes the step and checkpoints.
    Workers end with the training process (PyTorch's watchdog), so nothing is orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass(frozen=True)
class ValidationClip:
    name: str
    category: str
    audio: np.ndarray  # [T] float32


def validation_clips(cache: Path, cfg: DataConfig, sample_rate: int, hop: int, per_group: int = 1) -> list[ValidationClip]:
    """Up to ``cfg.val_clips`` excerpts of the validation split, the same every time.

    Taken round-robin over the categories (so speech is present for PESQ), ``per_group``
    files per speaker / track, from the middle of each file, at most ``val_seconds`` long.
    """
    _, val = split_clips(load_index(cache), cfg.val_fraction)
    want = int(cfg.val_seconds * sample_rate) // hop * hop
    pools: dict[str, list[Clip]] = {}
    taken: Counter[str] = Counter()
    for clip in sorted(val, key=lambda c: (_group_hash(c), c.path)):
        if taken[clip.group] < per_group and clip.length >= hop:
            taken[clip.group] += 1
            pools.setdefault(clip.category, []).append(clip)
    picked: list[Clip] = []
    while len(picked) < cfg.val_clips and any(pools.values()):
        for cat in sorted(pools):
            if pools[cat] and len(picked) < cfg.val_clips:
                picked.append(pools[cat].pop(0))
    audio = np.load(Path(cache) / "audio.npy", mmap_mode="r")
    out = []
    for clip in picked:
        n = min(want, clip.length // hop * hop)
        off = clip.start + (clip.length - n) // 2
        out.append(ValidationClip(Path(clip.path).stem, clip.category, audio[off : off + n].astype(np.float32) / 32768.0))
    return out
