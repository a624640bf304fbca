"""``rvqcodec train`` / ``export`` and the torchrun entry point: user mistakes are one line,
a run exports a model that ``compress --model`` accepts, two gloo processes train together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from train.checkpoint import list_checkpoints
from train.prepare import build_cache
from train_support import CONFIGS, interrupt_after_step, write_corpus

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = str(CONFIGS / "tiny.yaml")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_data_path_is_one_line(tmp_path):
    r = invoke("train", "--config", TINY, "--data", tmp_path / "nowhere", "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(r, "data path not found", "nowhere")


def test_empty_data_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke("train", "--config", TINY, "--data", tmp_path / "empty", "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(r, "no audio files found")


@pytest.mark.parametrize("problem", ["missing", "unknown key", "not yaml", "not text"])
def test_bad_config_is_one_line(tmp_path, problem):
    config = tmp_path / "c.yaml"
    if problem == "unknown key":
        config.write_text("loss:\n  mell: 1.0\n")
    elif problem == "not yaml":
        config.write_text("model: [unclosed\n")
    elif problem == "not text":  # an audio file given as the config, say
        config.write_bytes(b"RIFF\xa4\x00\x00\x00WAVEfmt \xff\xfe")
    data = write_corpus(tmp_path / "data", speech=1, music=0)
    r = invoke("train", "--config", config, "--data", data, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(r, "c.yaml")


@pytest.mark.parametrize("text, says", [
    ("optim:\n  lr: fast\n", "optim.lr must be a number, got 'fast'"),
    ("data:\n  batch_size: four\n", "data.batch_size must be an integer, got 'four'"),
    ("max_steps: 1.5\n", "max_steps must be an integer, got 1.5"),
    ("freeze_encoder: yes please\n", "freeze_encoder must be true or false"),
    ("data:\n  segment_seconds: 0.01\n", "crops of at least 2048 samples"),
], ids=["float", "int", "int-not-float", "bool", "segment-too-short"])
def test_a_bad_value_is_one_line_before_any_work(tmp_path, text, says):
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {CONFIGS / 'tiny.yaml'}\n{text}")
    data = write_corpus(tmp_path / "data", speech=1, music=0)
    r = invoke("train", "--config", config, "--data", data, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(r, "c.yaml", says)
    assert not (tmp_path / "run" / "cache").exists()  # refused before the corpus is read


@pytest.mark.parametrize("init, says", [("rvq24k-v99", "unknown model 'rvq24k-v99'"), ("{tmp}", "is a folder")],
                         ids=["unknown", "folder"])
def test_a_bad_init_is_one_line_before_the_corpus_is_read(tmp_path, init, says):
    data = write_corpus(tmp_path / "data", speech=1, music=0)
    r = invoke("train", "--config", TINY, "--data", data, "--out", tmp_path / "run", "--init",
               init.format(tmp=tmp_path), "--quiet")
    assert_one_line_error(r, says)
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_exits_with_the_signal_after_saving(tmp_path, monkeypatch):
    """Saved and resumable, but not done: ``train ... && export ...`` must not go on."""
    interrupt_after_step(monkeypatch, 2)
    data = write_corpus(tmp_path / "data", speech=2, music=1)
    r = invoke("train", "--config", TINY, "--data", data, "--out", tmp_path / "run", "--max-steps", 5, "--quiet")
    assert r.exit_code == 128 + signal.SIGINT, r.output
    assert "stopped at step 2" in r.stderr and [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002"]


def test_export_of_a_folder_without_checkpoints_is_one_line(tmp_path):
    r = invoke("export", tmp_path, tmp_path / "m.safetensors")
    assert_one_line_error(r, "no checkpoint")


def test_train_warns_about_a_corrupt_file_then_export_and_compress(tmp_path):
    data = write_corpus(tmp_path / "data", speech=3, music=2)
    (data / "speech" / "corrupt.flac").write_bytes(b"fLaC but not really")
    run_dir = tmp_path / "run"
    r = invoke("train", "--config", TINY, "--data", data, "--out", run_dir, "--max-steps", 2, "--quiet")
    assert r.exit_code == 0, r.output
    assert "warning: skipping" in r.stderr and "corrupt.flac" in r.stderr
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002"]
    model = tmp_path / "tiny.safetensors"
    r = invoke("export", run_dir, model, "--name", "tiny-cli")
    assert r.exit_code == 0, r.output
    r = invoke("export", run_dir, model)
    assert_one_line_error(r, "exists")
    rvq = tmp_path / "x.rvq"
    r = invoke("compress", data / "speech" / "s0.wav", rvq, "--model", model, "--kbps", 16, "--quiet")
    assert r.exit_code == 0, r.output
    assert rvq.stat().st_size > 0


def test_a_new_run_into_a_folder_with_checkpoints_is_one_line_and_leaves_them(tmp_path):
    """Without --resume, a run there would start at step 0 and its checkpoints would be
    pruned in favour of the older run's higher-numbered ones."""
    data = write_corpus(tmp_path / "data", speech=2, music=1)
    run_dir = tmp_path / "run"
    args = ("train", "--config", TINY, "--data", data, "--out", run_dir, "--cache", tmp_path / "cache", "--quiet")
    assert invoke(*args, "--max-steps", 2).exit_code == 0
    written = (run_dir / "step_00000002" / "state.json").read_bytes()
    assert_one_line_error(invoke(*args, "--max-steps", 1), "--resume", "step_00000002")
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002"]
    assert (run_dir / "step_00000002" / "state.json").read_bytes() == written
    r = invoke(*args, "--max-steps", 3, "--resume", "--init", "no-such-model")  # (a resumed run ignores --init)
    assert r.exit_code == 0, r.output
    assert list_checkpoints(run_dir)[-1].name == "step_00000003"


def test_two_gloo_processes_train_together(tmp_path):
    cache = tmp_path / "cache"  # prepared here: the test is about the processes, not decoding
    build_cache(write_corpus(tmp_path / "data", speech=3, music=2), cache, 8000, workers=1)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train", "--config", TINY, "--data", str(cache), "--out", str(run_dir),
           "--max-steps", "3", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((run_dir / "step_00000003" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "total" in row] == [1, 2, 3]
    assert all(row["speed/audio_seconds_per_s"] > 0 for row in logged if "total" in row)
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "step_00000003" / "tensors.safetensors"))
    assert "rng.torch.0" in tensors and "rng.torch.1" in tensors  # each process's RNG, for resume
