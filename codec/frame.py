"""One-frame runtime: the encoder or decoder as a flat list of steps with preallocated buffers.

Live streaming sends one frame (13.3 ms at 24 kHz) at a time. On one frame the layers' own
``forward`` spends most of its time outside arithmetic: module calls, concatenating the state
with the input, gathering convolution taps into fresh tensors, allocating every output. A
:class:`FramePlan` does the same arithmetic through buffers allocated once per streaming
session and views set up once, so a convolution is a copy of its input into a window, a copy
of the taps, one matrix product and a shift of the window.

The steps share the layers' streaming state: a step adopts a layer's state when it finds one
it did not make (after the layers' own ``forward`` ran on a longer chunk) and hands its own
back as the layer's state, so one-frame and multi-frame calls can alternate freely. A plan
takes and returns batch-1 tensors ``[1, C, T]``; its steps work on ``[C, T]`` (indexing away
the batch dimension costs as much as a small copy). Layers without a step of their own (LSTM,
Snake, the spectral decoder's inverse FFT) run their ``forward``, which keeps their state.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .seanet import ELU, ResidualUnit
from .spectral import ChannelNorm, ConvNeXtBlock, FFTHead, FFTSynthesis
from .streaming import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTransposeState, StreamingModule

Step = Callable[[Tensor], Tensor]


class CarryingStep:
    """A step whose layer carries state between calls. ``state`` is the step's own (None if
    the layer keeps none) and is what the layer's forward finds while the step is in use."""

    layer: StreamingModule
    state: ConvState | ConvTransposeState | None

    def owns_state(self) -> bool:
        return self.state is None or self.layer.state is self.state

    def adopt(self) -> None:
        """Take over the layer's state if it holds one this step did not make."""
        if self.owns_state():
            return
        own, previous = _carried(self.state), self.layer.state
        if previous is None:
            own.zero_()
        elif _carried(previous).shape == own.shape:
            own.copy_(_carried(previous))
        else:  # a partial stride pending, or another batch size: callers plan whole frames of batch 1
            raise RuntimeError(f"frame step for state {tuple(own.shape)} found {tuple(_carried(previous).shape)}")
        self.layer.state = self.state


def _carried(state: ConvState | ConvTransposeState) -> Tensor:
    return state.buffer if isinstance(state, ConvState) else state.partial


class WindowedStep(CarryingStep):
    """A step of a :class:`CausalConv1d` on ``n`` input steps a call, through a window
    ``[C_in, context + n]``: the left context (the layer's streaming state), then the input."""

    def _open_window(self, layer: CausalConv1d, n: int) -> None:
        conv, ctx = layer.conv, layer.context
        window = torch.zeros(1, conv.in_channels, ctx + n, dtype=conv.weight.dtype, device=conv.weight.device)
        self.state = ConvState(window[..., :ctx])  # what the layer's own forward reads
        self.window = window[0]
        self.input, self.head, self.shift_from = self.window[:, ctx:], self.window[:, :ctx], self.window[:, n:]
        self.overlapping = n < ctx  # source and destination of the shift overlap

    def _slide(self) -> None:
        """Keep the window's last ``context`` steps as the next call's left context."""
        self.head.copy_(self.shift_from.clone() if self.overlapping else self.shift_from)


class ConvStep(WindowedStep):
    """A :class:`CausalConv1d` on a fixed input length ``n`` (a multiple of its stride).

    ``window`` ``[1, C_in, context + n]`` holds the left context, then the input; the taps of
    all ``n / stride`` outputs are a strided view of it, copied into ``cols`` ``[C_in * k,
    n / stride]`` for one matrix product with the weight ``[C_out, C_in * k]``.
    """

    def __init__(self, layer: CausalConv1d, n: int) -> None:
        conv = layer.conv
        c_in, k, dilation = conv.in_channels, conv.kernel_size[0], conv.dilation[0]
        self.layer, self.n_out = layer, n // layer.stride
        self.weight = conv.weight.detach().reshape(conv.out_channels, c_in * k)
        self.bias = conv.bias.detach()[:, None]
        self.pointwise = layer.context == 0 and layer.stride == 1
        self.state = None
        if self.pointwise:  # no window: the input is the only tap
            return
        self._open_window(layer, n)
        taps = self.window.unfold(-1, layer.span, layer.stride)[..., ::dilation]  # [C_in, n_out, k]
        self.taps = taps.transpose(1, 2)  # [C_in, k, n_out]
        self.cols = torch.empty(c_in * k, self.n_out, dtype=conv.weight.dtype, device=conv.weight.device)
        self.cols_3d = self.cols.view(c_in, k, self.n_out)

    def __call__(self, x: Tensor | None) -> Tensor:
        """``x`` ``[C_in, n]`` (None: already written into ``input``) -> ``[C_out, n_out]``."""
        if self.pointwise:
            return torch.addmm(self.bias, self.weight, x)
        if x is not None:
            self.input.copy_(x)
        self.cols_3d.copy_(self.taps)
        y = torch.addmm(self.bias, self.weight, self.cols)
        self._slide()
        return y


