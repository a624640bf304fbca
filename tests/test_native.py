"""The native one-frame runtime (codec/native.py, codec/csrc/frame.c) against the PyTorch path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec import native
from codec.frame import FramePlan
from codec.kmeans import nearest
from codec.native import NativePlan, compact, round_plan_weights, rvq_beam, rvq_decode, rvq_search
from codec.quantizer import beam_search
from codec.seanet import ELU, ResidualUnit
from codec.spectral import ChannelNorm, ConvNeXtBlock, FFTHead
from codec.streaming import CausalConv1d, CausalConvTranspose1d, streaming
from conftest import SMALL, TINY, make_model

SPECTRAL = dataclasses.replace(SMALL, decoder="spectral", decoder_dim=24, decoder_layers=2)

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


def float64_search(books, z, levels):
    """The squared norms of ``books`` and the codes of rows ``z`` from the float64 search of
    codec/quantizer.py, level by level -> (norms [L, K], codes [N, levels])."""
    tables = books.double()
    norms = (tables * tables).sum(-1)
    codes, residual = [], z.double()
    for level in range(levels):
        idx = nearest(residual, tables[level], norms[level])
        residual = residual - tables[level][idx]
        codes.append(idx)
    return norms, torch.stack(codes, dim=1)


def fp16_valued(model):
    """Weights and codebooks rounded to float16 values, as in a release file: the native
    runtime then reads its widest layers and the codebooks as float16."""
    with torch.no_grad():
        for t in list(model.parameters()) + [model.quantizer.codebooks]:
            t.copy_(t.half().float())
    return model


@needs_library
@pytest.mark.parametrize("cfg, half", [(SMALL, False), (SMALL, True), (TINY, False), (dataclasses.replace(SMALL, channels=3), True),
                                       (SPECTRAL, False), (SPECTRAL, True)],
                         ids=["small", "small-fp16", "tiny", "odd-channels-fp16", "spectral", "spectral-fp16"])
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


def native_against_offline(network, steps, weights, rounded):
    """``network`` (input 5 channels) with its weights stored as ``weights`` says, ``rounded``:
    how many matrices int8 rounding must touch at this width. Runs 4 calls of ``steps``
    through its native plan -> (plan, native output, offline output)."""
    x = torch.randn(1, 5, 4 * steps)
    with torch.no_grad():
        if weights == "float16":
            for t in network.parameters():
                t.copy_(t.half().float())
        if weights == "int8":
            with streaming(network):
                assert round_plan_weights(FramePlan(network, steps)) == (rounded if steps <= native.NARROW else 0)
        expected = network(x)
    with torch.no_grad(), streaming(network):
        plan = NativePlan.for_plan(FramePlan(network, steps), 5, steps)
        assert plan is not None
        formats = {op.format for op in plan.ops if op.kind not in (2, 4)}  # (ELU and norms have no products)
        assert formats == {0} if steps > native.NARROW else {"float32": {0}, "float16": {1}, "int8": {2}}[weights]
        got = torch.cat([plan(x[..., i : i + steps]) for i in range(0, x.shape[-1], steps)], dim=-1)
    assert got.shape == expected.shape
    return plan, got, expected


@needs_library
@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
@pytest.mark.parametrize("steps", [*range(1, native.NARROW + 2), 40])
def test_every_product_width_matches_the_layers(steps, weights):
    """Each layer kind at every width the packed products specialise (1..NARROW steps a
    call), one past it and a wide one, with channel counts that fill no block of rows
    evenly, for each way weights are stored: several calls of the native plan give what
    the layers give offline."""
    torch.manual_seed(steps)
    network = torch.nn.Sequential(CausalConv1d(5, 37, 3, dilation=2), ELU(inplace=True), ResidualUnit(37, 3, 1),
                                  CausalConvTranspose1d(37, 6, 4, 2), CausalConv1d(6, 7, 4, stride=2)).eval()
    _, got, expected = native_against_offline(network, steps, weights, rounded=5)
    assert (got - expected).abs().max().item() < 1e-5


@needs_library
@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
@pytest.mark.parametrize("steps", [1, 2, 5, native.NARROW, native.NARROW + 1, 40])
def test_spectral_layers_match_at_every_width(steps, weights):
    """The spectral decoder's layers (layer norm, ConvNeXt block with its GELU, projection;
    the inverse FFT after them in PyTorch) with random weights large enough to reach GELU's
    and the norm's nonlinear ranges: several calls of the native plan give what the layers
    give offline, to 1e-6 of the output's peak."""
    torch.manual_seed(100 + steps)
    network = torch.nn.Sequential(CausalConv1d(5, 37, 3), ChannelNorm(37), ConvNeXtBlock(37, 75, 7, 0.5), ChannelNorm(37),
                                  FFTHead(37, 16, 8, 4)).eval()
    with torch.no_grad():
        for t in network.parameters():
            t.normal_(0, 0.4)
    plan, got, expected = native_against_offline(network, steps, weights, rounded=4)
    assert [op.kind for op in plan.ops] == [0, 4, 5, 4, 0] and len(plan.tail) == 1
    assert (got - expected).abs().max().item() < 1e-6 * expected.abs().max().item()


