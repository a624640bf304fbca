"""The training loop: one readable step, periodic validation, checkpoints and resume."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from codec.model import Codec
from codec.quantizer import sample_n_q

from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import OptimConfig, TrainConfig
from .data import CropSampler
from .losses import MultiResolutionSTFTLoss, MultiScaleMelLoss


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then exponential (halving every ``decay_steps``) or cosine decay."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.schedule == "cosine":
        t = min(1.0, step / max(cfg.decay_steps, 1))
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))
    return warm * 0.5 ** (step / max(cfg.decay_steps, 1))


class Trainer:
    """Holds the model, losses, optimiser and sampler of one run."""

    def __init__(self, cfg: TrainConfig, cache: Path, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model = Codec(cfg.model)
        self.mel = MultiScaleMelLoss(cfg.model.sample_rate)
        self.stft = MultiResolutionSTFTLoss()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        hop = cfg.model.hop_length
        segment = int(cfg.data.segment_seconds * cfg.model.sample_rate) // hop * hop
        self.train_data = CropSampler(cache, cfg.data, segment, "train", cfg.seed)
        self.val_data = CropSampler(cache, cfg.data, segment * 4, "val", cfg.seed + 1)
        self.step = 0

    def losses(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every loss term of one batch ``[B, 1, T]`` and the quantizer metrics."""
        n_q = sample_n_q(x.shape[0], self.cfg.model.valid_n_q, self.cfg.quantizer_dropout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.optim.bf16):
            out = self.model(x, n_q)
        y = out.audio.float()
        terms = {
            "rec/mel": self.mel(y, x),
            "rec/stft": self.stft(y, x),
            "rec/waveform": (y - x).abs().mean(),
            "vq/commitment": out.quantized.commitment_loss.float(),
            "vq/codebook": out.quantized.codebook_loss.float(),
        }
        return terms, out.quantized.metrics

    def train_step(self) -> dict[str, float]:
        self.model.train()
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.optim.lr * lr_factor(self.step, self.cfg.optim)
        terms, metrics = self.losses(self.train_data.batch())
        w = self.cfg.loss
        weights = {"rec/mel": w.mel, "rec/stft": w.stft, "rec/waveform": w.waveform,
                   "vq/commitment": w.commitment, "vq/codebook": w.codebook}
        total = sum(weights[k] * v for k, v in terms.items())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.step += 1
        log = {k: float(v) for k, v in terms.items()}
        log.update({"total": float(total), "grad_norm": float(grad_norm), "lr": self.opt.param_groups[0]["lr"]})
        log.update({k: float(v) for k, v in metrics.items()})
        return log

    @torch.no_grad()
    def validate(self, batches: int = 4) -> dict[str, float]:
        self.model.eval()
        rng = self.val_data.rng.bit_generator.state
        self.val_data.rng = type(self.val_data.rng)(type(self.val_data.rng.bit_generator)(1234))
        result: dict[str, float] = {}
        xs = [self.val_data.batch() for _ in range(batches)]
        for n_q in (2, 8, 32):
            mel = 0.0
            for x in xs:
                codes = self.model.encode(x, n_q=n_q)
                y = self.model.decode(codes, length=x.shape[-1])
                mel += float(self.mel(y, x)) / batches
            result[f"val/mel_{self.cfg.model.kbps(n_q):g}kbps"] = mel
        self.val_data.rng.bit_generator.state = rng
        return result

    def save(self) -> Path:
        extra = {"config": self.cfg.to_dict(), "sampler": self.train_data.state()}
        return save_checkpoint(self.run_dir, self.step, {"generator": self.model}, {"generator": self.opt},
                               extra, keep=self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            return False
        meta = load_checkpoint(ckpts[-1], {"generator": self.model}, {"generator": self.opt})
        self.step = int(meta["step"])
        self.train_data.set_state(meta["sampler"])
        return True


def run(cfg: TrainConfig, cache: Path, run_dir: Path, max_steps: int | None = None, resume: bool = False) -> Trainer:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    trainer = Trainer(cfg, cache, run_dir)
    if resume and trainer.resume():
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    stop = {"now": False}
    previous = {s: signal.signal(s, lambda *_: stop.update(now=True)) for s in (signal.SIGINT, signal.SIGTERM)}
    last = max_steps if max_steps is not None else cfg.max_steps
    log_file = open(run_dir / "log.jsonl", "a")
    t0, s0 = time.time(), trainer.step
    try:
        while trainer.step < last and not stop["now"]:
            log = trainer.train_step()
            if trainer.step % cfg.log_every == 0:
                rate = (trainer.step - s0) / (time.time() - t0)
                log["steps_per_s"] = rate
                log_file.write(json.dumps({"step": trainer.step, **log}) + "\n")
                log_file.flush()
                print(f"step {trainer.step} total {log['total']:.3f} mel {log['rec/mel']:.3f} "
                      f"{rate:.2f} steps/s", file=sys.stderr, flush=True)
            if trainer.step % cfg.validate_every == 0:
                val = trainer.validate()
                log_file.write(json.dumps({"step": trainer.step, **val}) + "\n")
                print(f"step {trainer.step} {val}", file=sys.stderr, flush=True)
            if trainer.step % cfg.checkpoint_every == 0:
                trainer.save()
        trainer.save()
    finally:
        log_file.close()
        for s, h in previous.items():
            signal.signal(s, h)
    return trainer
