"""The native one-frame runtime: codec/csrc/frame.c, compiled on first use, run with ctypes.

A :class:`~codec.frame.FramePlan` in PyTorch still spends most of a frame outside arithmetic:
a frame of the encoder, quantizer and decoder is some 300 small operations, each with its
own dispatch and its own trip through the cache. :class:`NativePlan` hands the same steps,
buffers and streaming state to one C call per frame; :func:`rvq_search` does a frame's
codebook search in one call (float32 first, float64 for the entries float32 cannot rank, so
the codes are the float64 search's) and :func:`rvq_decode` its codebook sum.

Most of a frame's time is memory traffic, so the products that read each weight once per
frame (the deepest layers, at most NARROW time steps a frame) read their weights packed in
the order they use them (:func:`pack`), and in as few bytes as represent them exactly: int8
rows times a power of two where the weights are exactly that (a release's deepest layers
are rounded so, :func:`round_narrow_weights`), else float16 where they are float16 values,
else float32. The products stay the same; the codebooks are read as float16 likewise.

The library is compiled with the system C compiler (``$CC``, else ``cc``) at ``-O3
-march=native -ffp-contract=fast`` into ``~/.cache/rvqcodec/native`` (``$RVQCODEC_CACHE``
moves the root) under a name that hashes the source, the flags, the compiler and the CPU, so
a shared home directory never runs a library built for another CPU. Without a compiler, or
with ``RVQCODEC_NATIVE=0``, :func:`library` returns None and callers keep the PyTorch path;
results agree with it up to float rounding (about 1e-6 of a layer's peak output at most), which
the float64 codebook search absorbs but for near-ties.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .frame import ChannelNormStep, ConvNeXtStep, ConvStep, ConvTransposeStep, FramePlan, LinearStep, ResidualStep, Step, SynthesisStep

SOURCE = Path(__file__).with_name("csrc") / "frame.c"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC", "-std=c11"]
BUILD_TIMEOUT_S = 120

_CONV, _RESIDUAL, _ELU, _CONV_TRANSPOSE, _NORM, _CONVNEXT = 0, 1, 2, 3, 4, 5
_FLOAT32, _FLOAT16, _INT8 = 0, 1, 2  # frame.c's WEIGHTS_*


class Op(ctypes.Structure):
    """Mirror of ``Op`` in frame.c: one layer, its sizes and the buffers it reads and writes."""

    _fields_ = [
        (name, ctypes.c_int32) for name in ("kind", "c_in", "c_out", "kernel", "stride", "dilation", "context", "n", "hidden", "format")
    ] + [(name, ctypes.c_void_p) for name in ("window", "weight", "bias", "weight2", "bias2", "scale", "scale2", "cols", "mid", "carry", "out",
                                              "depthwise", "depthwise_bias", "norm_weight", "norm_bias", "gain")] + [("eps", ctypes.c_float)]


def cache_dir() -> Path:
    return Path(os.environ.get("RVQCODEC_CACHE", Path.home() / ".cache" / "rvqcodec")) / "native"


def _cpu_id() -> str:
    try:
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))]
        return flags[0] if flags else platform.processor()
    except OSError:
        return platform.processor()


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled runtime, built if needed; None where it cannot be (see module docstring)."""
    if os.environ.get("RVQCODEC_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(), _cpu_id().encode()]))
    path = cache_dir() / f"frame-{key.hexdigest()[:16]}.so"
    try:
        if not path.exists():
            _build(compiler, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.rvq_run.argtypes = [ctypes.POINTER(Op), ctypes.c_int, ctypes.c_void_p]
    lib.rvq_run.restype = None
    lib.rvq_search.argtypes = [ctypes.c_int] * 5 + [ctypes.c_void_p] * 6
    lib.rvq_search.restype = None
    lib.rvq_decode.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p] * 3
    lib.rvq_beam.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p] * 7
    lib.rvq_beam.restype = ctypes.c_int
    lib.rvq_decode.restype = ctypes.c_int
    lib.rvq_packed_rows.argtypes = [ctypes.c_int]
    lib.rvq_packed_rows.restype = ctypes.c_int
    lib.rvq_postfilter.argtypes = [ctypes.c_int] * 7 + [ctypes.c_double] * 3 + [ctypes.c_void_p] * 4
    lib.rvq_postfilter.restype = ctypes.c_int
    lib.rvq_lowband_search.argtypes = [ctypes.c_int] * 2 + [ctypes.c_void_p] + [ctypes.c_int] * 5 + [ctypes.c_void_p] * 6
    lib.rvq_lowband_search.restype = ctypes.c_int
    return lib


