"""Streaming equals offline, whatever the chunk sizes; causality."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec.frame import ConvStep, ConvTransposeStep
from codec.streaming import CausalConv1d, CausalConvTranspose1d, streaming
from conftest import SMALL, TINY, make_model

SPECTRAL = dataclasses.replace(SMALL, decoder="spectral", decoder_dim=16, decoder_layers=2)
LOGMEL = dataclasses.replace(SPECTRAL, encoder="logmel", latent_dim=40)


def chunked_encode(model, wav, n_q, rng):
    parts, i = [], 0
    with model.streaming():
        while i < wav.shape[-1]:
            n = int(rng.integers(1, 900))
            parts.append(model.encode(wav[..., i : i + n], n_q=n_q))
            i += n
        parts.append(model.flush(wav.shape[0], wav.shape[1], n_q=n_q))
    return torch.cat(parts, dim=-1)


def chunked_decode(model, codes, rng):
    parts, i = [], 0
    with model.streaming():
        while i < codes.shape[-1]:
            n = int(rng.integers(1, 7))
            parts.append(model.decode(codes[..., i : i + n]))
            i += n
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize(
    "cfg",
    [SMALL, TINY, dataclasses.replace(TINY, lstm_layers=1), dataclasses.replace(TINY, activation="snake"),
     dataclasses.replace(SMALL, postfilter=0.75), SPECTRAL, dataclasses.replace(TINY, decoder="spectral", decoder_dim=8),
     LOGMEL, dataclasses.replace(LOGMEL, decoder="seanet")],
    ids=["small", "tiny", "lstm", "snake", "postfilter", "spectral", "tiny-spectral", "logmel", "logmel-seanet"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [(2, 2), (1, 1)], ids=["batch4", "batch1"])  # batch 1 takes frame plans
def test_streaming_equals_offline(cfg, seed, batch):
    model = make_model(cfg, seed)
    rng = np.random.default_rng(seed)
    wav = torch.randn(*batch, int(rng.integers(3000, 9000))) * 0.3
    n_q = cfg.n_q
    offline = model.encode(wav, n_q=n_q)
    streamed = chunked_encode(model, wav, n_q, rng)
    assert streamed.shape == offline.shape
    assert torch.equal(streamed, offline)
    audio = model.decode(offline)
    audio_streamed = chunked_decode(model, offline, rng)
    assert audio_streamed.shape == audio.shape
    assert (audio_streamed - audio).abs().max().item() < 1e-5


def test_streaming_state_is_reset_between_sessions():
    model = make_model(TINY)
    wav = torch.randn(1, 1, 400)
    with model.streaming():
        first = model.encode(wav, n_q=2)
    with model.streaming():
        second = model.encode(wav, n_q=2)
    assert torch.equal(first, second)
    assert not model.is_streaming


def test_appending_samples_never_changes_earlier_codes():
    model = make_model(SMALL, 3)
    wav = torch.randn(1, 1, 320 * 20) * 0.3
    full = model.encode(wav, n_q=8)
    for cut in (320 * 5, 320 * 11, 320 * 17):
        prefix = model.encode(wav[..., :cut], n_q=8)
        assert torch.equal(prefix, full[..., : prefix.shape[-1]])


def test_output_before_a_frame_is_complete_is_empty():
    """Algorithmic latency is one frame: no code is emitted before hop samples arrived."""
    model = make_model(SMALL)
    with model.streaming():
        early = model.encode(torch.randn(1, 1, SMALL.hop_length - 1), n_q=2)
        late = model.encode(torch.randn(1, 1, 1), n_q=2)
    assert early.shape[-1] == 0 and late.shape[-1] == 1


def test_decoder_emits_hop_samples_per_frame():
    model = make_model(SMALL)
    codes = torch.randint(0, 1024, (1, 1, 4, 3))
    with model.streaming():
        out = model.decode(codes[..., :1])
    assert out.shape[-1] == SMALL.hop_length


@pytest.mark.parametrize("lstm", [0, 1])
def test_inference_shortcuts_match_the_training_path(lstm):
    """Inference writes activations and residual sums in place; the training path (grad
    enabled) allocates. Both must give the same encoder latent and decoder output, and the
    caller's input must be left untouched."""
    model = make_model(dataclasses.replace(SMALL, lstm_layers=lstm), seed=3)
    wav = torch.randn(2, 1, 5 * model.hop_length) * 0.3
    kept = wav.clone()
    with torch.no_grad():
        z_fast = model.encoder(wav)
        y_fast = model.decoder(z_fast)
    with torch.enable_grad():
        z_ref = model.encoder(wav)
        y_ref = model.decoder(z_ref)
    assert torch.equal(wav, kept)
    assert torch.allclose(z_fast, z_ref, atol=1e-5)
    assert torch.allclose(y_fast, y_ref.detach(), atol=1e-5)


