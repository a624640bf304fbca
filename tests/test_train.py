"""Training on synthetic audio with the tiny recipe: every loss term, overfitting one clip,
exact resume, stopping on a signal, starting from release weights, export."""

from __future__ import annotations

import dataclasses
import json
import math
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from codec import Codec, CodecError, load, save_model
from codec.native import int8_rows
from train.config import DiscConfig, TrainConfig
from train.checkpoint import list_checkpoints
from train.codes import CodeCropSampler, ensure_code_cache
from train.export import export_run
from train.loop import run
from train.prepare import build_cache
from train.trainer import Trainer, lr_factor
from train_support import CONFIGS, interrupt_after_step, tiny_config, write_corpus

ALL_TERMS = {"rec/mel", "rec/stft", "rec/waveform", "vq/commitment", "adv/gen", "adv/feat", "disc/hinge"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    build_cache(write_corpus(root / "data", speech=4, music=3), root / "cache", 8000, workers=1)
    return root / "cache"


def losses_by_step(run_dir) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("speed/")} for r in rows if "total" in r}


def test_one_step_has_every_loss_term_finite(cache, tmp_path):
    cfg = tiny_config(loss={"adversarial_start_step": 0, "envelope": 1.0, "phase": 1.0})
    trainer = Trainer(cfg, cache, tmp_path)
    before = [p.detach().clone() for p in trainer.disc.parameters()]
    log = trainer.train_step(trainer.data.batch(0))
    assert ALL_TERMS | {"rec/envelope", "rec/phase"} <= set(log)
    assert {"grad/gen", "grad/disc", "lr/gen", "total", "codebook/usage/q3", "codebook/perplexity/q0"} <= set(log)
    assert all(math.isfinite(float(v)) for v in log.values()), log
    assert trainer.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.disc.parameters()))  # discriminators learn


def test_adversarial_terms_wait_for_the_warm_up(cache, tmp_path):
    trainer = Trainer(tiny_config(loss={"adversarial_start_step": 1}), cache, tmp_path)
    first, second = trainer.train_step(trainer.data.batch(0)), trainer.train_step(trainer.data.batch(1))
    assert "adv/gen" not in first and "disc/hinge" not in first
    assert {"adv/gen", "adv/feat", "disc/hinge"} <= set(second)


def test_generator_hears_the_discriminators_after_their_warm_up(cache, tmp_path):
    trainer = Trainer(tiny_config(loss={"adversarial_start_step": 0, "disc_warmup_steps": 2}), cache, tmp_path)
    logs = [trainer.train_step(trainer.data.batch(s)) for s in range(3)]
    assert all("disc/hinge" in log for log in logs)  # the discriminators learn from the start
    assert ["adv/gen" in log for log in logs] == [False, False, True]


@pytest.mark.parametrize("balancer", [False, True])
def test_frozen_encoder_trains_the_decoder_alone(cache, tmp_path, balancer):
    """The codes must not change: encoder weights and codebooks stay, the decoder learns."""
    cfg = tiny_config(loss={"adversarial_start_step": 0, "balancer": balancer}, top={"freeze_encoder": True})
    trainer = Trainer(cfg, cache, tmp_path)
    trainer.gen.quantizer.initialized.fill_(True)  # as after --init from a release
    before = {k: v.clone() for k, v in trainer.gen.state_dict().items()}
    for s in range(2):
        log = trainer.train_step(trainer.data.batch(s))
    assert math.isfinite(float(log["total"]))
    after = trainer.gen.state_dict()
    frozen = [k for k in after if k.startswith(("encoder.", "quantizer."))]
    assert any(k.startswith("quantizer.codebooks") for k in frozen)
    for key in frozen:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("decoder."))
    assert trainer.gen.training and trainer.gen.decoder.training  # (left in train mode for the next step)


def test_frozen_encoder_needs_trained_codebooks(cache, tmp_path):
    trainer = Trainer(tiny_config(top={"freeze_encoder": True}), cache, tmp_path)
    with pytest.raises(CodecError, match="--init or --resume"):
        trainer.train_step(trainer.data.batch(0))


