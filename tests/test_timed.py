"""train.timed: recipes trained side by side for a wall-clock budget, each with a cosine
schedule sized by its measured speed, then exported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from codec import load
from train.config import TrainConfig
from train.timed import LAST_ONLY, Pacing, derived_recipe, main, run_timed
from train_support import CONFIGS, write_corpus


def cosine_recipe(path: Path, lr: float) -> Path:
    path.write_text(yaml.safe_dump({
        "base": str(CONFIGS / "tiny.yaml"),
        "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": 1},
        "data": {"loader_workers": 0},
        "threads": 1,
        "validate_every": 10**6,  # the probe does not time validation
    }))
    return path


def test_timed_runs_end_with_the_schedule(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    configs = [cosine_recipe(tmp_path / "a.yaml", 1e-3), cosine_recipe(tmp_path / "b.yaml", 2e-3)]
    out = tmp_path / "timed"
    # a loaded test machine: half the steps that fit; a checkpoint every 2 steps
    pacing = Pacing(probe_steps=4, startup_seconds=15, margin=0.5, checkpoint_every=2)
    plans = run_timed(configs, corpus, out, seconds=80, device="cpu", pacing=pacing, say=lambda m: None)
    assert [p.name for p in plans] == ["a", "b"]
    for plan, lr in zip(plans, (1e-3, 2e-3)):
        assert plan.steps >= 1 and plan.speed > 0
        cfg = TrainConfig.from_yaml(out / f"{plan.name}.yaml")  # the run's exact recipe
        # tiny's discriminators start at step 2: the probe's generator heard them from step 0
        assert TrainConfig.from_yaml(out / f"probe-{plan.name}.yaml").loss.adversarial_start_step == 0
        assert cfg.loss.adversarial_start_step == 2
        assert cfg.max_steps == plan.steps and cfg.optim.decay_steps == plan.steps
        assert cfg.optim.lr == lr and cfg.optim.schedule == "cosine"
        rows = [json.loads(line) for line in (out / plan.name / "log.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "lr/gen" in r]
        assert (out / plan.name / f"step_{plan.steps:08d}").is_dir()  # finished inside the time
        assert cfg.checkpoint_every == 2
        if plan.steps >= 3:  # and one part way, at the last even step before the end
            assert (out / plan.name / f"step_{2 * ((plan.steps - 1) // 2):08d}").is_dir()
        # Rates on a cosine over exactly these steps, from the base rate down to 5% of it: a
        # logged step s ran at the rate of step s - 1 of n (warm-up: 1 step).
        n, s = plan.steps, rows[-1]["step"]
        assert s > n / 2
        assert rows[-1]["lr/gen"] == pytest.approx(lr * (0.05 + 0.475 * (1 + math.cos(math.pi * (s - 1) / n))), rel=1e-4)
        model = load(out / f"{plan.name}.safetensors")
        assert model.cfg.name == "tiny"


def test_refuses_recipes_without_a_cosine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path / "corpus", speech=1, music=1)
    code = main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(corpus), "--out", str(tmp_path / "t"),
                 "--seconds", "60", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cosine" in err[-1]


def test_one_at_a_time_chains_each_recipe_from_the_last_export(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    # b's rate is too small to move its weights: chained, its decoder is a's export.
    configs = [cosine_recipe(tmp_path / "a.yaml", 1e-3), cosine_recipe(tmp_path / "b.yaml", 1e-12)]
    out = tmp_path / "timed"
    said: list[str] = []
    plans = run_timed(configs, corpus, out, seconds=90, device="cpu",
                      pacing=Pacing(probe_steps=3, startup_seconds=12, margin=0.5, export_seconds=5),
                      say=said.append, one_at_a_time=True, chain=True)
    assert [p.name for p in plans] == ["a", "b"]
    assert any(m.split("] ", 1)[-1].startswith("b: ") and m.endswith(f"from {out / 'a.safetensors'}") for m in said)
    a = (out / "a" / "log.jsonl").stat().st_mtime
    assert a <= (out / "probe-b" / "log.jsonl").stat().st_mtime  # in turn: b began after a ended
    dec_a, dec_b = load(out / "a.safetensors").decoder.state_dict(), load(out / "b.safetensors").decoder.state_dict()
    assert dec_a.keys() == dec_b.keys()
    for k in dec_a:
        assert torch.allclose(dec_a[k].float(), dec_b[k].float(), atol=1e-3), k


def test_chain_needs_one_at_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = cosine_recipe(tmp_path / "a.yaml", 1e-3)
    code = main(["--config", str(recipe), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "t"),
                 "--seconds", "60", "--device", "cpu", "--side-by-side", "--chain"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "--one-at-a-time" in err[-1]


def test_checkpoint_every_reaches_the_pacing_and_must_be_positive(tmp_path: Path, monkeypatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import train.timed

    seen: list[Pacing] = []
    monkeypatch.setattr(train.timed, "run_timed", lambda *a, **k: seen.append(a[6]) or [])
    args = ["--config", str(CONFIGS / "tiny.yaml"), "--data", str(tmp_path), "--out", str(tmp_path / "t"),
            "--seconds", "60", "--device", "cpu"]
    assert main(args + ["--checkpoint-every", "250"]) == 0 and seen[-1].checkpoint_every == 250
    assert main(args) == 0 and seen[-1].checkpoint_every == Pacing.checkpoint_every
    for bad in ("0", "-5", "x"):
        with pytest.raises(SystemExit) as stop:
            main(args + ["--checkpoint-every", bad])
        assert stop.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_launch_starts_each_run_in_an_empty_folder(tmp_path: Path, monkeypatch) -> None:
    """A run folder left by an earlier call with the same --out (checkpoints of other steps)
    would be refused by ``python -m train`` without --resume: launch clears it first."""
    import train.timed

    run_dir = tmp_path / "a"
    (run_dir / "step_00000500").mkdir(parents=True)
    (run_dir / "step_00000500" / "state.json").write_text("{}")
    seen: list[tuple[list[str], bool]] = []
    monkeypatch.setattr(train.timed.subprocess, "Popen",
                        lambda cmd, **kw: seen.append((cmd, any(run_dir.glob("step_*")))))
    train.timed.launch(tmp_path / "a.yaml", tmp_path / "cache", run_dir, 10, None, "cpu", 60, tmp_path / "a.log")
    [(cmd, had_checkpoints)] = seen
    assert not had_checkpoints and str(run_dir) in cmd and "--resume" not in cmd


@pytest.mark.parametrize("stem", ["cache", "probe-a"])
def test_a_recipe_named_as_a_folder_timed_keeps_is_refused(tmp_path: Path, stem: str) -> None:
    """``out/cache`` holds the prepared corpus and ``out/probe-*`` the probes: a run folder of
    that name would be emptied by launch (or empty theirs)."""
    from codec.listing import DataError

    recipe = cosine_recipe(tmp_path / f"{stem}.yaml", 1e-3)
    with pytest.raises(DataError, match=f"{stem}.yaml"):
        run_timed([recipe], tmp_path / "corpus", tmp_path / "t", seconds=60, device="cpu", say=lambda m: None)
    assert not (tmp_path / "t").exists()  # refused before anything was made


def test_a_probe_times_the_steps_that_hear_the_discriminators(tmp_path: Path) -> None:
    """A GAN recipe's probe has the generator hear the discriminators from its first step (in
    their warm-up a step is cheaper, and a probe there overestimated the speed); the run's
    recipe keeps the warm-up, and a recipe without discriminators is probed as it is."""
    gan = cosine_recipe(tmp_path / "gan.yaml", 1e-3)
    recipe = yaml.safe_load(gan.read_text())
    recipe["loss"] = {"adversarial_start_step": 2, "disc_warmup_steps": 5}
    gan.write_text(yaml.safe_dump(recipe))
    probe = TrainConfig.from_yaml(derived_recipe(gan, tmp_path / "probe.yaml", 4, 1, LAST_ONLY, probe=True))
    run = TrainConfig.from_yaml(derived_recipe(gan, tmp_path / "run.yaml", 4, 1, LAST_ONLY))
    assert (probe.loss.adversarial_start_step, probe.loss.disc_warmup_steps) == (0, 0)
    assert (run.loss.adversarial_start_step, run.loss.disc_warmup_steps) == (2, 5)
    assert probe.loss.adversarial == run.loss.adversarial > 0 and probe.max_steps == run.max_steps == 4
    recipe["loss"].update(adversarial=0.0, feature_matching=0.0)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(recipe))
    probed = TrainConfig.from_yaml(derived_recipe(plain, tmp_path / "probe-plain.yaml", 4, 1, LAST_ONLY, probe=True))
    assert probed.loss == TrainConfig.from_yaml(plain).loss