class ConvTransposeStep(CarryingStep):
    """A :class:`CausalConvTranspose1d` on ``n`` input frames, kernel a multiple of the stride.

    Each input frame contributes ``kernel / stride`` blocks of ``stride`` samples, all from
    one matrix product; the blocks are overlap-added, the carried tail of the previous call
    added to the start, and the last ``kernel - stride`` samples carried to the next.
    """

    def __init__(self, layer: CausalConvTranspose1d, n: int) -> None:
        conv = layer.conv
        c_in, c_out, k, s = conv.in_channels, conv.out_channels, conv.kernel_size[0], layer.stride
        if k % s:
            raise ValueError("frame steps need a transposed kernel that is a multiple of its stride")
        self.layer, self.n, self.stride, self.blocks = layer, n, s, k // s
        self.weight_t = conv.weight.detach().reshape(c_in, c_out * k).t()  # [C_out * k, C_in]
        self.bias = conv.bias.detach()[:, None]
        like = {"dtype": conv.weight.dtype, "device": conv.weight.device}
        self.state = ConvTransposeState(torch.zeros(1, c_out, layer.overlap, **like))
        self.sum = torch.empty(c_out, s, n + self.blocks - 1, **like)  # overlap-added blocks, stride-major
        self.time = torch.empty(c_out, n + self.blocks - 1, s, **like)  # the same, time-major

    def __call__(self, x: Tensor) -> Tensor:
        c_out, s, n = self.bias.shape[0], self.stride, self.n
        cols = torch.mm(self.weight_t, x)  # [C_out * k, n]
        if n == 1:  # one frame: the blocks are already in time order
            y = cols.view(c_out, -1)
        else:
            blocks = cols.view(c_out, self.blocks, s, n)
            self.sum[..., :n].copy_(blocks[:, 0])
            self.sum[..., n:].zero_()
            for j in range(1, self.blocks):
                self.sum[..., j : j + n] += blocks[:, j]
            self.time.copy_(self.sum.transpose(1, 2))
            y = self.time.view(c_out, -1)
        carry = self.state.partial[0]
        y[:, : carry.shape[-1]] += carry
        out = y[:, : n * s] + self.bias
        carry.copy_(y[:, n * s :])
        return out


class ResidualStep:
    """A :class:`ResidualUnit` with ELU: the first activation is computed in the dilated
    convolution's window, the second in place, the skip added in place."""

    def __init__(self, unit: ResidualUnit, n: int) -> None:
        self.conv, self.pointwise = ConvStep(unit.block[1], n), ConvStep(unit.block[3], n)

    @property
    def state(self) -> ConvState | None:
        return self.conv.state

    def owns_state(self) -> bool:
        return self.conv.owns_state()

    def adopt(self) -> None:
        self.conv.adopt()

    def __call__(self, x: Tensor) -> Tensor:
        F.elu_(self.conv.input.copy_(x))
        h = F.elu_(self.conv(None))
        return torch.addmm(self.pointwise.bias, self.pointwise.weight, h).add_(x)


