"""Training a decoder on codes computed once.

With ``freeze_encoder`` the encoder and codebooks never change, so neither do the codes of a
crop: ``data.code_crops`` crops of ``data.code_crop_seconds`` are drawn by the training
loop's sampler (category weights, random gain and the silence check applied to each whole
crop; clips shorter than a crop are left out), encoded once with every codebook level, and
each step takes random windows of them with their codes. A step then runs the decoder alone,
which on a CPU is about half the time of a step that also runs the encoder and the codebook
search. Encoding 4 hours of crops (2,880 of 5 s) took 15.5 minutes on 2 CPU cores.

The cache is a folder (``codes/`` in the run folder): ``audio.npy`` int16 ``[N, T]``,
``codes.npy`` uint16 ``[N, K, F]`` (every level) and ``meta.json``, which records the
:func:`~codec.weights.codes_fingerprint` of the encoder and codebooks that made the codes,
the prepared corpus's index and what was drawn: a cache is used only by a run of the same
weights, corpus and data settings, and rebuilt otherwise. Plain ``.npy`` (no pickle),
memory-mapped by the loader. Under DDP the first process builds it and the others wait for
it, so processes on several machines need the run folder on a shared file system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from codec.errors import CodecError
from codec.model import Codec
from codec.weights import codes_fingerprint

from .config import TrainConfig
from .data import CropSampler, step_loader

FORMAT = "rvqcodec-codes-1"
ENCODE_BATCH = 8


def cache_meta(model: Codec, cfg: TrainConfig, corpus: Path) -> dict:
    """What the codes depend on: the weights that made them and how the crops were drawn."""
    d = cfg.data
    index = hashlib.sha256((Path(corpus) / "index.tsv").read_bytes()).hexdigest()
    return {
        "format": FORMAT, "codes_fingerprint": codes_fingerprint(model).hex(), "corpus_index": index,
        "crops": d.code_crops, "crop_seconds": d.code_crop_seconds, "seed": cfg.seed, "gain_db": list(d.gain_db),
        "min_rms_db": d.min_rms_db, "category_weights": d.category_weights, "val_fraction": d.val_fraction,
    }


def ensure_code_cache(model: Codec, cfg: TrainConfig, corpus: Path, folder: Path, log=print) -> Path:
    """``folder`` holding the codes of ``cfg.data.code_crops`` crops of the prepared ``corpus``
    under ``model`` (built, or rebuilt if it holds another model's or other crops' codes)."""
    folder = Path(folder)
    meta = cache_meta(model, cfg, corpus)
    if _holds(folder, meta):
        return folder
    if not bool(model.quantizer.initialized):
        raise CodecError("data.code_crops encodes with trained weights: start with --init or --resume")
    if model.cfg.codebook_size > 2**16:
        raise CodecError("data.code_crops stores codes in 16 bits: codebooks of at most 65,536 entries")
    d = cfg.data
    hop = model.hop_length
    length = max(int(d.code_crop_seconds * model.sample_rate) // hop, 1) * hop
    crops = CropSampler(corpus, dataclasses.replace(d, batch_size=ENCODE_BATCH), length, seed=cfg.seed + 7919)  # (not the steps' draws)
    log(f"encoding {d.code_crops} crops of {length / model.sample_rate:.2f} s into {folder}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    frames = length // hop
    audio = np.lib.format.open_memmap(tmp / "audio.npy", "w+", np.int16, (d.code_crops, length))
    codes = np.lib.format.open_memmap(tmp / "codes.npy", "w+", np.uint16, (d.code_crops, model.cfg.n_q, frames))
    was_training = model.training
    model.eval()
    try:
        for step, start in enumerate(range(0, d.code_crops, ENCODE_BATCH)):
            x = crops.batch(step)[: d.code_crops - start]  # [B, 1, T]
            pcm = np.round(x[:, 0].numpy() * 32767).astype(np.int16)
            x = torch.from_numpy(pcm.astype(np.float32) / 32767)[:, None]  # the codes of exactly what is stored
            audio[start : start + len(x)] = pcm
            codes[start : start + len(x)] = model.encode(x.to(next(model.parameters()).device), n_q=model.cfg.n_q, levels_only=True)[:, 0].cpu().numpy()
    finally:
        model.train(was_training)
    audio.flush()
    codes.flush()
    del audio, codes
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def wait_for_code_cache(model: Codec, cfg: TrainConfig, corpus: Path, folder: Path, poll_s: float = 2.0) -> Path:
    """What the other DDP processes do while the first builds the cache (no collective, so no
    timeout however long the encoding takes)."""
    meta = cache_meta(model, cfg, corpus)
    while not _holds(Path(folder), meta):
        time.sleep(poll_s)
    return Path(folder)


def _holds(folder: Path, meta: dict) -> bool:
    try:
        return json.loads((folder / "meta.json").read_text()) == meta
    except (OSError, ValueError):
        return False


class CodeCropSampler(torch.utils.data.Dataset):
    """Batches ``(audio [B, 1, F * hop], codes [B, K, F])``: random windows of ``F`` frames of
    the cached crops. Like :class:`~train.data.CropSampler`, the batch of a step is a pure
    function of ``(seed, rank, step)``."""

    def __init__(self, folder: Path, cfg: TrainConfig, rank: int = 0) -> None:
        self.folder, self.cfg, self.rank = Path(folder), cfg, rank
        self.hop = cfg.model.hop_length
        self.frames = cfg.segment // self.hop
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # mapped lazily: each worker its own

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = np.load(self.folder / "audio.npy", mmap_mode="r"), np.load(self.folder / "codes.npy", mmap_mode="r")
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        audio, codes = self.arrays
        rng = np.random.default_rng([self.cfg.seed, self.rank, step])
        crops = rng.integers(0, len(codes), self.cfg.data.batch_size)
        starts = rng.integers(0, codes.shape[-1] - self.frames + 1, self.cfg.data.batch_size)
        x = np.stack([audio[i, s * self.hop : (s + self.frames) * self.hop] for i, s in zip(crops, starts)])
        c = np.stack([codes[i, :, s : s + self.frames] for i, s in zip(crops, starts)])
        return torch.from_numpy(x.astype(np.float32) / 32767)[:, None], torch.from_numpy(c.astype(np.int64))

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(step)

    def loader(self, start: int, stop: int) -> torch.utils.data.DataLoader:
        return step_loader(self, start, stop, self.cfg.data.loader_workers, self.cfg.seed)