@pytest.mark.parametrize("cfg", [dataclasses.replace(SMALL, kernel_size=1), SPECTRAL], ids=["1x1-ends", "spectral"])
@pytest.mark.parametrize("runtime", ["native", "pytorch"])
def test_one_frame_and_longer_chunks_alternate(runtime, cfg, request):
    """Chunks of one frame (a frame plan) and longer ones (the layers' forward) alternate, on
    a model whose first and last convolutions are 1x1, which carry no state, and on a spectral
    decoder (its blocks' windows, the inverse FFT's carried fade): the plan must notice that
    the layers' forward ran, and the codes and audio stay the offline ones."""
    if runtime == "pytorch":
        request.getfixturevalue("pytorch_only")
    elif native.library() is None:
        pytest.skip("no C compiler: the native runtime cannot be built")
    model = make_model(cfg, seed=4)
    if cfg.decoder == "spectral":  # weights large enough for the decoder's norms and GELUs to bend
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.normal_(0, 0.3)
    hop, pattern = model.hop_length, [1, 6, 1, 1, 7, 2, 1]
    wav = torch.randn(1, 1, sum(pattern) * hop) * 0.3
    offline = model.encode(wav, n_q=8)
    offline_audio = model.decode(offline)
    codes, audio, at = [], [], 0
    with model.streaming():
        for frames in pattern:
            codes.append(model.encode(wav[..., at : at + frames * hop], n_q=8))
            audio.append(model.decode(codes[-1]))
            at += frames * hop
    assert torch.equal(torch.cat(codes, dim=-1), offline)
    assert (torch.cat(audio, dim=-1) - offline_audio).abs().max().item() < 1e-5


@pytest.mark.parametrize("cfg", [SMALL, SPECTRAL], ids=["seanet", "spectral"])
def test_without_the_library_frames_take_the_pytorch_steps(pytorch_only, cfg):
    assert native.library() is None
    model = make_model(cfg, seed=3)
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
    norms, expected = float64_search(books, z, levels)
    stored = compact(books)
    assert stored.dtype == (torch.float16 if half else torch.float32)
    codes = rvq_search(stored, norms, z, levels)
    assert torch.equal(codes, expected)
    assert codes[0, 0] == 3


@needs_library
@pytest.mark.parametrize("dim, half, size, beam", [(16, False, 64, 8), (20, True, 64, 3), (80, True, 1024, 8), (8, False, 4, 8),
                                                   (20, True, 70, 12), (20, False, 33, 9)])
