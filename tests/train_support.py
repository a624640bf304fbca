"""Synthetic corpora and the tiny training recipe for the training tests (no ../shared)."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import numpy as np
import soundfile as sf

from train.config import TrainConfig
from train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_corpus(root: Path, speech: int = 4, music: int = 2, seconds: float = 1.0, rate: int = 8000) -> Path:
    """``root/speech/s{i}.wav`` and ``root/music/m{i}.flac``: chirps plus noise, some at 16 kHz
    so that resampling is exercised."""
    rng = np.random.default_rng(0)
    for kind, count, suffix in (("speech", speech, ".wav"), ("music", music, ".flac")):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sr = rate if i % 2 == 0 else 2 * rate
            t = np.arange(int(seconds * sr)) / sr
            f0 = 150 + 40 * i + (300 if kind == "music" else 0)
            x = 0.3 * np.sin(2 * np.pi * (f0 + 200 * t) * t) + 0.03 * rng.standard_normal(t.shape)
            sf.write(str(root / kind / f"{kind[0]}{i}{suffix}"), x.astype(np.float32), sr)
    return root


def tiny_config(**sections: dict) -> TrainConfig:
    """``configs/tiny.yaml`` with some fields replaced, e.g. ``loss={"balancer": True}``;
    top-level fields are given as ``top={"max_steps": 5}``."""
    cfg = TrainConfig.from_yaml(CONFIGS / "tiny.yaml")
    top = sections.pop("top", {})
    parts = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **parts, **top)


def interrupt_after_step(monkeypatch, at: int) -> None:
    """Training raises SIGINT right after step ``at``, as Ctrl-C would between two steps."""
    step = Trainer.train_step

    def step_then_interrupt(self, audio):
        log = step(self, audio)
        if self.step == at:
            signal.raise_signal(signal.SIGINT)
        return log

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
