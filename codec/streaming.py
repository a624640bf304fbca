"""Causal convolutions with explicit streaming state.

Offline, every layer sees zeros as its left context; inside ``with streaming(module):`` it
keeps the end of its input (or its output's overlap) between calls instead, so feeding a
signal in chunks of any size yields the same output as feeding it whole. Offline convolutions
let the library pad the zeros (no copy of the input); streaming ones concatenate the state.
Live streaming's single frames take the same state through codec/frame.py's preallocated
steps instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


# _zero_bias_note: biases start at zero. PyTorch's default bias init (up to 1/sqrt(fan_in),
# 0.38 for the first layer) dwarfs the response to audio at speech levels, so at
# initialisation the latent was a near-constant with frame-to-frame variation under 2% of its
# size; any small drift of that constant then moved all frames off the codebook at once and
# RVQ usage collapsed to a few entries. With zero biases the latent starts as a function of the
# signal alone (silence in, zero out).


@dataclass
class ConvState:
    """Input samples not yet consumed by a convolution (left context + incomplete stride)."""

    buffer: torch.Tensor  # [B, C_in, L]


@dataclass
class ConvTransposeState:
    """Overlapping tail of a transposed convolution still waiting for the next frame."""

    partial: torch.Tensor  # [B, C_out, kernel - stride]


class StreamingModule(nn.Module):
    """Base class: holds ``state`` while streaming, ``None`` otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming_on = False
        self.state: ConvState | ConvTransposeState | None = None

    def reset_state(self) -> None:
        self.state = None


@contextlib.contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """Keep the streaming state of every layer of ``module`` between calls."""
    layers = [m for m in module.modules() if isinstance(m, StreamingModule)]
    for m in layers:
        m.streaming_on, m.state = True, None
    try:
        yield
    finally:
        for m in layers:
            m.streaming_on, m.state = False, None


class CausalConv1d(StreamingModule):
    """Conv1d that only looks back: output frame t depends on inputs up to (t+1)*stride-1.

    Shapes: ``[B, C_in, T] -> [B, C_out, T // stride]`` offline, where T is a multiple of
    the stride; in streaming mode every complete stride of input gives one output.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation, groups=groups)
        nn.init.zeros_(self.conv.bias)  # see _zero_bias_note
        self.stride = stride
        self.span = (kernel - 1) * dilation + 1
        self.context = self.span - stride  # left context kept between calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.context and self.stride == 1 and x.shape[-1]:  # pointwise in time: no state
            return self.conv(x)
        if not self.streaming_on and self.context and x.shape[-1] + self.context >= self.span:
            # Offline the convolution pads the left context itself, sparing a copy of the
            # input; the zeros it also puts on the right only give surplus outputs.
            n_out = (x.shape[-1] + self.context - self.span) // self.stride + 1
            conv = self.conv
            return F.conv1d(x, conv.weight, conv.bias, self.stride, self.context, conv.dilation, conv.groups)[..., :n_out]
        state = self.state if self.streaming_on else None
        if state is None:
            prev = x.new_zeros(x.shape[0], x.shape[1], self.context)
        else:
            prev = state.buffer
        inp = torch.cat([prev, x], dim=-1)
        n_out = max(0, (inp.shape[-1] - self.span) // self.stride + 1)
        if n_out > 0:
            y = self.conv(inp[..., : (n_out - 1) * self.stride + self.span])
        else:
            y = x.new_zeros(x.shape[0], self.conv.out_channels, 0)
        if self.streaming_on:
            self.state = ConvState(inp[..., n_out * self.stride :])
        return y


class CausalConvTranspose1d(StreamingModule):
    """Transposed conv emitting exactly ``stride`` samples per input frame, no look-ahead.

    The last ``kernel - stride`` samples of each call are incomplete (the next frame adds to
    them) and are carried over. Shapes: ``[B, C_in, T] -> [B, C_out, T * stride]``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        if kernel < stride:
            raise ValueError("kernel must be at least the stride")
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel, stride=stride)
        nn.init.zeros_(self.conv.bias)  # see _zero_bias_note
        self.stride = stride
        self.overlap = kernel - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[-1]
        state = self.state if self.streaming_on else None
        if t == 0:
            return x.new_zeros(b, self.conv.out_channels, 0)
        # Bias is added once, on emitted samples, so carried overlaps don't count it twice.
        y = F.conv_transpose1d(x, self.conv.weight, None, stride=self.stride)
        if self.overlap and state is not None:  # a fresh state's carry is zeros: nothing to add
            y[..., : self.overlap] += state.partial
        out = y[..., : t * self.stride] + self.conv.bias[:, None]
        if self.streaming_on:
            self.state = ConvTransposeState(y[..., t * self.stride :])
        return out


class CausalLSTM(StreamingModule):
    """Unidirectional LSTM with a skip connection; the state is (h, c). ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x
        hc = self.state if self.streaming_on else None
        y, new_hc = self.lstm(x.transpose(1, 2), hc)
        if self.streaming_on:
            self.state = new_hc  # type: ignore[assignment]
        return y.transpose(1, 2) + x