def test_native_beam_search_is_the_pytorch_beam_search(dim, half, size, beam):
    """frame.c's beam search (live frames) gives quantizer.beam_search's codes: float32 or
    float16 entries, a dimension with a tail after the 16-wide blocks, a beam wider than a
    level's entries (4: the first level keeps 4 sequences, then 8), and entries and sequences
    beyond the float32 pass's blocks of 16 entries and 8 sequences (70 entries, a beam of 12)."""
    torch.manual_seed(dim + size)
    levels, rows = 6, 7
    scale = 0.7 ** torch.arange(levels, dtype=torch.float32)[:, None, None]
    books = torch.randn(levels, size, dim) * scale
    if half:
        books = books.half().float()
    z = torch.randn(rows, dim)
    tables = books.double()
    norms = (tables * tables).sum(-1)
    stored = compact(books)
    assert stored.dtype == (torch.float16 if half else torch.float32)
    for n_q in (1, 2, levels):
        expected = beam_search(z.double(), tables, norms, n_q, beam)
        assert torch.equal(rvq_beam(stored, norms, z, n_q, beam), expected), n_q
    weights = torch.rand(dim, dtype=torch.float64) + 0.05  # a weighted search: its own codes, the same in C
    weighted_norms = (tables * tables * weights).sum(-1)
    expected = beam_search(z.double(), tables, weighted_norms, levels, beam, weights)
    assert torch.equal(rvq_beam(stored, weighted_norms, z, levels, beam, weights), expected)
    assert not torch.equal(expected, beam_search(z.double(), tables, norms, levels, beam))
    assert torch.equal(rvq_beam(stored, norms, z, levels, 1), rvq_search(stored, norms, z, levels))  # beam 1: greedy
    assert not torch.equal(beam_search(z.double(), tables, norms, levels, beam), rvq_search(stored, norms, z, levels))


@needs_library
def test_native_beam_settles_near_ties_in_float64():
    """As the greedy search: rows between two entries 1e-4 apart (two levels, so the second
    level ranks sequences whose errors differ by ~1e-7, below float32's errors) must get the
    float64 beam search's codes, though float32 alone ranks some of them otherwise."""
    torch.manual_seed(8)
    dim, size, rows = 128, 64, 200
    books = torch.randn(2, size, dim)
    books[1] *= 0.5
    step = 1e-4 * torch.randn(dim)
    books[0, 12] = books[0, 10] + step
    s = (torch.rand(rows, 1) - 0.5) * 0.2
    z = (books[0, 10] + books[0, 12]) / 2 + s * step
    tables = books.double()
    norms = (tables * tables).sum(-1)
    expected = beam_search(z.double(), tables, norms, 1, 4)
    assert set(expected[:, 0].tolist()) == {10, 12}
    in_float32 = ((books[0] * books[0]).sum(-1) - 2 * z @ books[0].T).argmin(-1)
    assert (in_float32 != expected[:, 0]).any()  # the case float32 alone gets wrong
    for beam in (1, 2, 4):  # (1: the near-tied pair decides the only sequence kept)
        for n_q in (1, 2):
            assert torch.equal(rvq_beam(books, norms, z, n_q, beam), beam_search(z.double(), tables, norms, n_q, beam))


def test_compact_keeps_float32_weights_that_float16_would_change():
    w = torch.tensor([1.0, 1.0 + 2**-20])
    assert compact(w) is w
    assert compact(w[:1]).dtype == torch.float16


@needs_library
def test_native_search_settles_near_ties_in_float64():
    """Rows between two entries 1e-4 apart: their distances differ by ~1e-7, below float32's
    errors (~1e-4 at |c|^2 ~ 128) but far above float64's. The float32 pass must hand such
    rows to float64 and agree with the float64 search on every one."""
    torch.manual_seed(7)
    dim, size, rows = 128, 64, 200
    books = torch.randn(1, size, dim)
    step = 1e-4 * torch.randn(dim)
    books[0, 12] = books[0, 10] + step
    s = (torch.rand(rows, 1) - 0.5) * 0.2
    z = (books[0, 10] + books[0, 12]) / 2 + s * step  # either side of the bisector
    tables = books.double()
    norms = (tables * tables).sum(-1)
    expected = nearest(z.double(), tables[0], norms[0])
    assert set(expected.tolist()) == {10, 12}
    in_float32 = ((books[0] * books[0]).sum(-1) - 2 * z @ books[0].T).argmin(-1)
    assert (in_float32 != expected).any()  # the case float32 alone gets wrong
    assert torch.equal(rvq_search(books, norms, z, 1)[:, 0], expected)