class ChannelNormStep:
    """A :class:`ChannelNorm` (layer norm over the channels of each step)."""

    def __init__(self, layer: ChannelNorm) -> None:
        self.layer = layer

    def __call__(self, x: Tensor) -> Tensor:
        norm = self.layer
        return F.layer_norm(x.t(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).t()


class LinearStep:
    """A 1x1 ``nn.Conv1d`` (the spectral decoder's projection to spectra): one matrix product."""

    def __init__(self, conv: nn.Conv1d) -> None:
        self.weight = conv.weight.detach()[..., 0]  # [C_out, C_in]
        self.bias = conv.bias.detach()[:, None]

    def __call__(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, self.weight, x)


class ConvNeXtStep(WindowedStep):
    """A :class:`ConvNeXtBlock` on ``n`` frames. ``window`` ``[1, C, context + n]`` holds the
    depthwise convolution's left context (its streaming state), then the input; the taps of the
    ``n`` outputs are a view of it, ``[C, n, kernel]``."""

    def __init__(self, block: ConvNeXtBlock, n: int) -> None:
        layer, conv = block.dwconv, block.dwconv.conv
        self.layer, self.norm = layer, block.norm
        self.depthwise, self.depthwise_bias = conv.weight.detach()[:, 0], conv.bias.detach()[:, None]  # [C, k], [C, 1]
        self.weight1, self.bias1 = block.pw1.weight.detach(), block.pw1.bias.detach()  # [H, C], [H]
        self.weight2, self.bias2 = block.pw2.weight.detach(), block.pw2.bias.detach()  # [C, H], [C]
        self.gain = block.scale.detach()[:, None]
        self._open_window(layer, n)
        self.taps = self.window.unfold(-1, layer.span, 1)[..., :: conv.dilation[0]]  # [C, n, k]

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` ``[C, n]`` -> ``[C, n]``."""
        self.input.copy_(x)
        h = (self.taps * self.depthwise[:, None]).sum(-1).add_(self.depthwise_bias)  # [C, n]
        self._slide()
        norm = self.norm
        h = F.layer_norm(h.t(), norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # [n, C]
        h = torch.addmm(self.bias2, F.gelu(torch.addmm(self.bias1, h, self.weight1.t())), self.weight2.t())
        return torch.addcmul(x, h.t(), self.gain)


class SynthesisStep:
    """The spectral decoder's inverse FFT and cross-fade (:class:`FFTSynthesis`), by its own
    forward, which keeps its state: ``[n_fft + 2, n]`` -> ``[1, n * hop]``."""

    def __init__(self, layer: FFTSynthesis) -> None:
        self.layer = layer

    def __call__(self, x: Tensor) -> Tensor:
        return self.layer(x.unsqueeze(0))[0]


class FramePlan:
    """The steps of ``network`` (an ``nn.Sequential`` encoder or decoder) for ``n`` input
    samples or frames per call; ``plan(x)`` runs them, ``[1, C, n]`` -> ``[1, C', n']``.
    Build it inside a streaming session and drop it when the session ends."""

    def __init__(self, network: nn.Sequential, n: int) -> None:
        self.steps: list[Step] = []
        self.lengths: list[int] = []  # each step's input steps a call
        for layer in _layers(network):
            self.lengths.append(n)
            step, n = _step(layer, n)
            self.steps.append(step)
        self.stateful = [s for s in self.steps if getattr(s, "state", None) is not None]  # (not 1x1 convolutions)

    def adopt(self) -> None:
        """Take over the layers' state where they hold one the steps did not make. The layers'
        own forward replaces the state of every layer, so the first and last ones tell whether
        it ran since the last frame."""
        if not all(step.owns_state() for step in self.stateful[:1] + self.stateful[-1:]):
            for step in self.stateful:
                step.adopt()

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        self.adopt()
        h = x[0]
        for step in self.steps:
            h = step(h)
        return h.unsqueeze(0)


def _layers(network: nn.Sequential) -> list[nn.Module]:
    """The layers of ``network``, an :class:`FFTHead` as its projection and its synthesis."""
    layers: list[nn.Module] = []
    for layer in network:
        layers += [layer.proj, layer.synthesis] if isinstance(layer, FFTHead) else [layer]
    return layers


def _step(layer: nn.Module, n: int) -> tuple[Step, int]:
    """The step for ``layer`` on ``n`` time steps, and its output length."""
    if isinstance(layer, ConvNeXtBlock):
        return ConvNeXtStep(layer, n), n
    if isinstance(layer, ChannelNorm):
        return ChannelNormStep(layer), n
    if isinstance(layer, FFTSynthesis):
        return SynthesisStep(layer), n * layer.hop
    if type(layer) is nn.Conv1d and layer.kernel_size == (1,) and layer.stride == (1,) and layer.padding == (0,) \
            and layer.groups == 1 and layer.bias is not None:
        return LinearStep(layer), n
    if isinstance(layer, CausalConv1d):
        return ConvStep(layer, n), n // layer.stride
    if isinstance(layer, CausalConvTranspose1d) and layer.conv.kernel_size[0] % layer.stride == 0:
        return ConvTransposeStep(layer, n), n * layer.stride
    if isinstance(layer, CausalConvTranspose1d):
        return _batch_of_one(layer), n * layer.stride
    if isinstance(layer, ResidualUnit) and isinstance(layer.block[0], ELU) and layer.block[1].context:
        return ResidualStep(layer, n), n
    if isinstance(layer, ELU):
        return (F.elu_ if layer.inplace else F.elu), n
    return _batch_of_one(layer), n  # LSTM, Snake and residual units around them


def _batch_of_one(layer: nn.Module) -> Step:
    """A layer's own forward as a step: ``[C, T]`` -> ``[C', T']``."""
    return lambda h: layer(h.unsqueeze(0))[0]