def _build(compiler: str, path: Path) -> None:
    """Compile into a temporary name and rename, so concurrent first uses never load half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(*shape: int) -> Tensor:
    """A float32 buffer for C, zeroed (rows a narrow product reads but ignores included),
    float32 whatever torch's default dtype."""
    return torch.zeros(*shape, dtype=torch.float32)


NARROW = 8  # frame.c: products of up to this many columns take packed weights (see pack)


def compact(weight: Tensor) -> Tensor:
    """``weight`` as float16 where that loses nothing (release weights are float16 values),
    else as it is: frame.c reads half the bytes and computes the same products."""
    half = weight.detach().half()
    return half if torch.equal(half.float(), weight) else weight


MIN_SCALE_EXPONENT = -24  # int8 rows' scales: float16's smallest step, so rounded rows stay float16 values


def _row_scales(weight: Tensor) -> Tensor:
    """Per row of ``weight`` ``[M, J]``: the smallest power of two (at least 2^-24) that puts
    the row within +-127 of it."""
    peak = weight.abs().amax(1)
    exponent = torch.ceil(torch.log2(peak / 127)).clamp(min=MIN_SCALE_EXPONENT)
    return torch.exp2(torch.where(peak > 0, exponent, torch.zeros_like(exponent)))


def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor] | None:
    """``weight`` ``[M, J]`` as int8 rows times a power of two each, ``(q [M, J] int8, scale
    [M])``, if it is exactly that (as the narrow products of a release are: see
    :func:`round_narrow_weights`), else None."""
    w = weight.detach().float()
    scale = _row_scales(w)
    q = w / scale[:, None]
    if not bool(torch.isfinite(q).all()) or not torch.equal(q, q.round()) or float(q.abs().max()) > 127:
        return None
    return q.to(torch.int8), scale


def round_narrow_weights(model: nn.Module) -> int:
    """Round in place, row by row, the weights of the products a live frame of ``model`` (a
    Codec) runs with at most NARROW columns (the deepest layers) to int8 multiples of a power
    of two: the rows stay float16 values, and frame.c reads them as int8, a quarter of their
    float32 bytes, for a change in the outputs of about -45 dB. Returns how many matrices
    were rounded. A spectral decoder is left as trained: rounding it changes its output by
    about -34 dB, and its live frame is fast enough with float16 weights."""
    with model.streaming():
        plans = [FramePlan(model.encoder, model.hop_length)] if model.cfg.encoder == "seanet" else []
        if model.cfg.decoder == "seanet":
            plans.append(FramePlan(model.decoder, 1))
        # (rounding the weights of a plan frame.c cannot run would cost quality for nothing)
        return sum(round_plan_weights(plan) for plan in plans if native_steps(plan) is not None)


_KERNELS = (ConvStep, ResidualStep, ConvTransposeStep, ChannelNormStep, ConvNeXtStep, LinearStep)


def native_steps(plan: FramePlan) -> int | None:
    """How many of ``plan``'s steps frame.c runs: all, but a last inverse FFT
    (:class:`SynthesisStep`), which runs in PyTorch; None where a step has no kernel (LSTM,
    Snake)."""
    steps = plan.steps[:-1] if plan.steps and isinstance(plan.steps[-1], SynthesisStep) else plan.steps
    if not all(isinstance(s, _KERNELS) or s is F.elu_ or s is F.elu for s in steps):
        return None
    return len(steps)


