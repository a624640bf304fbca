"""The native one-frame runtime (codec/native.py, codec/csrc/frame.c) against the PyTorch path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from codec import native
from codec.frame import FramePlan
from codec.native import NativePlan, compact, rvq_search
from codec.quantizer import _nearest_exact
from conftest import SMALL, TINY, make_model

needs_library = pytest.mark.skipif(native.library() is None, reason="no C compiler: the native runtime cannot be built")


@pytest.fixture
def pytorch_only(monkeypatch):
    """The runtime turned off as a user would (RVQCODEC_NATIVE=0)."""
    monkeypatch.setenv("RVQCODEC_NATIVE", "0")
    native.library.cache_clear()
    yield
    monkeypatch.undo()
    native.library.cache_clear()


def frame_by_frame(model, wav, codes, n_q):
    hop = model.hop_length
    with model.streaming():
        streamed = torch.cat([model.encode(wav[..., i : i + hop], n_q=n_q) for i in range(0, wav.shape[-1], hop)], dim=-1)
        audio = torch.cat([model.decode(codes[..., i : i + 1]) for i in range(codes.shape[-1])], dim=-1)
        runtimes = {name: type(plan) for name, plan in model._plans.items()}
    return streamed, audio, runtimes


def fp16_valued(model):
    """Weights and codebooks rounded to float16 values, as in a release file: the native
    runtime then reads its widest layers and the codebooks as float16."""
    with torch.no_grad():
        for t in list(model.parameters()) + [model.quantizer.codebooks]:
            t.copy_(t.half().float())
    return model


@needs_library
@pytest.mark.parametrize("cfg, half", [(SMALL, False), (SMALL, True), (TINY, False), (dataclasses.replace(SMALL, channels=3), True)],
                         ids=["small", "small-fp16", "tiny", "odd-channels-fp16"])
@pytest.mark.parametrize("seed", [0, 1])
def test_native_frames_match_offline(cfg, half, seed):
    model = make_model(cfg, seed)
    if half:
        fp16_valued(model)
    hop, n_q = model.hop_length, min(8, cfg.n_q)
    wav = torch.randn(1, 1, 7 * hop) * 0.3
    codes = model.encode(wav, n_q=n_q)
    audio = model.decode(codes)
    streamed, streamed_audio, runtimes = frame_by_frame(model, wav, codes, n_q)
    assert runtimes == {"encoder": NativePlan, "decoder": NativePlan}
    assert torch.equal(streamed, codes)
    assert (streamed_audio - audio).abs().max().item() < 1e-5


def test_without_the_library_frames_take_the_pytorch_steps(pytorch_only):
    assert native.library() is None
    model = make_model(SMALL, seed=3)
    hop = model.hop_length
    wav = torch.randn(1, 1, 4 * hop) * 0.3
    codes = model.encode(wav, n_q=8)
    streamed, audio, runtimes = frame_by_frame(model, wav, codes, 8)
    assert runtimes == {"encoder": FramePlan, "decoder": FramePlan}
    assert torch.equal(streamed, codes)
    assert (audio - model.decode(codes)).abs().max().item() < 1e-5


def test_a_failed_build_leaves_the_pytorch_path(monkeypatch, tmp_path):
    monkeypatch.setenv("RVQCODEC_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert not list((tmp_path / "native").glob("*.so*"))  # no half-written library left
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


@needs_library
@pytest.mark.parametrize("dim, half", [(16, False), (20, True), (128, True)])
def test_native_search_is_the_exact_search(dim, half):
    """Same codes as the float64 search level by level, ties to the first entry, any
    dimension (20: a tail after the 16-wide blocks), float16 entries down to subnormals."""
    torch.manual_seed(dim)
    levels, size, rows = 4, 64, 6
    books = torch.randn(levels, size, dim)
    books[:, 1::2] *= 1e-6  # float16 subnormals
    books[:, 7] = books[:, 3]  # duplicate entries: the first must win
    if half:
        books = books.half().float()
    z = torch.randn(rows, dim)
    z[0] = books[0, 3]  # a row exactly on a duplicated entry
    tables = books.double()
    norms = (tables * tables).sum(-1)
    expected, residual = [], z.double()
    for level in range(levels):
        idx = _nearest_exact(tables[level], norms[level], residual)
        residual = residual - tables[level][idx]
        expected.append(idx)
    stored = compact(books)
    assert stored.dtype == (torch.float16 if half else torch.float32)
    codes = rvq_search(stored, norms, z, levels)
    assert torch.equal(codes, torch.stack(expected, dim=1))
    assert codes[0, 0] == 3


def test_compact_keeps_float32_weights_that_float16_would_change():
    w = torch.tensor([1.0, 1.0 + 2**-20])
    assert compact(w) is w
    assert compact(w[:1]).dtype == torch.float16
