"""Release weights: save/load round trip, registry checks, refusal of foreign files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from codec import CodecError, compress_file, decompress_file, load, save_model
from codec import weights as weights_mod
from codec.weights import ModelError, fingerprint
from conftest import SMALL, TINY, make_model


def test_save_load_round_trip(tmp_path):
    model = make_model(TINY, 3)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load(path)
    assert loaded.cfg == model.cfg
    assert not loaded.training
    for key, value in model.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    assert fingerprint(loaded) == fingerprint(load(path))


def test_release_files_leave_out_the_codebook_statistics(tmp_path):
    model = make_model(TINY, 3)
    model.quantizer.cluster_size.mul_(7.0)  # as after training: statistics differ from a fresh model
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "quantizer.codebooks" in keys
    assert not keys & {"quantizer.cluster_size", "quantizer.embed_sum"}
    loaded = load(path)
    before = fingerprint(loaded)
    loaded.quantizer.cluster_size.mul_(3.0)
    assert fingerprint(loaded) == before  # the statistics are not part of the model's identity


def test_fingerprint_follows_weight_changes():
    model = make_model(TINY, 3)
    before = fingerprint(model)
    assert fingerprint(model) == before  # cached, same answer
    with torch.no_grad():
        model.decoder[0].conv.weight.add_(1.0)
    assert fingerprint(model) != before
    model.load_state_dict(make_model(TINY, 3).state_dict())
    assert fingerprint(model) == before


def test_fingerprint_ignores_the_sign_of_zero():
    """-0.0 and 0.0 are the same weight (re-rounding weights, as an export does, may flip it):
    the same fingerprint; any other change is another one."""
    model = make_model(TINY, 3)
    with torch.no_grad():
        model.encoder[0].conv.weight[0, 0, :2] = torch.tensor([0.0, 0.5])
    before = fingerprint(model)
    with torch.no_grad():
        model.encoder[0].conv.weight[0, 0, 0] = -0.0
    assert torch.signbit(model.encoder[0].conv.weight[0, 0, 0])
    assert fingerprint(model) == before
    with torch.no_grad():
        model.encoder[0].conv.weight[0, 0, 0] = 1e-30
    assert fingerprint(model) != before


def test_a_file_hashed_with_signed_zeros_still_decodes_with_its_own_model(tmp_path):
    """Files written before the fingerprint counted -0.0 as 0.0 carry the older hash: the
    model that wrote them still reads them, and another model does not."""
    model = make_model(TINY, 3)
    with torch.no_grad():
        model.encoder[0].conv.weight[0, 0, 0] = -0.0
    older = weights_mod._digest(weights_mod._weights_of(model), signed_zeros=True)[:8]
    assert older != fingerprint(model)[:8]
    assert weights_mod.reads(model, older)
    assert not weights_mod.reads(make_model(TINY, 4), older)


def test_unknown_model_name_lists_built_in_models():
    with pytest.raises(ModelError, match=rf"built-in models \(rvq24k \(= {weights_mod.DEFAULT_MODEL}\), .*rvq24k-v10, "):
        load("no-such-model")


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="not an rvqcodec model"):
        load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelError, match="cannot read"):
        load(tmp_path / "junk.safetensors")


def test_model_file_from_an_incompatible_version_is_refused(tmp_path):
    path = tmp_path / "old.safetensors"
    config = json.dumps({**TINY.to_dict(), "codebook_dim": 4})  # a field this version dropped
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": weights_mod.FORMAT, "config": config})
    with pytest.raises(ModelError, match="config this version cannot use"):
        load(path)


def test_registry_checks_sha256(monkeypatch):
    entry = weights_mod.REGISTRY[weights_mod.DEFAULT_MODEL]
    broken = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setitem(weights_mod.REGISTRY, weights_mod.DEFAULT_MODEL, broken)
    with pytest.raises(ModelError, match="sha256"):
        load()


def test_file_from_other_weights_is_refused(tmp_path, stereo_wav):
    a, b = make_model(SMALL, 0), make_model(SMALL, 1)
    compress_file(stereo_wav, tmp_path / "x.rvq", kbps=6, model=a)
    with pytest.raises(CodecError, match="made by model"):
        decompress_file(tmp_path / "x.rvq", tmp_path / "x.wav", model=b)
    assert not (tmp_path / "x.wav").exists()