def steps_and_forward(layer, step_type, x, n):
    """Streams ``x`` ``[1, C, 8 n]`` through ``layer`` in chunks of ``n``: a frame step for
    chunks 0-2 and 5-7, the layer's own forward for 3 and 4, so the state passes both ways."""
    outs = []
    with streaming(layer):
        step = step_type(layer, n)
        for i in range(8):
            chunk = x[..., i * n : (i + 1) * n]
            if i in (3, 4):
                outs.append(layer(chunk))
            else:
                step.adopt()
                outs.append(step(chunk[0])[None])
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize(
    "c_in,kernel,stride,dilation", [(6, 3, 1, 9), (6, 3, 1, 1), (6, 8, 4, 1), (12, 7, 1, 1), (6, 1, 1, 1), (1, 7, 1, 1)]
)
def test_conv_step_matches_the_layer(c_in, kernel, stride, dilation):
    """A one-frame convolution step gives the layer's offline output, for every kernel shape
    the codec uses, and hands its state to the layer's own forward and back."""
    torch.manual_seed(0)
    conv = CausalConv1d(c_in, 5, kernel, stride=stride, dilation=dilation)
    torch.nn.init.normal_(conv.conv.bias)
    x = torch.randn(1, c_in, 8 * 2 * stride)
    with torch.no_grad():
        assert torch.allclose(steps_and_forward(conv, ConvStep, x, 2 * stride), conv(x), atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 3])
def test_depthwise_convolution_streamed_one_step_at_a_time(dilation):
    """A depthwise (grouped) convolution fed one step a call gives its offline output, bias
    included."""
    torch.manual_seed(0)
    conv = CausalConv1d(6, 6, 7, dilation=dilation, groups=6)
    torch.nn.init.normal_(conv.conv.bias)
    x = torch.randn(2, 6, 40)
    with torch.no_grad():
        offline = conv(x)
        with streaming(conv):
            streamed = torch.cat([conv(x[..., i : i + 1]) for i in range(40)], dim=-1)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(16, 8), (10, 5), (4, 2), (9, 3)])
@pytest.mark.parametrize("frames", [1, 3])
def test_conv_transpose_step_matches_the_layer(kernel, stride, frames):
    """A transposed step (matrix product plus overlap-add of its kernel/stride blocks) gives
    the layer's offline output, with the layer's own forward in between."""
    torch.manual_seed(0)
    layer = CausalConvTranspose1d(6, 5, kernel, stride)
    torch.nn.init.normal_(layer.conv.bias)
    x = torch.randn(1, 6, 8 * frames)
    with torch.no_grad():
        assert torch.allclose(steps_and_forward(layer, ConvTransposeStep, x, frames), layer(x), atol=1e-5)


@pytest.mark.parametrize("cfg", [SMALL, SPECTRAL, LOGMEL], ids=["seanet", "spectral", "logmel"])
def test_one_frame_calls_take_the_frame_plan(cfg):
    """Batch 1, one frame per call: the encoder and decoder run their plans (a log-mel
    encoder, one FFT a frame, runs as it is), and the codes and audio are those of offline
    coding."""
    model = make_model(cfg, seed=4)
    hop = model.hop_length
    wav = torch.randn(1, 1, 6 * hop) * 0.3
    codes = model.encode(wav, n_q=8)
    with model.streaming():
        streamed = torch.cat([model.encode(wav[..., i * hop : (i + 1) * hop], n_q=8) for i in range(6)], dim=-1)
        audio = torch.cat([model.decode(codes[..., i : i + 1]) for i in range(6)], dim=-1)
        assert set(model._plans) == ({"decoder"} if cfg.encoder == "logmel" else {"encoder", "decoder"})
    assert torch.equal(streamed, codes)
    assert (audio - model.decode(codes)).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", ["pointwise residual kernel", "float64 weights"])
def test_frame_plans_follow_the_layers(case):
    """Plans build on whatever the layers are: a residual unit whose first convolution is
    1x1 (no window to fill) runs through the layer, and buffers take the weights' dtype."""
    cfg = dataclasses.replace(SMALL, residual_kernel_size=1) if case.startswith("pointwise") else SMALL
    model = make_model(cfg, seed=5)
    hop = model.hop_length
    wav = torch.randn(1, 1, 4 * hop) * 0.3
    codes = model.encode(wav, n_q=4)
    if case.startswith("float64"):  # (encode takes float32 audio: decode only)
        model = model.double()
    with model.streaming():
        audio = torch.cat([model.decode(codes[..., i : i + 1]) for i in range(4)], dim=-1)
        assert "decoder" in model._plans
    assert (audio - model.decode(codes)).abs().max().item() < 1e-5
    if case.startswith("pointwise"):
        with model.streaming():
            streamed = torch.cat([model.encode(wav[..., i * hop : (i + 1) * hop], n_q=4) for i in range(4)], dim=-1)
        assert torch.equal(streamed, codes)
