"""Frozen training configuration, loaded from ``configs/*.yaml`` and stored in every checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from codec.config import CodecConfig


@dataclass(frozen=True)
class DataConfig:
    """Random crops of the corpus.

    Attributes:
        segment_seconds: crop length (rounded down to whole frames).
        batch_size: crops per step (per process under DDP).
        category_weights: sampling probability of each category (speech, music, general).
        gain_db: uniform random gain range applied to each crop.
        min_rms_db: crops quieter than this are re-drawn (near silence teaches nothing).
        val_fraction: fraction of speakers / tracks held out for validation.
        decode_workers: processes decoding the corpus into the cache.
    """

    segment_seconds: float = 0.48
    batch_size: int = 8
    category_weights: dict[str, float] = field(default_factory=lambda: {"speech": 0.6, "music": 0.3, "general": 0.1})
    gain_db: tuple[float, float] = (-12.0, 3.0)
    min_rms_db: float = -50.0
    val_fraction: float = 0.02
    decode_workers: int = 2


@dataclass(frozen=True)
class LossConfig:
    """Weights of every loss term (0 disables a term)."""

    mel: float = 1.0
    stft: float = 1.0
    waveform: float = 0.0
    commitment: float = 0.02
    codebook: float = 0.1
    adversarial: float = 0.0
    feature_matching: float = 0.0
    adversarial_start_step: int = 0
    balancer: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warm-up then exponential or cosine decay."""

    lr: float = 5e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    schedule: str = "exponential"  # or "cosine"
    decay_steps: int = 20000  # exponential: lr halves every decay_steps; cosine: total length
    grad_clip: float = 1.0
    bf16: bool = True
    ema: float = 0.0  # decay of an EMA copy of the generator (0: none)


@dataclass(frozen=True)
class TrainConfig:
    model: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quantizer_dropout: float = 1.0
    seed: int = 0
    threads: int = 0  # torch threads per process (0: leave PyTorch's default)
    log_every: int = 25
    checkpoint_every: int = 500
    validate_every: int = 1000
    keep_checkpoints: int = 3
    max_steps: int = 100000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        parts = {"model": CodecConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown training config key: {key}")
            if key in parts:
                kwargs[key] = _build(parts[key], value or {})
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})


def _build(kind: type, values: dict[str, Any]) -> Any:
    if kind is CodecConfig:
        return CodecConfig.from_dict(values)
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