@torch.no_grad()
def round_plan_weights(plan: FramePlan) -> int:
    """:func:`round_narrow_weights` for the layers of one plan (rows holding inf or NaN are
    left as they are)."""
    rounded = 0
    for step, length in zip(plan.steps, plan.lengths):
        for matrix, columns in _products(step, length):
            if columns <= NARROW:
                scale = _row_scales(matrix)[:, None]
                finite = torch.isfinite(matrix).all(1, keepdim=True)
                matrix.copy_(torch.where(finite, (matrix / scale).round().clamp(-127, 127) * scale, matrix))
                rounded += 1
    return rounded


def _products(step: object, n: int) -> list[tuple[Tensor, int]]:
    """The weight matrices of a plan step on ``n`` input steps (views of the layers'
    parameters) and their products' column counts."""
    if isinstance(step, ConvStep):
        return [(step.weight, step.n_out)]
    if isinstance(step, ResidualStep):
        return [(step.conv.weight, n), (step.pointwise.weight, n)]
    if isinstance(step, ConvTransposeStep):
        return [(step.weight_t, n)]
    if isinstance(step, ConvNeXtStep):
        return [(step.weight1, n), (step.weight2, n)]
    if isinstance(step, LinearStep):
        return [(step.weight, n)]
    return []


def pack(weight: Tensor, columns: int) -> Tensor:
    """A product's weight ``[M, J]`` as frame.c's narrow products (``columns`` <= NARROW) read it:
    blocks of B rows (B from the library), each stored column by column, ``[M / B, J, B]``,
    the last block padded with zero rows."""
    rows = library().rvq_packed_rows(columns)
    m, j = weight.shape
    padded = F.pad(weight.detach(), (0, 0, 0, -m % rows))
    return padded.reshape(-1, rows, j).transpose(1, 2).contiguous()


class NativePlan:
    """A :class:`FramePlan` run by frame.c: ``plan(x)``, ``[1, C, n]`` -> ``[1, C', n']``.

    Uses the plan's own windows, carries and weights, so its streaming state stays the
    layers' state; adds the output and scratch buffers C needs, and float16 copies of the
    narrow products' weights where exact (:func:`compact`), made when the plan is built:
    build one per streaming session, with :meth:`for_plan`, which says None for plans it
    cannot run. A last inverse FFT (``tail``) runs in PyTorch on frame.c's output.
    """

    def __init__(self, plan: FramePlan, lib: ctypes.CDLL, ops: list[Op], kept: list[Tensor], out: Tensor,
                 tail: list[Step]) -> None:
        self.plan, self.lib, self.out, self.tail = plan, lib, out, tail
        self.in_shape = (1, ops[0].c_in, ops[0].n)
        self.ops = (Op * len(ops))(*ops)
        self.kept = kept  # tensors the ops point into that nothing else holds

    @classmethod
    def for_plan(cls, plan: FramePlan, channels: int, n: int) -> "NativePlan | None":
        """``channels`` x ``n``: the plan's input. None without the library, off the CPU,
        outside float32, or with a step frame.c has no kernel for (:func:`native_steps`)."""
        lib, count = library(), native_steps(plan)
        if lib is None or not count or any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() for t in _tensors(plan)):
            return None
        ops: list[Op] = []
        kept: list[Tensor] = []

        def keep(t: Tensor) -> Tensor:
            kept.append(t)
            return t

        out = None
        for step in plan.steps[:count]:
            op, out = _op(step, channels, n, keep)
            ops.append(op)
            channels, n = out.shape
        return cls(plan, lib, ops, kept, out, plan.steps[count:])

    def __call__(self, x: Tensor) -> Tensor:
        self.plan.adopt()
        if tuple(x.shape) != self.in_shape:  # C would read past the input
            raise ValueError(f"native frame plan for {self.in_shape}, got {tuple(x.shape)}")
        x = x.float().contiguous()
        self.lib.rvq_run(self.ops, len(self.ops), x.data_ptr())
        h = self.out.clone()
        for step in self.tail:
            h = step(h)
        return h.unsqueeze(0)