def test_tiny_model_overfits_one_clip(tmp_path):
    (tmp_path / "d").mkdir()
    t = np.arange(2048) / 8000
    noise = 0.02 * np.random.default_rng(0).standard_normal(len(t))
    x = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1100 * t) + noise
    sf.write(str(tmp_path / "d" / "clip.wav"), x.astype(np.float32), 8000)
    build_cache(tmp_path / "d", tmp_path / "c", 8000, workers=1)
    cfg = tiny_config(
        data={"val_fraction": 0.0, "gain_db": (0.0, 0.0), "batch_size": 1},  # the same crop every step
        loss={"adversarial": 0.0, "feature_matching": 0.0}, top={"quantizer_dropout": 0.0, "quantize_prob": 1.0},
    )
    trainer = Trainer(cfg, tmp_path / "c", tmp_path / "run")
    mel = [float(trainer.train_step(trainer.data.batch(s))["rec/mel"]) for s in range(100)]
    assert min(mel[-5:]) <= 0.5 * mel[0], mel


def test_codebook_decay_sets_how_fast_the_codebooks_follow(cache, tmp_path):
    """Step 1 initialises the codebooks (k-means); step 2 is the first EMA update, which moves
    the statistics by (1 - decay) of the way to the batch's."""
    moved = {}
    for decay in (0.9, 0.999):
        trainer = Trainer(tiny_config(top={"codebook_decay": decay}), cache, tmp_path / str(decay))
        assert trainer.gen.quantizer.decay == decay
        trainer.train_step(trainer.data.batch(0))
        before = trainer.gen.quantizer.embed_sum.clone()
        trainer.train_step(trainer.data.batch(1))
        moved[decay] = float((trainer.gen.quantizer.embed_sum - before).abs().median())
    assert 0 < moved[0.999] < 0.05 * moved[0.9], moved
    with pytest.raises(ValueError, match="codebook_decay"):
        tiny_config(top={"codebook_decay": 1.0})


