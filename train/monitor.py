"""What a run shows: TensorBoard scalars and audio, a ``log.jsonl`` copy of every logged
value, and a progress bar with ETA on the console. Only the main process monitors."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from torch import Tensor
from tqdm import tqdm


class Monitor:
    """``run_dir/tensorboard`` (``tensorboard --logdir RUN_DIR``) and ``run_dir/log.jsonl``."""

    def __init__(self, run_dir: Path, start: int, stop: int, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start or None)
            self.jsonl = open(Path(run_dir) / "log.jsonl", "a")
        self.bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True,
                        disable=not (enabled and progress), smoothing=0.05)
        self._t0, self._s0 = time.perf_counter(), start

    def throughput(self, step: int, audio_seconds_per_step: float) -> dict[str, float]:
        """Steps/s and audio-seconds/s since the last call (all processes together)."""
        now = time.perf_counter()
        rate = (step - self._s0) / max(now - self._t0, 1e-9)
        self._t0, self._s0 = now, step
        return {"speed/steps_per_s": rate, "speed/audio_seconds_per_s": rate * audio_seconds_per_step}

    def scalars(self, step: int, values: dict[str, float | Tensor]) -> dict[str, float]:
        plain = {k: float(v) for k, v in values.items()}
        if self.writer is not None and self.jsonl is not None:
            for key, value in plain.items():
                self.writer.add_scalar(key, value, step)
            self.jsonl.write(json.dumps({"step": step, **plain}) + "\n")
            self.jsonl.flush()
        return plain

    def audio(self, step: int, clips: dict[str, np.ndarray], sample_rate: int) -> None:
        if self.writer is not None:
            for tag, wav in clips.items():
                self.writer.add_audio(f"audio/{tag}", np.clip(wav, -1, 1)[None], step, sample_rate=sample_rate)

    def advance(self, step: int, summary: dict[str, float] | None = None) -> None:
        self.bar.update(step - self.bar.n)
        if summary:
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in summary.items()}, refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