def _op(step: object, channels: int, n: int, keep: Callable[[Tensor], Tensor]) -> tuple[Op, Tensor]:
    """The Op for one plan step (one :func:`native_steps` counts) on ``channels`` x ``n``
    input and its output buffer; ``keep`` holds the tensors it makes. Narrow products (at most
    NARROW columns) get packed weights, float16 where exact."""
    if isinstance(step, ConvStep):
        layer = step.layer
        fmt, (weight,), (scale,) = _weights(step, n, keep)
        op = Op(kind=_CONV, c_in=channels, c_out=step.weight.shape[0], kernel=layer.conv.kernel_size[0], stride=layer.stride,
                dilation=layer.conv.dilation[0], context=layer.context, n=n, format=fmt, weight=weight, scale=scale,
                bias=_ptr(step.bias))
        if not step.pointwise:
            op.window, op.cols = _ptr(step.window), _ptr(step.cols)
        out = keep(_f32(op.c_out, step.n_out))
    elif isinstance(step, ResidualStep):
        conv, pointwise = step.conv, step.pointwise
        hidden = conv.weight.shape[0]
        fmt, weights, scales = _weights(step, n, keep)
        op = Op(kind=_RESIDUAL, c_in=channels, c_out=pointwise.weight.shape[0], kernel=conv.layer.conv.kernel_size[0], stride=1,
                dilation=conv.layer.conv.dilation[0], context=conv.layer.context, n=n, hidden=hidden, format=fmt,
                window=_ptr(conv.window), weight=weights[0], scale=scales[0], bias=_ptr(conv.bias), weight2=weights[1],
                scale2=scales[1], bias2=_ptr(pointwise.bias), cols=_ptr(conv.cols), mid=_ptr(keep(_f32(hidden, n))))
        out = keep(_f32(op.c_out, n))
    elif step is F.elu_ or step is F.elu:
        op = Op(kind=_ELU, c_in=channels, c_out=channels, stride=1, n=n)
        out = keep(_f32(channels, n))
    elif isinstance(step, ConvTransposeStep):
        k, s, c_out = step.blocks * step.stride, step.stride, step.bias.shape[0]
        fmt, (weight,), (scale,) = _weights(step, n, keep)  # [C_out * k, C_in]
        op = Op(kind=_CONV_TRANSPOSE, c_in=channels, c_out=c_out, kernel=k, stride=s, context=k - s, n=n, format=fmt,
                weight=weight, scale=scale, bias=_ptr(step.bias),
                carry=_ptr(step.state.partial), cols=_ptr(keep(_f32(c_out * k, n))),
                mid=_ptr(keep(_f32(c_out, n * s + k - s))))
        out = keep(_f32(c_out, n * s))
    elif isinstance(step, LinearStep):
        fmt, (weight,), (scale,) = _weights(step, n, keep)
        op = Op(kind=_CONV, c_in=channels, c_out=step.weight.shape[0], kernel=1, stride=1, n=n, format=fmt,
                weight=weight, scale=scale, bias=_ptr(step.bias))
        out = keep(_f32(op.c_out, n))
    elif isinstance(step, ChannelNormStep):
        norm = step.layer
        op = Op(kind=_NORM, c_in=channels, c_out=channels, stride=1, n=n, norm_weight=_ptr(norm.weight),
                norm_bias=_ptr(norm.bias), eps=norm.eps)
        out = keep(_f32(channels, n))
    elif isinstance(step, ConvNeXtStep):
        conv, hidden = step.layer.conv, step.weight1.shape[0]
        fmt, weights, scales = _weights(step, n, keep)
        op = Op(kind=_CONVNEXT, c_in=channels, c_out=channels, kernel=conv.kernel_size[0], stride=1,
                dilation=conv.dilation[0], context=step.layer.context, n=n, hidden=hidden, format=fmt,
                window=_ptr(step.window), weight=weights[0], scale=scales[0], bias=_ptr(step.bias1),
                weight2=weights[1], scale2=scales[1], bias2=_ptr(step.bias2), cols=_ptr(keep(_f32(channels, n))),
                mid=_ptr(keep(_f32(hidden, n))), depthwise=_ptr(step.depthwise),
                depthwise_bias=_ptr(step.depthwise_bias), norm_weight=_ptr(step.norm.weight),
                norm_bias=_ptr(step.norm.bias), gain=_ptr(step.gain), eps=step.norm.eps)
        out = keep(_f32(channels, n))
    else:
        raise TypeError(f"frame.c has no kernel for {step!r}")
    op.out = _ptr(out)
    return op, out