def test_phase_terms_reach_the_phase_loss_and_bad_ones_are_refused(cache, tmp_path):
    trainer = Trainer(tiny_config(loss={"phase": 1.0, "phase_terms": (0.0, 1.0, 2.0)}), cache, tmp_path)
    assert trainer.phase is not None and trainer.phase.shares == (0.0, 1.0, 2.0)
    for terms in ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0), (1.0, 1.0), (math.nan, 1.0, 1.0), (0.0, 0.0, math.inf)):
        with pytest.raises(ValueError, match="phase_terms"):
            tiny_config(loss={"phase_terms": terms})


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(cache, tmp_path):
    # Every kind of state: discriminators starting mid-way, balancer averages, EMA weights; a
    # warm-up long enough that a learning rate one step off would change the losses.
    cfg = tiny_config(loss={"adversarial_start_step": 2, "balancer": True}, optim={"ema": 0.9, "warmup_steps": 8},
                      top={"checkpoint_every": 100})
    run(cfg, cache, tmp_path / "whole", max_steps=6, progress=False)
    first = run(cfg, cache, tmp_path / "split", max_steps=3, progress=False)
    assert first.step == 3 and first.checkpoint is not None
    second = run(cfg, cache, tmp_path / "split", max_steps=6, resume=True, progress=False)
    assert second.step == 6
    whole, split = losses_by_step(tmp_path / "whole"), losses_by_step(tmp_path / "split")
    assert sorted(whole) == sorted(split) == [1, 2, 3, 4, 5, 6]
    assert ALL_TERMS | {"grad/rec/mel", "grad/adv/gen"} <= set(whole[6])
    for step in whole:
        assert whole[step] == pytest.approx(split[step], rel=1e-5, abs=1e-6), step
    a = load_file(str(list_checkpoints(tmp_path / "whole")[-1] / "tensors.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "split")[-1] / "tensors.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(k.startswith("disc.") for k in a)
    for key in a:
        if not key.startswith("rng."):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_generator_ema_follows_each_step_and_copies_the_buffers(cache, tmp_path):
    """After a step, each averaged weight is ema * its old value + (1 - ema) * the new weight;
    buffers (codebooks, their statistics, flags) are the generator's own."""
    trainer = Trainer(tiny_config(optim={"ema": 0.9}), cache, tmp_path)
    trainer.train_step(trainer.data.batch(0))  # k-means initialisation
    old = {k: v.clone() for k, v in trainer.ema.named_parameters()}
    trainer.train_step(trainer.data.batch(1))
    new = dict(trainer.gen.named_parameters())
    moved = 0
    for k, avg in trainer.ema.named_parameters():
        torch.testing.assert_close(avg, 0.9 * old[k] + 0.1 * new[k], msg=k)
        moved += int(not torch.equal(avg, old[k]))
    assert moved > 0
    for (k, avg), b in zip(trainer.ema.named_buffers(), trainer.gen.buffers()):
        assert torch.equal(avg, b), k


def test_resume_takes_the_learning_rates_of_the_new_config(cache, tmp_path):
    """A later phase may change the rates; nothing saved may keep the old ones."""
    cfg = tiny_config(loss={"adversarial_start_step": 1}, top={"checkpoint_every": 100}, optim={"warmup_steps": 8})
    run(cfg, cache, tmp_path, max_steps=3, progress=False)
    faster = tiny_config(loss={"adversarial_start_step": 1}, top={"checkpoint_every": 100},
                         optim={"lr": 4 * cfg.optim.lr, "disc_lr": 3 * cfg.optim.disc_lr, "warmup_steps": 8})
    new = Trainer(faster, cache, tmp_path)
    assert new.resume() and (new.step, new.disc_steps) == (3, 2)
    for step in (3, 4):  # the step right after resuming, and the one after it
        log = new.train_step(new.data.batch(step))
        assert float(log["lr/gen"]) == pytest.approx(4 * cfg.optim.lr * lr_factor(step, cfg.optim))
        assert float(log["lr/disc"]) == pytest.approx(3 * cfg.optim.disc_lr * lr_factor(step - 1, cfg.optim))


def test_resume_takes_the_betas_and_weight_decay_of_the_new_config_and_the_saved_moments(cache, tmp_path):
    cfg = tiny_config(top={"checkpoint_every": 100})
    first = run(cfg, cache, tmp_path, max_steps=2, progress=False)
    saved = load_file(str(first.checkpoint / "tensors.safetensors"))
    other = tiny_config(top={"checkpoint_every": 100}, optim={"betas": [0.5, 0.9], "weight_decay": 0.1})
    trainer = Trainer(other, cache, tmp_path)
    assert trainer.resume()
    for group in trainer.opt_g.param_groups:
        assert tuple(group["betas"]) == (0.5, 0.9) and group["weight_decay"] == 0.1
    moments = [(k, v) for k, v in saved.items() if k.startswith("optim_generator.state.") and k.endswith(".exp_avg")]
    assert moments
    params = [p for group in trainer.opt_g.param_groups for p in group["params"]]
    for key, value in moments:
        torch.testing.assert_close(trainer.opt_g.state[params[int(key.split(".")[2])]]["exp_avg"], value, msg=key)


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(cache, tmp_path):
    cfg = tiny_config(top={"checkpoint_every": 100})
    run(cfg, cache, tmp_path, max_steps=2, progress=False)
    with pytest.raises(CodecError, match="--resume"):
        run(cfg, cache, tmp_path, max_steps=1, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]


def test_resume_reads_the_discriminator_steps_of_older_checkpoints(cache, tmp_path):
    """Checkpoints written before the count was saved kept it in a scheduler's state."""
    cfg = tiny_config(loss={"adversarial_start_step": 1}, top={"checkpoint_every": 100}, optim={"warmup_steps": 8})
    run(cfg, cache, tmp_path, max_steps=3, progress=False)
    state_json = list_checkpoints(tmp_path)[-1] / "state.json"
    state = json.loads(state_json.read_text())
    del state["disc_steps"]
    state["schedulers"] = {"generator": {"last_epoch": 3}, "disc": {"last_epoch": 2}}
    state_json.write_text(json.dumps(state))
    trainer = Trainer(cfg, cache, tmp_path)
    assert trainer.resume() and trainer.disc_steps == 2
    log = trainer.train_step(trainer.data.batch(3))
    assert float(log["lr/disc"]) == pytest.approx(cfg.optim.disc_lr * lr_factor(2, cfg.optim))


def test_signal_stops_with_a_checkpoint_and_old_ones_are_pruned(cache, tmp_path, monkeypatch):
    cfg = tiny_config(top={"checkpoint_every": 1, "keep_checkpoints": 2})
    interrupt_after_step(monkeypatch, 4)
    result = run(cfg, cache, tmp_path, max_steps=50, progress=False)
    assert result.stopped and result.step == 4 and result.signal == signal.SIGINT
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    state = json.loads((tmp_path / "step_00000004" / "state.json").read_text())
    assert state["step"] == 4 and state["disc_steps"] == 4 - cfg.loss.adversarial_start_step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_export_then_init_a_new_run_from_the_release(cache, tmp_path):
    cfg = tiny_config(top={"validate_every": 2})
    run(cfg, cache, tmp_path / "a", max_steps=2, progress=False)
    release = export_run(tmp_path / "a", tmp_path / "tiny.safetensors", name="tiny-test")
    model = load(release)
    assert model.cfg.name == "tiny-test" and model.cfg.n_q == 4
    tensors = load_file(str(release))
    assert not any(k.startswith(("optim", "disc", "rng")) for k in tensors)
    # the live frames' narrow products are int8 rows (the decoder's first convolution runs on one frame)
    first = model.decoder[0].conv.weight
    assert int8_rows(first.reshape(first.shape[0], -1)) is not None
    validation = [json.loads(r) for r in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if "val/si_sdr/32kbps" in r]
    assert validation and "val/mel_distance/8kbps" in validation[0] and "val/pesq_wb/16kbps" in validation[0]
    trainer = Trainer(cfg, cache, tmp_path / "b")
    trainer.init_from(str(release))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(trainer.gen.state_dict()[key], value, msg=key)


def test_init_from_a_release_with_another_postfilter(cache, tmp_path):
    """The postfilter has no weights: a release that uses it (as the built-in one does)
    starts a run whose config sets another strength; the run keeps its config's."""
    cfg = tiny_config()
    run(cfg, cache, tmp_path / "a", max_steps=1, progress=False)
    model = load(export_run(tmp_path / "a", tmp_path / "tiny.safetensors"))
    filtered = Codec(dataclasses.replace(model.cfg, postfilter=0.5))
    filtered.load_state_dict(model.state_dict())
    save_model(filtered, tmp_path / "filtered.safetensors")
    trainer = Trainer(cfg, cache, tmp_path / "b")
    trainer.init_from(str(tmp_path / "filtered.safetensors"))
    assert trainer.gen.cfg.postfilter == cfg.model.postfilter == 0.0


def test_a_new_decoder_starts_from_a_release_encoder(cache, tmp_path):
    """freeze_encoder with another decoder: the run takes the release's encoder and codebooks
    (so its codes are the release's), its decoder learns from scratch; without freezing the
    encoder the release is refused."""
    run(tiny_config(), cache, tmp_path / "a", max_steps=1, progress=False)
    release = load(export_run(tmp_path / "a", tmp_path / "tiny.safetensors"))
    spectral = {"decoder": "spectral", "decoder_dim": 8, "decoder_layers": 2}
    cfg = tiny_config(model=spectral, top={"freeze_encoder": True})
    trainer = Trainer(cfg, cache, tmp_path / "b")
    trainer.init_from(str(tmp_path / "tiny.safetensors"))
    for name in ("encoder", "quantizer"):
        for key, value in getattr(release, name).state_dict().items():
            torch.testing.assert_close(getattr(trainer.gen, name).state_dict()[key], value, msg=key)
    x = trainer.data.batch(0)
    assert torch.equal(trainer.gen.encode(x, n_q=4), release.encode(x, n_q=4))
    decoder = [p.detach().clone() for p in trainer.gen.decoder.parameters()]
    encoder = [p.detach().clone() for p in trainer.gen.encoder.parameters()]
    trainer.train_step(x)
    assert any(not torch.equal(a, b) for a, b in zip(decoder, trainer.gen.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(encoder, trainer.gen.encoder.parameters()))
    trainer.save()  # and its export codes as the release did
    exported = load(export_run(tmp_path / "b", tmp_path / "spectral.safetensors"))
    assert exported.cfg.decoder == "spectral"
    assert torch.equal(exported.encode(x, n_q=4), release.encode(x, n_q=4))
    assert exported.decode(release.encode(x, n_q=4)).shape == x.shape
    with pytest.raises(CodecError, match="architecture"):
        Trainer(tiny_config(model=spectral), cache, tmp_path / "c").init_from(str(tmp_path / "tiny.safetensors"))


def test_a_code_cache_trains_the_decoder_on_the_release_codes(cache, tmp_path):
    """data.code_crops: crops drawn once and encoded by the frozen encoder with every level;
    the steps take windows of them with their codes and train the decoder alone. A resumed
    run keeps the cache; a cache of other weights is rebuilt."""
    run(tiny_config(), cache, tmp_path / "a", max_steps=1, progress=False)
    release_file = export_run(tmp_path / "a", tmp_path / "tiny.safetensors")
    release = load(release_file)
    spectral = {"decoder": "spectral", "decoder_dim": 8, "decoder_layers": 2}
    cfg = tiny_config(model=spectral, data={"code_crops": 6, "code_crop_seconds": 0.5}, top={"freeze_encoder": True})
    run(cfg, cache, tmp_path / "b", max_steps=2, init=str(release_file), progress=False)
    folder = tmp_path / "b" / "codes"
    audio, codes = np.load(folder / "audio.npy"), np.load(folder / "codes.npy")
    assert audio.shape == (6, 4000) and codes.shape == (6, 4, 1000)
    assert len({bytes(a) for a in audio}) == 6 and np.abs(audio).max() > 1000  # six crops of audio, not silence
    x = torch.from_numpy(audio.astype(np.float32) / 32767)[:, None]
    assert torch.equal(release.encode(x, n_q=4, levels_only=True)[:, 0], torch.from_numpy(codes.astype(np.int64)))
    crops, window = CodeCropSampler(folder, cfg).batch(5)
    assert crops.shape == (4, 1, 2048) and window.shape == (4, 4, 512)
    found = [[i for i in range(6) for s in range(0, 4000 - 2047, 4)
              if np.array_equal(audio[i, s : s + 2048], np.round(c[0].numpy() * 32767))
              and np.array_equal(codes[i, :, s // 4 : s // 4 + 512], w.numpy())] for c, w in zip(crops, window)]
    assert all(len(f) >= 1 for f in found)  # each window is a cached crop's audio with its own codes
    logged = losses_by_step(tmp_path / "b")
    assert sorted(logged) == [1, 2] and all(math.isfinite(row["rec/mel"]) for row in logged.values())
    assert logged[2]["rec/mel"] != logged[1]["rec/mel"]
    trained = load(export_run(tmp_path / "b", tmp_path / "b.safetensors", int8=False))
    assert torch.equal(trained.encode(x, n_q=4), release.encode(x, n_q=4))
    meta = folder / "meta.json"
    stamp = meta.stat().st_mtime_ns
    run(cfg, cache, tmp_path / "b", max_steps=3, resume=True, progress=False)
    assert meta.stat().st_mtime_ns == stamp
    meta.write_text(meta.read_text().replace(json.loads(meta.read_text())["codes_fingerprint"], "0" * 64))
    run(cfg, cache, tmp_path / "b", max_steps=4, resume=True, progress=False)
    assert json.loads(meta.read_text())["codes_fingerprint"] != "0" * 64
    with pytest.raises(ValueError, match="freeze_encoder"):
        tiny_config(data={"code_crops": 6})
    with pytest.raises(ValueError, match="quantize_prob"):
        tiny_config(data={"code_crops": 6}, top={"freeze_encoder": True, "quantize_prob": 0.8})
    fresh = Trainer(cfg, cache, tmp_path / "c")  # no --init: nothing trained to encode with
    with pytest.raises(CodecError, match="--init"):
        ensure_code_cache(fresh.gen, cfg, cache, tmp_path / "c" / "codes")
    assert not (tmp_path / "c" / "codes").exists()


def test_init_from_a_release_of_another_architecture_is_refused(cache, tmp_path):
    trainer = Trainer(tiny_config(), cache, tmp_path)
    with pytest.raises(CodecError, match="architecture"):
        trainer.init_from("rvq24k")


def test_shipped_configs_load_and_seanet24k_continues_the_release_architecture():
    configs = {p.stem: TrainConfig.from_yaml(p) for p in CONFIGS.glob("*.yaml")}
    phases = ("interim24k", "interim24k-anneal", "interim24k-envelope", "general24k-finetune", "general24k-finetune2")
    assert {"tiny", "speech16k", "general24k", "seanet24k", *phases} <= set(configs)
    seanet, interim = configs["seanet24k"], configs["interim24k"]
    # The same architecture, so that each later phase of the SEANet model can resume the
    # run of the one before (and --init takes v8's weights, from git history).
    assert seanet.model.same_architecture(interim.model)
    for phase in phases:
        assert configs[phase].model.same_architecture(interim.model)
    assert configs["interim24k-envelope"].loss.envelope > 0
    assert seanet.loss.uses_discriminators and seanet.loss.adversarial_start_step > 0
    assert configs["general24k-finetune"].loss.uses_discriminators
    assert configs["general24k-finetune2"].codebook_decay > configs["general24k-finetune"].codebook_decay
    # each later phase names what it changes; the rest comes from the phase before (base:)
    anneal, envelope = configs["interim24k-anneal"], configs["interim24k-envelope"]
    assert anneal.quantize_prob == interim.quantize_prob < 1 and anneal.loss.waveform < interim.loss.waveform
    assert envelope.loss.waveform == anneal.loss.waveform and envelope.optim.decay_steps == anneal.optim.decay_steps
    assert envelope.data.category_weights == anneal.data.category_weights != interim.data.category_weights
    finetune, finetune2 = configs["general24k-finetune"], configs["general24k-finetune2"]
    assert finetune2.loss == finetune.loss and finetune2.optim == finetune.optim
    assert finetune2.data.gain_db[0] < finetune.data.gain_db[0]
    assert configs["speech16k"].model.sample_rate == 16000
    # a spectral decoder for the shipped encoder and codebooks
    spectral = configs["spectral24k"]
    assert spectral.freeze_encoder and spectral.model.decoder == "spectral"
    assert spectral.model.same_encoder(interim.model) and not spectral.model.same_architecture(interim.model)
    assert spectral.model.same_architecture(load("rvq24k-v10").cfg)  # v10's recipe: --init rvq24k-v10 continues it
    # its adversarial fine-tuning: the same decoder, the same cached codes, discriminators on
    gan = configs["spectral24k-gan"]
    assert gan.model.same_architecture(spectral.model) and gan.freeze_encoder and gan.data.code_crops
    assert gan.loss.uses_discriminators and gan.optim.lr < spectral.optim.lr
    # its phase-aware fine-tuning: phase 6's terms (from its base recipe) and the phase loss
    phase = configs["spectral24k-phase"]
    assert phase.model.same_architecture(spectral.model) and phase.freeze_encoder and phase.data.code_crops
    assert phase.loss.phase > 0 and phase.loss.envelope == spectral.loss.envelope and not phase.loss.uses_discriminators
    assert phase.optim.lr < spectral.optim.lr
    # the GPU recipe: all of v10 trained on (--init rvq24k-v10), discriminators on
    gpu = configs["general24k-spectral"]
    assert gpu.model.same_architecture(load("rvq24k-v10").cfg) and not gpu.freeze_encoder and not gpu.data.code_crops
    assert gpu.loss.uses_discriminators and gpu.loss.commitment > 0 and gpu.loss.phase == phase.loss.phase
    assert gpu.disc.stft_channels > seanet.disc.stft_channels
    # the shipped default's recipe: the log-mel front end, no encoder to freeze
    logmel = configs["logmel24k"]
    assert logmel.model.encoder == "logmel" and logmel.model.same_architecture(load("rvq24k-v18").cfg)
    # the default's: a decoder that also reads the low band, started from v18 or continuing v19
    lowband = configs["logmel24k-lowband"]
    assert lowband.model.decoder_lowband_bins and lowband.model.same_architecture(load().cfg)
    assert not logmel.freeze_encoder and not logmel.data.code_crops
    # its last stretch (resumed in place): a cosine ending at the run's end, louder crops
    anneal = configs["logmel24k-anneal"]
    assert anneal.model == logmel.model and anneal.loss == logmel.loss
    assert anneal.optim.schedule == "cosine" and anneal.optim.decay_steps == anneal.max_steps
    assert anneal.data.gain_db[0] > logmel.data.gain_db[0] and anneal.data.gain_db[1] > logmel.data.gain_db[1]
    # the same on a GPU (train.timed sizes its cosine), and with discriminators
    gpu_mel, gan_mel = configs["logmel24k-gpu"], configs["logmel24k-gan"]
    assert gpu_mel.model == gan_mel.model == logmel.model and gpu_mel.loss == logmel.loss
    assert gpu_mel.data.batch_size == 4 * logmel.data.batch_size and gpu_mel.optim.schedule == "cosine"
    assert gan_mel.loss.uses_discriminators and gan_mel.loss.disc_warmup_steps > 0 and gan_mel.optim == gpu_mel.optim
    # the default's decoder (reading the low band) with discriminators, at the GPU recipe's batch
    arith, gan_low = configs["logmel24k-lowband-arith"], configs["logmel24k-lowband-gan"]
    assert gan_low.model == arith.model and gan_low.model.same_architecture(load().cfg) and gan_low.freeze_encoder
    assert gan_low.loss.uses_discriminators and gan_low.loss.disc_warmup_steps > 0 and not arith.loss.uses_discriminators
    assert gan_low.disc == DiscConfig()  # full width, as logmel24k-gan.yaml's
    assert dataclasses.replace(gan_low.loss, adversarial=0.0, feature_matching=0.0, disc_warmup_steps=0) == arith.loss
    assert gan_low.data.batch_size == gpu_mel.data.batch_size and gan_low.optim.lr == arith.optim.lr
    # v14's decoder taught the phase advance: the codebooks kept (v14's files decode), no absolute phase
    refit, phase_mel = configs["logmel24k-refit"], configs["logmel24k-phase"]
    assert phase_mel.model == refit.model and phase_mel.freeze_encoder and phase_mel.loss.phase > 0
    assert isinstance(phase_mel.loss.phase_terms, tuple)  # (a YAML list, made a tuple)
    assert phase_mel.loss.phase_terms[0] == 0 and min(phase_mel.loss.phase_terms[1:]) > 0
    assert dataclasses.replace(phase_mel.loss, phase=0.0, phase_terms=(1.0, 1.0, 1.0)) == refit.loss
    # v15's decoder taught further: the same recipe, a heavier phase loss, a fixed cosine run
    phase6 = configs["logmel24k-phase6"]
    assert phase6.model == phase_mel.model and phase6.freeze_encoder and phase6.optim.lr == phase_mel.optim.lr
    assert phase6.loss.phase > phase_mel.loss.phase and dataclasses.replace(phase6.loss, phase=phase_mel.loss.phase) == phase_mel.loss
    assert phase6.optim.schedule == "cosine" and phase6.optim.decay_steps == phase6.max_steps
    assert phase6.keep_checkpoints * phase6.checkpoint_every >= phase6.max_steps  # every checkpoint kept
    # and v16's further still: the same losses and codebooks, a new cosine from a lower peak
    cont = configs["logmel24k-phase6-cont"]
    assert cont.model == phase6.model and cont.freeze_encoder and cont.loss == phase6.loss
    assert cont.optim.lr < phase6.optim.lr and cont.optim.decay_steps == cont.max_steps
    assert cont.keep_checkpoints * cont.checkpoint_every >= cont.max_steps


def test_general24k_is_the_default_model_s_recipe_and_continues_it(tmp_path):
    """configs/general24k.yaml builds the default's architecture and codes, and a run of it
    from the default (--init rvq24k) exports a model that codes as the default does."""
    default = load()
    recipe = TrainConfig.from_yaml(CONFIGS / "general24k.yaml")
    assert dataclasses.replace(recipe.model, name=default.cfg.name) == default.cfg
    build_cache(write_corpus(tmp_path / "data", speech=2, music=1, seconds=2.0, rate=24000), tmp_path / "cache", 24000, workers=1)
    small = dataclasses.replace(recipe.data, batch_size=2, val_clips=1, val_seconds=1.0, decode_workers=1)
    run(dataclasses.replace(recipe, data=small), tmp_path / "cache", tmp_path / "run", max_steps=1, init="rvq24k", progress=False)
    mine = load(export_run(tmp_path / "run", tmp_path / "mine.safetensors", name="mine"))
    assert dataclasses.replace(mine.cfg, name=default.cfg.name) == default.cfg
    # the same codebooks (kept fixed), so the same codes, low band and edge steps included
    for key, value in default.quantizer.state_dict().items():
        torch.testing.assert_close(mine.quantizer.state_dict()[key], value, rtol=0, atol=0, msg=key)
    t = torch.arange(12000) / 24000
    x = (0.3 * torch.sin(2 * math.pi * 180 * t * (1 + t)) + 0.02 * torch.randn(12000)).reshape(1, 1, -1)
    assert torch.equal(mine.encode(x, kbps=12.0), default.encode(x, kbps=12.0))


def test_a_recipe_changes_only_what_it_names_of_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data:\n  batch_size: 4\n  segment_seconds: 0.5\n  category_weights: {speech: 0.5, music: 0.5}\n"
        "loss:\n  mel: 2.0\n  stft: 0.5\nthreads: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../base.yaml\ndata:\n  batch_size: 8\n  category_weights: {speech: 1.0}\nloss:\n  phase: 1.0\n"
        "optim:\n")  # (an empty section changes nothing)
    cfg = TrainConfig.from_yaml(tmp_path / "sub" / "child.yaml")
    assert (cfg.data.batch_size, cfg.data.segment_seconds) == (8, 0.5)
    assert cfg.data.category_weights == {"speech": 1.0}  # a nested mapping is replaced whole
    assert (cfg.loss.mel, cfg.loss.stft, cfg.loss.phase) == (2.0, 0.5, 1.0)
    assert cfg.threads == 1
    (tmp_path / "sub" / "empty.yaml").write_text("base: ../base.yaml\ndata:\n")
    assert TrainConfig.from_yaml(tmp_path / "sub" / "empty.yaml").data.batch_size == 4


@pytest.mark.parametrize("text, message", [("base: missing.yaml\n", "does not exist"), ("base: loop.yaml\n", "loop"),
                                            ("base:\n", "path of a recipe"), ("base: .\n", "not a file")])
def test_a_missing_or_looping_base_recipe_is_a_user_error(tmp_path, text, message):
    (tmp_path / "loop.yaml").write_text("base: child.yaml\n")
    (tmp_path / "child.yaml").write_text(text)
    with pytest.raises(CodecError, match=message):
        TrainConfig.from_yaml(tmp_path / "child.yaml")


def test_unknown_config_key_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n")
    with pytest.raises(CodecError, match="momentum"):
        TrainConfig.from_yaml(bad)


@pytest.mark.parametrize("weights", ["[1, 1]", "[1, 1, -1, 1, 1]", "[0, 0, 0, 0, 0]"])
def test_quantizer_weights_need_one_weight_per_bitrate(tmp_path, weights):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"quantizer_weights: {weights}\n")
    with pytest.raises(CodecError, match="one weight >= 0 per bitrate"):
        TrainConfig.from_yaml(bad)


def test_quantizer_weights_steer_the_trainer_s_bitrates(cache, tmp_path):
    cfg = dataclasses.replace(tiny_config(), quantizer_weights=(0.0,) * (len(tiny_config().model.valid_n_q) - 1) + (1.0,))
    smallest = min(cfg.model.valid_n_q)
    uniform = Trainer(tiny_config(), cache, tmp_path / "u")
    weighted = Trainer(cfg, cache, tmp_path / "w")
    drawn_uniform = torch.cat([uniform.draw_n_q(s, 16) for s in range(20)])
    drawn_weighted = torch.cat([weighted.draw_n_q(s, 16) for s in range(20)])
    assert (drawn_uniform == smallest).any()
    assert (drawn_weighted == max(cfg.model.valid_n_q)).all()


def test_resume_runs_the_optimizer_as_this_machine_chooses(cache, tmp_path):
    """A checkpoint's saved update flags (a GPU's fused AdamW, an older run's None) do not
    carry over: the resumed optimizer keeps the ones chosen for this device."""
    cfg = tiny_config(top={"checkpoint_every": 100})
    run(cfg, cache, tmp_path, max_steps=1, progress=False)
    state = list_checkpoints(tmp_path)[-1] / "state.json"
    meta = json.loads(state.read_text())
    for group in meta["optim_generator"]["param_groups"]:
        group.update(fused=True, foreach=None)
    state.write_text(json.dumps(meta))
    trainer = Trainer(cfg, cache, tmp_path)
    assert trainer.resume()
    assert [(g["fused"], g["foreach"]) for g in trainer.opt_g.param_groups] == [(None, True)] * len(trainer.opt_g.param_groups)
    trainer.train_step(trainer.data.batch(1))  # a CPU step, which a fused AdamW could not take on every torch


def test_the_output_delay_of_the_init_weights_reaches_checkpoints_and_exports(cache, tmp_path):
    cfg = tiny_config(top={"checkpoint_every": 100})
    release = Codec(dataclasses.replace(cfg.model, output_delay=3))
    save_model(release, tmp_path / "release.safetensors")
    run(cfg, cache, tmp_path / "run", max_steps=1, init=str(tmp_path / "release.safetensors"), progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["output_delay"] == 3
    assert load(export_run(tmp_path / "run", tmp_path / "a.safetensors")).cfg.output_delay == 3
    run(cfg, cache, tmp_path / "run", max_steps=2, resume=True, progress=False)  # the recipe says 0
    assert load(export_run(tmp_path / "run", tmp_path / "b.safetensors")).cfg.output_delay == 3