@needs_library
@pytest.mark.parametrize("half", [False, True])
def test_native_decode_sums_the_same_entries(half):
    """A frame's latent from one native call equals the gather of the PyTorch path."""
    model = make_model(SMALL, seed=6)
    if half:
        fp16_valued(model)
    q = model.quantizer
    codes = torch.randint(0, q.codebook_size, (1, 8, 3))
    native_z = q.decode(codes)  # 3 frames: under NATIVE_MAX_ROWS
    rows = q.codebooks.reshape(-1, q.dim)[(codes + torch.arange(8)[:, None] * q.codebook_size).reshape(-1)]
    expected = rows.view(1, 8, 3, q.dim).sum(1).transpose(1, 2)
    assert (native_z - expected).abs().max().item() < 1e-5
    assert rvq_decode(compact(q.codebooks), codes) is not None  # (the native path did run)


@pytest.mark.parametrize("frames", [1, 40], ids=["native-size", "pytorch-size"])
@pytest.mark.parametrize("bad", [-1, 1024])
def test_decode_refuses_codes_out_of_range(frames, bad):
    model = make_model(SMALL)
    codes = torch.zeros(1, 4, frames, dtype=torch.long)
    codes[0, 2, -1] = bad
    with pytest.raises(ValueError, match="codes must be in 0..1023"):
        model.quantizer.decode(codes)


@needs_library
def test_native_search_follows_argmin_on_non_finite_input():
    """inf and NaN in a frame (a broken input upstream) give the codes the float64 search
    gives, which ranks a NaN distance first, instead of whatever float32 overflow makes."""
    torch.manual_seed(8)
    books = torch.randn(3, 32, 16)
    z = torch.randn(4, 16)
    z[0, 3], z[1, 5], z[2, 0] = float("inf"), float("nan"), -float("inf")
    norms, expected = float64_search(books, z, 3)
    assert torch.equal(rvq_search(books, norms, z, 3), expected)


@needs_library
def test_native_buffers_are_float32_whatever_the_default_dtype():
    model = make_model(SMALL, seed=9)
    wav = torch.randn(1, 1, 3 * model.hop_length) * 0.3
    codes = model.encode(wav, n_q=8)
    audio = model.decode(codes)
    torch.set_default_dtype(torch.float64)
    try:
        streamed, streamed_audio, runtimes = frame_by_frame(model, wav, codes, 8)
    finally:
        torch.set_default_dtype(torch.float32)
    assert runtimes == {"encoder": NativePlan, "decoder": NativePlan}
    assert torch.equal(streamed, codes)
    assert (streamed_audio - audio).abs().max().item() < 1e-5


def test_rounding_skips_what_the_runtime_cannot_use():
    """Snake models have no native kernels: their weights are left as trained. A row holding
    inf is left as it is instead of turning into NaN; the other rows are rounded."""
    snake = make_model(dataclasses.replace(SMALL, activation="snake"))
    before = {k: v.clone() for k, v in snake.state_dict().items()}
    assert native.round_narrow_weights(snake) == 0
    assert all(torch.equal(before[k], v) for k, v in snake.state_dict().items())
    model = make_model(SMALL, seed=5)
    weight = model.decoder[0].conv.weight  # the decoder's first convolution: one step a frame
    with torch.no_grad():
        weight[0, 0, 0] = float("inf")
    assert native.round_narrow_weights(model) == 18
    assert torch.isinf(weight[0, 0, 0]) and torch.isfinite(weight[0, 0, 1:]).all()
    assert native.int8_rows(weight[1:].reshape(weight.shape[0] - 1, -1)) is not None
    # a spectral decoder is left as trained; its encoder is rounded as a SEANet one's
    spectral = make_model(SPECTRAL, seed=5)
    decoder = {k: v.clone() for k, v in spectral.decoder.state_dict().items()}
    assert native.round_narrow_weights(spectral) == 9  # (SMALL's 18: 9 encoder, 9 decoder)
    assert all(torch.equal(decoder[k], v) for k, v in spectral.decoder.state_dict().items())
    last = spectral.encoder[-1].conv.weight
    assert native.int8_rows(last.reshape(last.shape[0], -1)) is not None