def _weights(step: object, n: int, keep: Callable[[Tensor], Tensor]) -> tuple[int, list[int], list[int | None]]:
    """The weights of a plan step's products (:func:`_products`, the matrices
    :func:`round_plan_weights` rounds) as frame.c reads them: the format and the pointers to
    the weights and (int8) their row scales. Wide products take them as they are; narrow ones packed,
    as int8 rows if every weight of the op is exactly that, else float16 if that is exact
    for every one (an op has one format), else float32."""
    products = _products(step, n)
    weights, columns = [m for m, _ in products], products[0][1]
    if columns > NARROW:
        return _FLOAT32, [_ptr(keep(w.contiguous())) for w in weights], [None] * len(weights)
    rows = [int8_rows(w) for w in weights]
    if all(r is not None for r in rows):
        return _INT8, [_ptr(keep(pack(q, columns))) for q, _ in rows], [_ptr(keep(scale)) for _, scale in rows]
    packed = [pack(w, columns) for w in weights]
    compacted = [compact(w) for w in packed]
    if all(w.dtype == torch.float16 for w in compacted):
        return _FLOAT16, [_ptr(keep(w)) for w in compacted], [None] * len(weights)
    return _FLOAT32, [_ptr(keep(w)) for w in packed], [None] * len(weights)


def _tensors(plan: FramePlan) -> list[Tensor]:
    """Every tensor of ``plan`` that frame.c reads or writes."""
    found: list[Tensor] = []
    for step in plan.steps:
        for conv in (step.conv, step.pointwise) if isinstance(step, ResidualStep) else (step,):
            found += [t for t in (getattr(conv, name, None) for name in ("weight", "bias", "window", "cols")) if isinstance(t, Tensor)]
        if isinstance(step, ConvTransposeStep):
            found += [step.weight_t.t(), step.bias, step.state.partial]  # (weight_t is a transposed view)
        if isinstance(step, ChannelNormStep):
            found += [step.layer.weight, step.layer.bias]
        if isinstance(step, ConvNeXtStep):
            found += [step.depthwise, step.depthwise_bias, step.weight1, step.bias1, step.weight2, step.bias2, step.gain,
                      step.norm.weight, step.norm.bias]
    return found


def _search_inputs(codebooks: Tensor, norms: Tensor, z: Tensor, n_q: int) -> tuple[ctypes.CDLL, Tensor, Tensor, Tensor] | None:
    """The library and the contiguous inputs of a native search (float32 rows ``z``), checked;
    None without the library, off the CPU or for codebooks neither float16 nor float32."""
    lib = library()
    if lib is None or codebooks.device.type != "cpu" or codebooks.dtype not in (torch.float16, torch.float32):
        return None
    codebooks, norms, z = codebooks.contiguous(), norms.contiguous(), z.float().contiguous()
    levels, size, dim = codebooks.shape
    if n_q > levels or z.shape[1] != dim or norms.shape != (levels, size) or norms.dtype != torch.float64:
        raise ValueError(f"search of {n_q} levels of {tuple(z.shape)} in codebooks {tuple(codebooks.shape)}, norms {norms.dtype} {tuple(norms.shape)}")
    return lib, codebooks, norms, z


