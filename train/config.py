"""Frozen training configuration, loaded from ``configs/*.yaml`` and stored in every checkpoint.

Every field has a default, so a YAML file names only what differs; unknown keys are refused
(a typo must not silently train with the default).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from codec.config import CodecConfig
from codec.errors import CodecError

# The longest window of the reconstruction losses (codec/mel.py's mel loss, train/losses.py's
# STFT loss): a training crop must be at least as long.
LONGEST_FFT = 2048


class ConfigError(CodecError):
    """A training configuration that cannot be used (bad YAML, unknown key, bad value)."""


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
        loader_workers: processes drawing crops ahead of the model (0: in the training process).
        val_clips: validation excerpts, taken round-robin over the categories.
        val_seconds: length of each validation excerpt (shorter clips are used whole).
        code_crops: with ``freeze_encoder``, encode this many crops of ``code_crop_seconds``
            once and train on their codes (:mod:`train.codes`); 0: encode every step's crops.
        code_crop_seconds: length of each encoded crop; steps take ``segment_seconds`` of it.
    """

    segment_seconds: float = 0.48
    batch_size: int = 8
    category_weights: dict[str, float] = field(default_factory=lambda: {"speech": 0.6, "music": 0.3, "general": 0.1})
    gain_db: tuple[float, float] = (-12.0, 3.0)
    min_rms_db: float = -50.0
    val_fraction: float = 0.02
    decode_workers: int = 2
    loader_workers: int = 1
    val_clips: int = 8
    val_seconds: float = 4.0
    code_crops: int = 0
    code_crop_seconds: float = 5.0


@dataclass(frozen=True)
class LossConfig:
    """Weights of every loss term (0 disables a term) and when adversarial training starts.

    With ``balancer`` the weights of the terms computed on the output audio (``rec/*``,
    ``adv/*``) become the shares of the gradient each contributes (EnCodec's balancer).
    """

    mel: float = 1.0
    stft: float = 1.0
    waveform: float = 0.0
    envelope: float = 0.0  # band-envelope correlation (STOI's measure), for intelligibility
    phase: float = 0.0  # STFT phase, its frequency and time differences (train.losses.PhaseLoss)
    # shares of PhaseLoss's instantaneous-phase, group-delay and instantaneous-frequency terms
    phase_terms: tuple[float, float, float] = (1.0, 1.0, 1.0)
    commitment: float = 0.02
    adversarial: float = 0.0
    feature_matching: float = 0.0
    adversarial_start_step: int = 0
    # Discriminator steps before the adversarial terms reach the generator. A run that starts
    # from release weights (--init) starts with untrained discriminators, whose judgements
    # would otherwise push a good generator around at random while they learn.
    disc_warmup_steps: int = 0
    balancer: bool = False
    balancer_ema: float = 0.999

    @property
    def uses_discriminators(self) -> bool:
        return self.adversarial > 0 or self.feature_matching > 0


def phase_shares_valid(shares: tuple[float, ...]) -> bool:
    """Three finite shares, none negative, not all 0 (:class:`train.losses.PhaseLoss`'s terms)."""
    return len(shares) == 3 and all(math.isfinite(s) and s >= 0 for s in shares) and sum(shares) > 0


@dataclass(frozen=True)
class DiscConfig:
    """Discriminators: EnCodec's multi-scale STFT and HiFi-GAN's multi-period ones.

    Attributes:
        stft_n_ffts: FFT sizes of the STFT discriminators (hop n_fft / 4); empty: none.
        stft_channels: filters of every STFT discriminator convolution.
        periods: periods of the period discriminators; empty: none.
        period_channels: widths of the period discriminators' strided convolutions.
    """

    stft_n_ffts: tuple[int, ...] = (1024, 2048, 512, 256, 128)
    stft_channels: int = 32
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)


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


# The recipe's sections: their keys and the config each one builds.
SECTIONS = {"model": CodecConfig, "data": DataConfig, "loss": LossConfig, "disc": DiscConfig, "optim": OptimConfig}