@needs_library
@pytest.mark.parametrize("f0", [70.0, 150.0, 400.0])
def test_the_native_postfilter_is_the_numpy_one(f0):
    """frame.c's rvq_postfilter against PitchPostfilter's NumPy steps: the same periods and
    gains (the correlation summed in another order: the samples agree to rounding), with a
    non-finite stretch, offline and frame by frame, stereo."""
    from codec.postfilter import PitchPostfilter

    rate, hop = 24000, 320
    rng = np.random.default_rng(int(f0))
    t = np.arange(rate) / rate
    tone = sum(np.sin(2 * np.pi * k * f0 * (1 + 0.05 * np.sin(3 * t)) * t + k) / k for k in range(1, 30) if k * f0 < 11000)
    x = np.stack([0.05 * tone + 0.02 * rng.standard_normal(rate), 0.05 * rng.standard_normal(rate)])
    x[0, 9000:9003] = np.nan
    audio = torch.from_numpy(x)[:, None]
    outs = {}
    for use in (True, False):
        pf = PitchPostfilter(rate, hop, 0.75)
        pf.native = use
        offline = pf(audio)[:, 0].numpy()
        state = pf.fresh_state(2)
        pf.native = use
        framed = np.concatenate([pf.frames(x[:, i : i + hop], state) for i in range(0, rate, hop)], axis=1)
        outs[use] = offline, framed, state
    (a, a_framed, a_state), (b, b_framed, b_state) = outs[True], outs[False]
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.isnan(a).any()
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.nan_to_num(a_framed), np.nan_to_num(a), rtol=0, atol=1e-12)
    assert np.array_equal(a_state.lag, b_state.lag) and np.allclose(a_state.gain, b_state.gain, rtol=0, atol=1e-12)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(x))  # it combed something


@needs_library
def test_the_native_low_band_search_chooses_as_numpy_does(monkeypatch):
    """frame.c's rvq_lowband_search against quantize_arithmetic's NumPy steps, bit for bit:
    frames that fit at once, after rounding towards zero, or not at all (every bits and
    scale, and bits of each frame its own, as the 8-kHz edge's steps leave them), ratios on the
    steps' grid (ties), non-finite ratios."""
    from codec import lowband

    rng = np.random.default_rng(7)
    frames = 0
    for trial in range(80):
        if trial == 60:  # whole-bit costs: sums tie with the bits and with each other exactly
            monkeypatch.setattr(lowband, "ARITH_COST", np.abs(np.arange(-40.0, 41.0)) // 3 + 1)
        bins = int(rng.choice([1, 5, 23, 58]))
        bits = int(rng.choice([0, 4, 30, 94, 234]))
        if trial % 2:  # each frame's own (fractional) bits
            bits = np.maximum(bits - rng.uniform(0, 17.3, size=(2, 20)), 0.0)
        r = rng.laplace(size=(2, 20, bins)) * rng.choice([1e-3, 0.3, 3.0, 1e4]) * np.exp(2 * rng.normal(size=(2, 20, 1)))
        if trial % 3 == 0:
            r = np.round(r * 4) / 4
        r[0, 0], r[0, 1, 0], r[0, 2, 0], r[1, 0, 0] = 0.0, np.inf, np.nan, -np.inf
        ratio = torch.from_numpy(r)
        native_gain, native_q = lowband.quantize_arithmetic(ratio, bits)
        with monkeypatch.context() as m:
            m.setattr(lowband, "lowband_search", lambda *a, **k: None)
            gain, q = lowband.quantize_arithmetic(ratio, bits)
        assert torch.equal(native_gain, gain) and torch.equal(native_q, q), (trial, bins, bits)
        frames += gain.numel()
    assert frames == 80 * 40