def rvq_search(codebooks: Tensor, norms: Tensor, z: Tensor, n_q: int) -> Tensor | None:
    """frame.c's residual search of rows ``z`` ``[N, D]`` over ``codebooks`` ``[L, K, D]``
    (float32, or float16 from :func:`compact`; ``norms`` ``[L, K]`` float64 of the same
    entries) -> codes ``[N, n_q]``; None without the library or off the CPU."""
    if (inputs := _search_inputs(codebooks, norms, z, n_q)) is None:
        return None
    lib, codebooks, norms, z = inputs
    (n, d), size = z.shape, codebooks.shape[1]
    codes = torch.empty(n, n_q, dtype=torch.long)
    residual, scratch = torch.empty(d, dtype=torch.float64), _f32(d + size)
    lib.rvq_search(n, n_q, size, d, codebooks.dtype == torch.float16, codebooks.data_ptr(), norms.data_ptr(), z.data_ptr(),
                   residual.data_ptr(), scratch.data_ptr(), codes.data_ptr())
    return codes


def beam_bounds(squares: Tensor, norms: Tensor) -> Tensor:
    """``[L, 2]`` float64 for :func:`rvq_beam`, from the entries' unweighted squared norms
    ``squares`` and the (weighted) ``norms`` the search ranks with, both ``[L, K]``: each
    level's largest of ``squares`` and largest finite ``|norms|``, which bound its float32
    pass's error."""
    finite = norms.abs().masked_fill(~torch.isfinite(norms), 0.0).amax(-1)
    return torch.stack([squares.double().amax(-1), finite.double()], dim=-1).contiguous()


def rvq_beam(codebooks: Tensor, norms: Tensor, z: Tensor, n_q: int, beam: int, weights: Tensor | None = None,
             bounds: Tensor | None = None, transposed: Tensor | Callable[[], Tensor] | None = None) -> Tensor | None:
    """frame.c's beam search (:func:`codec.quantizer.beam_search`'s, for a live frame or a few)
    of rows ``z`` ``[N, D]`` over ``codebooks`` ``[L, K, D]`` (float32, or float16 from
    :func:`compact`; ``norms`` ``[L, K]`` float64, weighted as ``weights`` ``[D]`` float64 where
    given; ``bounds``: :func:`beam_bounds` of them, computed here if not given;
    ``transposed``: the codebooks as ``[L, D, K]``, which the float32 pass reads 16 entries at
    a time, or what makes them (called only if the search runs), made here if not given) ->
    codes ``[N, n_q]``; None without the library, off the CPU, or if its scratch cannot be
    allocated."""
    if beam < 1:
        raise ValueError(f"beam must be 1 or more, got {beam}")
    if (inputs := _search_inputs(codebooks, norms, z, n_q)) is None:
        return None
    lib, codebooks, norms, z = inputs
    (n, d), size = z.shape, codebooks.shape[1]
    if weights is not None:
        weights = weights.to("cpu", torch.float64).contiguous()
        if weights.shape != (d,):
            raise ValueError(f"weights {tuple(weights.shape)} for rows of {d}")
    if bounds is None:
        bounds = beam_bounds((codebooks.double() ** 2).sum(-1), norms)
    bounds = bounds.to("cpu", torch.float64).contiguous()
    if bounds.shape != (codebooks.shape[0], 2):
        raise ValueError(f"bounds {tuple(bounds.shape)} for {codebooks.shape[0]} levels")
    transposed = transposed() if callable(transposed) else transposed
    if transposed is None:
        transposed = codebooks.transpose(1, 2).contiguous()
    if transposed.shape != (codebooks.shape[0], d, size) or transposed.dtype != codebooks.dtype \
            or not transposed.is_contiguous() or transposed.device.type != "cpu":
        raise ValueError(f"transposed codebooks {tuple(transposed.shape)} for {tuple(codebooks.shape)}")
    codes = torch.empty(n, n_q, dtype=torch.long)
    if lib.rvq_beam(n, n_q, size, d, codebooks.dtype == torch.float16, beam, codebooks.data_ptr(), transposed.data_ptr(),
                    norms.data_ptr(), None if weights is None else weights.data_ptr(), bounds.data_ptr(), z.data_ptr(),
                    codes.data_ptr()):
        return None
    return codes


