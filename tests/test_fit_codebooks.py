"""train.fit_codebooks: k-means codebooks fitted level by level, written into a model's weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from codec.kmeans import nearest
from codec.weights import load, save_model
from conftest import TINY, make_model
from train.fit_codebooks import fit_rvq, main
from train.prepare import build_cache
from train_support import CONFIGS, write_corpus


def test_each_level_codes_what_the_previous_left():
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(2000, 6, generator=g) * torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.5])
    books = fit_rvq(frames.clone(), n_q=3, size=16, iters=8, generator=torch.Generator().manual_seed(0), log=lambda m: None)
    assert books.shape == (3, 16, 6)
    residual, powers = frames.clone(), [frames.square().mean().item()]
    for level in range(3):
        residual = residual - books[level][nearest(residual, books[level])]
        powers.append(residual.square().mean().item())
    assert powers[0] > powers[1] > powers[2] > powers[3]
    # deeper levels were fitted to what the levels before left: smaller entries, level by level
    sizes = books.norm(dim=-1).mean(-1)
    assert sizes[1] < 0.7 * sizes[0] and sizes[2] < sizes[1]


def test_too_few_frames_is_an_error():
    from codec.errors import CodecError
    with pytest.raises(CodecError, match="at least 16 frames"):
        fit_rvq(torch.randn(10, 3), 2, 16, 2, torch.Generator().manual_seed(0), log=lambda m: None)


def test_command_refits_the_codebooks_and_keeps_the_rest(tmp_path, capsys):
    cache = tmp_path / "cache"
    build_cache(write_corpus(tmp_path / "data", speech=3, music=2), cache, 8000, workers=1)
    before = make_model(TINY)
    src, out = tmp_path / "tiny.safetensors", tmp_path / "refit.safetensors"
    save_model(before, src)
    main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(cache), "--init", str(src), "--out", str(out),
          "--crops", "6", "--iters", "5", "--name", "tiny-mine", "--threads", "1"])
    assert "wrote" in capsys.readouterr().out
    before, after = load(src), load(out)
    assert after.cfg.name == "tiny-mine"
    assert dataclasses.replace(after.cfg, name=before.cfg.name) == before.cfg  # the rest of the config kept
    assert bool(after.quantizer.initialized)
    # without --name, not --init's name: the codes are new
    main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(cache), "--init", str(src), "--out", str(out),
          "--crops", "6", "--iters", "5", "--threads", "1"])
    assert load(out).cfg.name == f"{before.cfg.name}-refit"
    for key, value in before.state_dict().items():
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(value, after.state_dict()[key]), key
    # the fitted codebooks code the encoder's frames of the corpus far better than the random ones
    x = torch.from_numpy(__import__("numpy").load(cache / "audio.npy")[:8192].astype("float32") / 32768)[None, None]
    with torch.no_grad():
        z = before.encoder(x)
        err = [(z - m.quantizer.decode(m.quantizer.encode(z, 4))).square().mean().item() for m in (before, after)]
    assert err[1] < 0.5 * err[0]


def test_command_error_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(tmp_path / "missing"), "--init",
              "rvq24k", "--out", str(tmp_path / "x.safetensors")])
    assert str(exc.value).startswith("error:") and "\n" not in str(exc.value)
    assert "missing is not a corpus cache" in str(exc.value)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_cache_at_another_rate_is_refused(tmp_path):
    cache = tmp_path / "cache"
    build_cache(write_corpus(tmp_path / "data", speech=1, music=1), cache, 8000, workers=1)
    with pytest.raises(SystemExit) as exc:  # the default model runs at 24 kHz
        main(["--config", str(CONFIGS / "tiny.yaml"), "--data", str(cache), "--init", "rvq24k",
              "--out", str(tmp_path / "x.safetensors")])
    assert str(exc.value) == f"error: cache {cache} holds audio at 8000 Hz, the model runs at 24000 Hz"


@pytest.mark.parametrize("flag, value, message", [
    ("--crops", "0", "--min-fraction in [0, 1)"), ("--iters", "0", "--min-fraction in [0, 1)"),
    ("--min-fraction", "1.5", "--min-fraction in [0, 1)"), ("--threads", "-1", "--threads at least 0"),
    ("--name", " ", "--name must not be empty"), ("--out", "no/such/folder/x.safetensors", "does not exist")])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, monkeypatch, flag, value, message):
    monkeypatch.chdir(tmp_path)
    args = {"--config": str(CONFIGS / "tiny.yaml"), "--data": str(tmp_path), "--init": "rvq24k",
            "--out": str(tmp_path / "x.safetensors"), flag: value}
    with pytest.raises(SystemExit) as exc:
        main([item for pair in args.items() for item in pair])
    assert exc.value.code == 2 and message in capsys.readouterr().err
