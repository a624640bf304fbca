"""One training run's state and its step: generator, discriminators, optimisers.

:meth:`Trainer.train_step` reads top to bottom: generator forward, discriminator update on
the detached output, every generator loss in a ``dict[str, Tensor]`` with namespaced keys,
then one weighted (or balanced) backward and the optimiser step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from codec.config import CodecConfig
from codec.errors import CodecError
from codec.model import Codec
from codec.quantizer import QuantizerOutput, sample_n_q
from codec.weights import load as load_release

from .balancer import Balancer
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import LossConfig, OptimConfig, TrainConfig
from .codes import CodeCropSampler
from .data import CropSampler
from .discriminators import Discriminators, at_judged_level
from .distributed import Context, gather_rng, restore_rng
from .losses import EnvelopeCorrelationLoss, MultiResolutionSTFTLoss, MultiScaleMelLoss, PhaseLoss, feature_matching, hinge_discriminator, hinge_generator

ON_AUDIO = ("rec/mel", "rec/stft", "rec/waveform", "rec/envelope", "rec/phase", "adv/gen", "adv/feat")  # computed from y
ON_CODES = ("vq/commitment",)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then exponential (halving every ``decay_steps``) or cosine decay.

    The rate of an optimiser step is its base rate times this factor of the steps it took
    before: a pure function of the config and one counter, so a resumed run follows the new
    config's rates with no scheduler state to reconcile."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    if cfg.schedule == "cosine":
        t = min(1.0, step / max(cfg.decay_steps, 1))
        return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))
    return warm * 0.5 ** (step / max(cfg.decay_steps, 1))


def _set_rate(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def loss_weights(w: LossConfig) -> dict[str, float]:
    return {
        "rec/mel": w.mel, "rec/stft": w.stft, "rec/waveform": w.waveform, "rec/envelope": w.envelope,
        "rec/phase": w.phase, "vq/commitment": w.commitment,
        "adv/gen": w.adversarial, "adv/feat": w.feature_matching,
    }


def _step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    """Everything one process of a run holds. Construct, optionally :meth:`resume` or
    :meth:`init_from`, then call :meth:`train_step` with batches of :attr:`data`."""

    def __init__(self, cfg: TrainConfig, cache: Path, run_dir: Path, ctx: Context | None = None) -> None:
        self.cfg, self.run_dir, self.ctx = cfg, Path(run_dir), ctx or Context()
        dev = self.ctx.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # same initial weights on every process
        self.gen = Codec(cfg.model).to(dev)
        self.gen.quantizer.decay = cfg.codebook_decay
        if cfg.freeze_encoder:
            self.gen.encoder.requires_grad_(False)  # (the codebooks are buffers: see train_step)
        self.weights = loss_weights(cfg.loss)
        self.disc = Discriminators(cfg.disc).to(dev) if cfg.loss.uses_discriminators else None
        self.ema = copy.deepcopy(self.gen).eval().requires_grad_(False) if cfg.optim.ema > 0 else None
        self.balancer = None
        if cfg.loss.balancer:
            on_audio = {k: self.weights[k] for k in ON_AUDIO}
            self.balancer = Balancer(on_audio, cfg.loss.balancer_ema).to(dev)
        self.mel = MultiScaleMelLoss(cfg.model.sample_rate).to(dev)
        # the optional terms exist only when weighted (the STFT one is the costliest)
        self.stft = MultiResolutionSTFTLoss().to(dev) if self.weights["rec/stft"] > 0 else None
        self.envelope = EnvelopeCorrelationLoss(cfg.model.sample_rate).to(dev) if self.weights["rec/envelope"] > 0 else None
        self.phase = PhaseLoss(shares=cfg.loss.phase_terms).to(dev) if self.weights["rec/phase"] > 0 else None
        o = cfg.optim
        trained = [p for p in self.gen.parameters() if p.requires_grad]
        # Multi-tensor updates (fused kernels on a GPU): a step of the log-mel codec is some
        # 3,000 small operations, and one per parameter tensor would add 800 more.
        multi = {"fused": True} if dev.type == "cuda" else {"foreach": True}
        self.opt_g = torch.optim.AdamW(trained, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, **multi)
        self.opt_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=o.disc_lr, betas=o.betas,
                                           weight_decay=o.weight_decay, **multi)
        self.gen_ddp, self.disc_ddp = self._wrap(self.gen), self._wrap(self.disc)
        if self.disc is not None:
            self.disc.requires_grad_(False)  # trainable only inside discriminator_step
        self.data = CropSampler(cache, cfg.data, cfg.segment, cfg.seed, self.ctx.rank)
        self.step = 0
        self.disc_steps = 0  # a discriminator that starts mid-run gets its own warm-up

    def _wrap(self, module: nn.Module | None) -> nn.Module | None:
        if module is None or not self.ctx.distributed:
            return module
        ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        # Levels beyond the largest served bitrate never run; only then are parameters unused.
        unused = isinstance(module, Codec) and max(self.cfg.model.valid_n_q) < self.cfg.model.n_q
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.cfg.optim.bf16)

    def draw_n_q(self, step: int, batch: int) -> Tensor:
        """Active codebooks per example ``[B]`` (quantizer dropout), a function of the step.

        The first example always uses them all: every process must then run every level's
        codebook update, whose broadcast is a collective operation under DDP.
        """
        g = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.ctx.rank, step, 1))
        n_q = sample_n_q(batch, self.cfg.model.valid_n_q, self.cfg.quantizer_dropout, g, self.cfg.quantizer_weights)
        n_q[0] = max(self.cfg.model.valid_n_q)
        return n_q

    def draw_bypass(self, step: int, batch: int) -> Tensor | None:
        """Examples decoded from the continuous latent ``[B]`` bool (None: quantize all)."""
        if self.cfg.quantize_prob >= 1.0:
            return None
        g = torch.Generator().manual_seed(_step_seed(self.cfg.seed, self.ctx.rank, step, 2))
        return torch.rand(batch, generator=g) >= self.cfg.quantize_prob

    # The step -----------------------------------------------------------------------
    def use_codes(self, folder: Path) -> None:
        """Train on the cached crops and codes in ``folder`` (:mod:`train.codes`) from now on."""
        self.data = CodeCropSampler(folder, self.cfg, self.ctx.rank)

    def train_step(self, batch: Tensor | tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """One optimisation step on crops ``[B, 1, T]`` (or crops and their codes ``[B, K,
        F]``, from a code cache). Returns every loss term, gradient norm, learning rate and
        codebook metric of the step (detached scalars)."""
        audio, codes = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x = audio.to(self.ctx.device, non_blocking=True)
        n_q = self.draw_n_q(self.step, x.shape[0]).to(self.ctx.device)
        adversarial = self.disc is not None and self.step >= self.cfg.loss.adversarial_start_step
        self.gen.train()
        if self.cfg.freeze_encoder:
            if not bool(self.gen.quantizer.initialized):
                raise CodecError("freeze_encoder trains the decoder of trained weights: start with --init or --resume")
            # eval mode: the quantizer neither updates nor re-seeds its codebooks
            self.gen.encoder.eval()
            self.gen.quantizer.eval()
        bypass = self.draw_bypass(self.step, x.shape[0])
        with self.autocast():
            out = self.gen_ddp(x, n_q, bypass, None if codes is None else codes.to(self.ctx.device))
        y = out.audio.float()  # [B, 1, T]
        log: dict[str, Tensor] = {}
        if adversarial:
            log.update(self.discriminator_step(x, y.detach()))
        heard = adversarial and self.disc_steps > self.cfg.loss.disc_warmup_steps
        losses = self.generator_losses(x, y, out.quantized, heard)
        log.update(self.generator_update(losses, y))
        self.step += 1
        log.update({k: v.detach() for k, v in losses.items()})
        log.update({f"codebook/{k}": v.detach() for k, v in out.quantized.metrics.items()})
        return log

    def discriminator_step(self, x: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Hinge loss on real ``x`` and generated ``fake`` ``[B, 1, T]`` (one forward of both,
        as DDP wants one forward per backward), then the discriminators' optimiser step."""
        assert self.disc is not None and self.opt_d is not None
        self.disc.requires_grad_(True)
        x, fake = at_judged_level(x, fake)
        with self.autocast():
            judged = self.disc_ddp(torch.cat([x, fake]))
        real = [(logits.float().chunk(2)[0], []) for logits, _ in judged]
        gen = [(logits.float().chunk(2)[1], []) for logits, _ in judged]
        loss = hinge_discriminator(real, gen)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.optim.grad_clip)
        lr = _set_rate(self.opt_d, self.cfg.optim.disc_lr * lr_factor(self.disc_steps, self.cfg.optim))
        self.opt_d.step()
        self.disc_steps += 1
        self.disc.requires_grad_(False)
        return {"disc/hinge": loss.detach(), "grad/disc": norm.detach(), "lr/disc": torch.tensor(lr)}

    def generator_losses(self, x: Tensor, y: Tensor, q: QuantizerOutput, adversarial: bool) -> dict[str, Tensor]:
        """Every generator loss term of original ``x`` and output ``y`` ``[B, 1, T]``."""
        losses = {
            "rec/mel": self.mel(y, x),
            "rec/waveform": (y - x).abs().mean(),
            "vq/commitment": q.commitment_loss.float(),
        }
        if self.stft is not None:
            losses["rec/stft"] = self.stft(y, x)
        if self.envelope is not None:
            losses["rec/envelope"] = self.envelope(y, x)
        if self.phase is not None:
            losses["rec/phase"] = self.phase(y, x)
        if adversarial:
            assert self.disc is not None
            # The bare module, frozen: no DDP hooks, no gradients into the discriminators.
            x_judged, y_judged = at_judged_level(x, y)
            with self.autocast():
                with torch.no_grad():
                    real = self.disc(x_judged)
                fake = self.disc(y_judged)
            losses["adv/gen"] = hinge_generator(fake).float()
            losses["adv/feat"] = feature_matching(real, fake).float()
        return losses

    def generator_update(self, losses: dict[str, Tensor], y: Tensor) -> dict[str, Tensor]:
        """Backward of the weighted losses (or the balanced gradient), clip, step, EMA."""
        total = sum(self.weights[k] * v for k, v in losses.items())
        log: dict[str, Tensor] = {"total": total.detach()}
        self.opt_g.zero_grad(set_to_none=True)
        if self.balancer is not None:
            grad_y, norms = self.balancer.gradient(losses, y)
            on_codes = sum(self.weights[k] * losses[k] for k in ON_CODES)
            # One backward for both parts: DDP reduces gradients once per forward.
            if on_codes.requires_grad:
                torch.autograd.backward([y, on_codes], [grad_y, None])
            else:  # the encoder is frozen: nothing upstream of the codes learns
                y.backward(grad_y)
            log.update({f"grad/{k}": v for k, v in norms.items()})
        else:
            total.backward()
        log["grad/gen"] = torch.nn.utils.clip_grad_norm_(self.gen.parameters(), self.cfg.optim.grad_clip).detach()
        log["lr/gen"] = torch.tensor(_set_rate(self.opt_g, self.cfg.optim.lr * lr_factor(self.step, self.cfg.optim)))
        self.opt_g.step()
        if self.ema is not None:
            self._update_ema()
        return log

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None
        # One multi-tensor kernel per list, not one per tensor (a GPU step is launch-bound).
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.gen.parameters()), 1.0 - self.cfg.optim.ema)
        torch._foreach_copy_(list(self.ema.buffers()), list(self.gen.buffers()))  # codebook usage and
        # initialisation flags are not averaged

    @property
    def release_model(self) -> Codec:
        """The generator a release would ship: its EMA copy when the run keeps one."""
        return self.ema if self.ema is not None else self.gen

    # State --------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        named = {"generator": self.gen, "disc": self.disc, "ema": self.ema, "balancer": self.balancer}
        return {k: m for k, m in named.items() if m is not None}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g} | ({"disc": self.opt_d} if self.opt_d is not None else {})

    def save(self) -> Path | None:
        """Checkpoint (every process must call it: RNG states are gathered); rank 0 writes."""
        rng = gather_rng(self.ctx)
        if not self.ctx.is_main:
            return None
        extra = {
            "config": self.cfg.to_dict(),
            "world_size": self.ctx.world_size,
            "disc_steps": self.disc_steps,
        }
        return save_checkpoint(self.run_dir, self.step, self.modules(), self.optimizers(), extra,
                               keep=self.cfg.keep_checkpoints, tensors=rng)

    def resume(self) -> bool:
        """Continue from the newest checkpoint of the run folder; False if there is none."""
        ckpts = list_checkpoints(self.run_dir)
        if not ckpts:
            return False
        _check_architecture(ckpts[-1].name, ckpts[-1] / "state.json", self.cfg)
        try:
            meta, tensors = load_checkpoint(ckpts[-1], self.modules(), self.optimizers())
        except (RuntimeError, KeyError, ValueError) as exc:  # e.g. discriminators resized since
            first = str(exc).strip().splitlines()[0]
            raise CodecError(f"cannot resume from {ckpts[-1]}: it does not match the config ({first})") from None
        self.step = int(meta["step"])
        saved = meta["config"]["model"]
        self._keep_release_settings(int(saved.get("output_delay", 0)), tuple(saved.get("lowband_levels", ())),
                                    saved.get("lowband_coding", "fixed"))
        # Older checkpoints kept the count as their discriminator scheduler's last_epoch.
        old = meta.get("schedulers", {}).get("disc", {}).get("last_epoch", 0)
        self.disc_steps = int(meta.get("disc_steps", old))
        if "ema" in meta["missing"] and self.ema is not None:
            self.ema.load_state_dict(self.gen.state_dict())
        restore_rng(tensors, self.ctx)
        return True

    def init_from(self, name_or_path: str) -> None:
        """Start from release weights (a built-in model name or a ``.safetensors`` file): all
        of them, or with ``freeze_encoder`` and another decoder, the encoder and codebooks."""
        release = load_release(name_or_path)
        reads_band = self.cfg.model.decoder_lowband_bins
        if release.cfg.same_architecture(self.cfg.model):
            self.gen.load_state_dict(release.state_dict())
        elif reads_band and not release.cfg.decoder_lowband_bins and release.cfg.same_architecture(
                dataclasses.replace(self.cfg.model, decoder_lowband_bins=0)):
            # a decoder that will read the low band, from one that did not: its first layer
            # gets zero weights for the new inputs, so it starts as the release decodes
            state = release.state_dict()
            first = state[FIRST_DECODER_WEIGHT]
            state[FIRST_DECODER_WEIGHT] = torch.cat([first, first.new_zeros(first.shape[0], reads_band, first.shape[2])], dim=1)
            self.gen.load_state_dict(state)
        elif self.cfg.freeze_encoder and release.cfg.same_encoder(self.cfg.model):
            # a new decoder learns from the release's frozen encoder and codebooks
            self.gen.encoder.load_state_dict(release.encoder.state_dict())
            self.gen.quantizer.load_state_dict(release.quantizer.state_dict())
        else:
            raise CodecError(f"cannot start from {name_or_path}: its architecture differs from the config's model")
        if self.ema is not None:
            self.ema.load_state_dict(self.gen.state_dict())
        self._keep_release_settings(release.cfg.output_delay, release.cfg.lowband_levels, release.cfg.lowband_coding)

    def _keep_release_settings(self, delay: int, lowband: tuple[int, ...], coding: str) -> None:
        """Carry the weights' measured output delay (a property of their decoder) and their
        low band (codec/lowband.py: which bitrates code it, and how) into this run's config,
        and so into its checkpoints and exports, unless the recipe sets them (``lowband_levels:
        [0, 0, 0, 0, 0]`` for none; a recipe's own levels keep its own coding): a run from the
        shipped model validates and exports a model that codes as it does."""
        model = self.cfg.model
        if delay and not model.output_delay:
            model = dataclasses.replace(model, output_delay=delay)
        if any(lowband) and model.lowband_levels == ():
            try:
                model = dataclasses.replace(model, lowband_levels=lowband, lowband_coding=coding)
            except ValueError as exc:
                raise CodecError(f"the weights' low band does not fit the config's model: {exc}") from None
        if model == self.cfg.model:
            return
        self.cfg = dataclasses.replace(self.cfg, model=model)
        for codec in (self.gen, self.ema):  # (the low band has no weights: the same networks)
            if codec is not None:
                codec.set_lowband(model.lowband_levels, model.output_delay, model.lowband_coding)


FIRST_DECODER_WEIGHT = "decoder.0.conv.weight"  # the spectral decoder's input layer [dim, inputs, kernel]


def _check_architecture(name: str, state_json: Path, cfg: TrainConfig) -> None:
    saved = CodecConfig.from_dict(json.loads(state_json.read_text())["config"]["model"])
    if not saved.same_architecture(cfg.model):
        raise CodecError(f"cannot resume from {name}: the config's model differs from the checkpoint's")