def rvq_decode(codebooks: Tensor, codes: Tensor) -> Tensor | None:
    """frame.c's sum of the entries ``codes`` ``[B, K, F]`` pick from ``codebooks`` ``[L, size,
    D]`` (float32 or float16) -> latent ``[B, D, F]`` float32; None without the library, off
    the CPU, or if a code is out of range (the caller's own check then says which)."""
    lib = library()
    if lib is None or codebooks.device.type != "cpu" or codes.device.type != "cpu" or codebooks.dtype not in (torch.float16, torch.float32):
        return None
    codebooks, codes = codebooks.contiguous(), codes.long().contiguous()
    b, k, f = codes.shape
    if k > codebooks.shape[0]:
        raise ValueError(f"{k} levels of codes for {codebooks.shape[0]} codebooks")
    z = _f32(b, codebooks.shape[2], f)
    half = codebooks.dtype == torch.float16
    if lib.rvq_decode(b, k, f, codebooks.shape[1], codebooks.shape[2], half, codebooks.data_ptr(), codes.data_ptr(), z.data_ptr()):
        return None
    return z


def postfilter_frames(buf: np.ndarray, frames: int, hop: int, window: int, lo: int, hi: int, strength: float,
                      onset: float, octave: float, lag: np.ndarray, gain: np.ndarray) -> np.ndarray | None:
    """frame.c's pitch postfilter (codec/postfilter.py, ``PitchPostfilter.frames``) of ``frames``
    frames: ``buf`` ``[N, keep + frames * hop]`` float64 (each row's history, then its frames),
    ``lag`` ``[N]`` int64 and ``gain`` ``[N]`` float64 the frame before's, updated in place to
    the last frame's -> ``[N, frames * hop]`` float64; None without the library."""
    lib = library()
    if lib is None:
        return None
    buf = np.ascontiguousarray(buf, dtype=np.float64)
    n = buf.shape[0]
    out = np.empty((n, frames * hop))
    if lib.rvq_postfilter(n, frames, hop, window, buf.shape[1] - frames * hop, lo, hi, strength, onset, octave,
                          buf.ctypes.data, lag.ctypes.data, gain.ctypes.data, out.ctypes.data):
        return None
    return out


def lowband_search(ratio: np.ndarray, top: np.ndarray, bits: np.ndarray, gains: int, first_shift: int, fit_gains: int,
                   largest: int, step_of: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """frame.c's ``rvq_lowband_search``, codec/lowband.py's ``quantize_arithmetic`` for rows
    ``ratio`` ``[M, bins]`` float64 (finite) with their covering gain codes ``top`` ``[M]``
    and bits ``[M]``: gain codes ``[M]`` and steps ``[M, bins]``, int64, bit for bit NumPy's;
    None without the library."""
    lib = library()
    if lib is None:
        return None
    ratio, top = np.ascontiguousarray(ratio, dtype=np.float64), np.ascontiguousarray(top, dtype=np.float64)
    bits = np.ascontiguousarray(np.broadcast_to(bits, top.shape), dtype=np.float64)
    step_of, cost = np.ascontiguousarray(step_of, dtype=np.float64), np.ascontiguousarray(cost, dtype=np.float64)
    m, bins = ratio.shape
    gain, q = np.empty(m, np.int64), np.empty((m, bins), np.int64)
    if lib.rvq_lowband_search(m, bins, bits.ctypes.data, gains, first_shift, fit_gains, largest, len(step_of) - 1,
                              step_of.ctypes.data, cost.ctypes.data, top.ctypes.data, ratio.ctypes.data,
                              gain.ctypes.data, q.ctypes.data):
        return None
    return gain, q