@dataclass(frozen=True)
class TrainConfig:
    model: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quantizer_dropout: float = 1.0
    # How often quantizer dropout draws each bitrate, one weight per model.valid_n_q (fewest
    # codebooks first; they need not sum to 1): where the decoder's capacity goes. Empty:
    # every bitrate alike.
    quantizer_weights: tuple[float, ...] = ()
    quantize_prob: float = 1.0  # fraction of examples decoded from codes; the rest bypass (Mimi)
    # EMA decay of the codebook statistics. A step averages about batch x frames-per-crop
    # frames (288 at batch 8 x 0.48 s), so 0.97 follows the last ~10,000 frames, some 9 per
    # entry of a 1,024-entry codebook: small CPU batches want 0.99-0.999.
    codebook_decay: float = 0.97
    # Train the decoder alone: the encoder and the codebooks stay as loaded (--init), so the
    # codes a file holds, and the codebook usage, do not change while the decoder learns.
    freeze_encoder: bool = False
    seed: int = 0
    threads: int = 0  # torch threads per process (0: leave PyTorch's default)
    log_every: int = 25
    checkpoint_every: int = 500
    validate_every: int = 1000
    keep_checkpoints: int = 3
    max_steps: int = 100000

    def __post_init__(self) -> None:
        if self.optim.schedule not in ("exponential", "cosine"):
            raise ValueError(f"optim.schedule must be 'exponential' or 'cosine', got {self.optim.schedule!r}")
        if self.data.batch_size < 1 or self.data.segment_seconds <= 0:
            raise ValueError("data.batch_size and data.segment_seconds must be positive")
        if self.segment < LONGEST_FFT:
            raise ValueError(f"data.segment_seconds must give crops of at least {LONGEST_FFT} samples (the losses' "
                             f"longest window), got {self.segment}")
        if not 0.0 < self.codebook_decay < 1.0:
            raise ValueError("codebook_decay must be in (0, 1)")
        if not phase_shares_valid(self.loss.phase_terms):
            raise ValueError(f"loss.phase_terms must be three finite shares >= 0, not all 0, "
                             f"got {list(self.loss.phase_terms)}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ValueError("data.val_fraction must be in [0, 1)")
        if self.data.code_crops and (not self.freeze_encoder or self.quantize_prob < 1.0):
            raise ValueError("data.code_crops caches the codes of a frozen encoder: it needs freeze_encoder: true "
                             "(and quantize_prob 1: cached codes have no unquantized latent to bypass to)")
        if self.data.code_crops < 0 or (self.data.code_crops and self.data.code_crop_seconds < self.data.segment_seconds):
            raise ValueError("data.code_crops must be >= 0, and data.code_crop_seconds at least data.segment_seconds")
        weights, bitrates = self.quantizer_weights, self.model.valid_n_q
        if weights and (len(weights) != len(bitrates) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"quantizer_weights needs one weight >= 0 per bitrate {list(bitrates)} "
                             f"(codebooks, fewest first), not all 0; got {list(weights)}")
        for name in ("log_every", "checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def segment(self) -> int:
        """Training crop length in samples, a whole number of frames."""
        hop = self.model.hop_length
        return max(int(self.data.segment_seconds * self.model.sample_rate) // hop, 1) * hop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown training config key: {key}")
            if key in SECTIONS:
                kwargs[key] = _build(SECTIONS[key], value or {})
            else:
                kwargs[key] = _checked(cls, key, value)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        """Load a YAML file; a missing file raises FileNotFoundError, anything else ConfigError."""
        path = Path(path)
        try:
            return cls.from_dict(_read_recipe(path, ()))
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"bad training config {path}: {first}") from None


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A recipe's mapping, with its ``base:`` recipe (a path relative to its folder) under it.

    A recipe that varies another names it as ``base`` and writes only what differs: each
    section's keys replace the base's same keys (a nested mapping such as
    ``data.category_weights`` is replaced whole), other keys stay the base's.
    """
    data = yaml.safe_load(path.read_bytes().decode()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a mapping of config keys")
    if "base" not in data:
        return data
    name = data.pop("base")
    if not isinstance(name, str) or not name:
        raise ValueError(f"base must be the path of a recipe, got {name!r}")
    base, seen = path.parent / name, (*seen, path.resolve())
    if base.resolve() in seen:
        raise ValueError(f"base recipes form a loop at {base}")
    if not base.is_file():
        raise ValueError(f"its base recipe {base} does not exist or is not a file")
    merged = _read_recipe(base, seen)
    for key, value in data.items():
        inherited = merged.get(key)
        if isinstance(inherited, dict) and (value is None or isinstance(value, dict)):
            merged[key] = {**inherited, **(value or {})}  # (an empty section changes nothing)
        else:
            merged[key] = value
    return merged


def _build(kind: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{kind.__name__} must be a mapping, got {values!r}")
    if kind is CodecConfig:
        return CodecConfig.from_dict(values)
    known = {f.name for f in fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else _checked(kind, k, v) for k, v in values.items()})


# What a YAML value of a scalar field may be, and its name (other fields are checked where used).
_SCALARS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "true or false"),
            "str": ((str,), "text")}


def _checked(kind: type, name: str, value: Any) -> Any:
    """``value`` for field ``name`` of ``kind``, if it is of the field's scalar type (``lr: fast``
    is refused when the recipe is read, not steps later); booleans are not numbers here."""
    scalar = _SCALARS.get(str(next(f.type for f in fields(kind) if f.name == name)))
    if scalar is not None and (not isinstance(value, scalar[0]) or (isinstance(value, bool) and bool not in scalar[0])):
        section = next((f"{key}." for key, part in SECTIONS.items() if part is kind), "")
        raise ValueError(f"{section}{name} must be {scalar[1]}, got {value!r}")
    return value
