"""ONNX graph -> differentiable torch module, so fine-tuning can train the graph's own weights.

It runs canonical models (opset 25, ``haqc.passes.canonicalize``): haqc
canonicalizes every model before it fine-tunes one, so the attribute forms of
older opsets are never seen here. The graph is compiled once into an execution plan (one step per node: handler,
input names, output names, parsed attributes); ``forward`` walks the plan and
drops each intermediate tensor after its last consumer. Float initializers are
``nn.Parameter``s (those of one element that no layer reads as its weight or
bias, an epsilon or a Pow's exponent, are frozen); non-float initializers, Constant outputs and everything
computable from them alone (weights computed by ConstantOfShape, say) are
evaluated once at build time and kept as buffers. Fake quantization plugs in
through ``weight_transforms`` and ``activation_transforms``.

Semantics are inference ones (BatchNormalization uses its stored statistics,
Dropout is the identity); QuantizeLinear emits its integers as floats so that
rounding can pass gradients straight through.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto as TP
from onnx import numpy_helper
from torch import Tensor, nn

from haqc.errors import InputError
from haqc.ops import LAYER_OPS
from haqc.passes.base import opset_version
from haqc.passes.canonicalize import CANONICAL_OPSET

logger = logging.getLogger(__name__)

Attrs = dict[str, Any]
Outputs = Tensor | Sequence[Tensor]
Handler = Callable[[Attrs, list[Tensor | None]], Outputs]
Transform = Callable[[Tensor], Tensor]

_DTYPES = {
    TP.FLOAT: torch.float32, TP.DOUBLE: torch.float64, TP.FLOAT16: torch.float16,
    TP.BFLOAT16: torch.bfloat16, TP.INT8: torch.int8, TP.UINT8: torch.uint8,
    TP.INT16: torch.int16, TP.UINT16: torch.uint16, TP.INT32: torch.int32,
    TP.UINT32: torch.uint32, TP.INT64: torch.int64, TP.UINT64: torch.uint64, TP.BOOL: torch.bool,
}
_FLOAT_TYPES = {TP.FLOAT, TP.DOUBLE, TP.FLOAT16, TP.BFLOAT16}
# Sub-byte integers have no torch dtype: they are widened, their range is kept here.
_WIDENED = {TP.INT4: np.int8, TP.INT2: np.int8, TP.UINT4: np.uint8, TP.UINT2: np.uint8}
_QRANGE = {
    TP.UINT8: (0, 255), TP.INT8: (-128, 127), TP.UINT4: (0, 15), TP.INT4: (-8, 7),
    TP.UINT2: (0, 3), TP.INT2: (-2, 1), TP.UINT16: (0, 65535), TP.INT16: (-32768, 32767),
}


def _to_torch(t: onnx.TensorProto) -> Tensor:
    """Tensor proto -> torch tensor (sub-byte ints widened, bfloat16 via float32)."""
    arr = numpy_helper.to_array(t)
    if t.data_type in _WIDENED:
        arr = arr.astype(_WIDENED[t.data_type])
    elif t.data_type == TP.BFLOAT16 or t.data_type not in _DTYPES:  # ml_dtypes floats torch cannot take
        return torch.from_numpy(arr.astype(np.float32)).to(_DTYPES.get(t.data_type, torch.float32))
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _ints(t: Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _opt(ins: list[Tensor | None], i: int) -> Tensor | None:
    return ins[i] if len(ins) > i else None


def _axes(ins: list[Tensor | None], i: int = 1) -> list[int] | None:
    """Axes from the optional input (the canonical opset has no axes attributes)."""
    t = _opt(ins, i)
    return None if t is None else _ints(t)


# --- convolution and pooling --------------------------------------------------------

def _spatial_pads(a: Attrs, size: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dil: Sequence[int]) -> list[int]:
    """ONNX pads [begins..., ends...], resolving auto_pad against the actual input size."""
    nd = len(kernel)
    mode = a.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0] * 2 * nd
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return list(a.get("pads", [0] * 2 * nd))
    pads = [0] * 2 * nd
    for d in range(nd):
        out = -(-size[d] // strides[d])
        total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1 - size[d])
        small = total // 2
        pads[d], pads[d + nd] = (small, total - small) if mode == "SAME_UPPER" else (total - small, small)
    return pads


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad's (bn, en, ..., b1, e1)."""
    nd = len(pads) // 2
    return [p for d in reversed(range(nd)) for p in (pads[d], pads[d + nd])]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _geometry(a: Attrs, x: Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    nd = len(kernel)
    strides, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
    return strides, dil, _spatial_pads(a, x.shape[2:], kernel, strides, dil)


def _native_pads(pads: list[int], kernel: Sequence[int]) -> bool:
    """torch pools take only symmetric pads of at most half the kernel."""
    nd = len(kernel)
    return pads[:nd] == pads[nd:] and all(p <= k // 2 for p, k in zip(pads, kernel))


def _conv(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, w, b = i[0], i[1], _opt(i, 2)
    nd = w.dim() - 2
    strides, dil, pads = _geometry(a, x, w.shape[2:])
    if pads[:nd] != pads[nd:]:
        x, pads = F.pad(x, _torch_pad(pads)), [0] * 2 * nd
    return _CONV[nd](x, w, b, strides, pads[:nd], dil, a.get("group", 1))


def _conv_transpose(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, w, b = i[0], i[1], _opt(i, 2)
    nd = w.dim() - 2
    strides, dil = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
    out_pad = list(a.get("output_padding", [0] * nd))
    full = [(x.shape[2 + d] - 1) * strides[d] + (w.shape[2 + d] - 1) * dil[d] + 1 + out_pad[d]
            for d in range(nd)]
    mode = a.get("auto_pad", "NOTSET")
    target = list(a["output_shape"])[-nd:] if "output_shape" in a else (
        [x.shape[2 + d] * strides[d] for d in range(nd)] if mode.startswith("SAME") else None)
    if target is None:
        pads = list(a.get("pads", [0] * 2 * nd))
    else:
        total = [f - t for f, t in zip(full, target)]
        head = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
        pads = head + [t - h for t, h in zip(total, head)]
    y = _CONV_T[nd](x, w, None, strides, 0, 0, a.get("group", 1), dil)
    # Negative F.pad crops: drop the pads, then append output_padding rows (bias only).
    y = F.pad(y, _torch_pad([-p for p in pads[:nd]] + [o - p for o, p in zip(out_pad, pads[nd:])]))
    return y if b is None else y + b.view(1, -1, *[1] * nd)


def _max_pool(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, k = i[0], a["kernel_shape"]
    strides, dil, pads = _geometry(a, x, k)
    if not _native_pads(pads, k):
        x, pads = F.pad(x, _torch_pad(pads), value=-math.inf), [0] * 2 * len(k)
    return _MAX_POOL[len(k)](x, k, strides, pads[:len(k)], dil, bool(a.get("ceil_mode", 0)))


def _avg_pool(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, k = i[0], a["kernel_shape"]
    strides, dil, pads = _geometry(a, x, k)
    if any(d != 1 for d in dil):
        raise InputError("AveragePool with dilations is not supported by haqc's executor.")
    ceil, include, pool = bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)), _AVG_POOL[len(k)]
    if _native_pads(pads, k):
        return pool(x, k, strides, pads[:len(k)], ceil, include)
    y = pool(F.pad(x, _torch_pad(pads)), k, strides, 0, ceil, True)
    if include:
        return y
    # Excluding pads from the divisor: ratio of window sums of x and of a validity mask.
    mask = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return y / pool(mask, k, strides, 0, ceil, True)


def _lrn(a: Attrs, i: list[Tensor | None]) -> Tensor:
    """ONNX's window is floor((size-1)/2) channels before, ceil((size-1)/2) after (torch differs for even sizes)."""
    x, size = i[0], a["size"]
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    avg = F.avg_pool2d(F.pad(sq, (0, 0, (size - 1) // 2, size // 2)), (size, 1), stride=1)
    return x / (a.get("bias", 1.0) + a.get("alpha", 1e-4) * avg.reshape(x.shape)) ** a.get("beta", 0.75)


# --- dense, normalization, activations -----------------------------------------------

def _gemm(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, w, c = i[0], i[1], _opt(i, 2)
    if a.get("transA", 0):
        x = x.t()
    y = F.linear(x, w) if a.get("transB", 0) else x @ w
    if a.get("alpha", 1.0) != 1.0:
        y = y * a["alpha"]
    return y if c is None else y + (c if a.get("beta", 1.0) == 1.0 else a["beta"] * c)


def _batch_norm(a: Attrs, i: list[Tensor | None]) -> Tensor:
    """Inference form, written out so scale/bias/mean/var all stay differentiable."""
    x, scale, bias, mean, var = i[:5]
    w = scale * torch.rsqrt(var + a.get("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul((bias - mean * w).view(shape), x, w.view(shape))


def _layer_norm(a: Attrs, i: list[Tensor | None]) -> Outputs:
    x, scale, bias = i[0], i[1], _opt(i, 2)
    axis, eps = a.get("axis", -1) % x.dim(), a.get("epsilon", 1e-5)
    if a["_n_out"] == 1:
        y = F.layer_norm(x, x.shape[axis:], eps=eps) * scale
        return y if bias is None else y + bias
    dims = tuple(range(axis, x.dim()))  # Mean and InvStdDev asked for too: spell it out
    mean = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv_std * scale
    return (y if bias is None else y + bias), mean, inv_std


def _softmax(fn: Callable[..., Tensor]) -> Handler:
    """Normalizes along ``axis`` only (opset 13 on)."""
    def handler(a: Attrs, i: list[Tensor | None]) -> Tensor:
        return fn(i[0], a.get("axis", -1))
    return handler


def _clip(a: Attrs, i: list[Tensor | None]) -> Tensor:
    lo, hi = _opt(i, 1), _opt(i, 2)
    return i[0] if lo is None and hi is None else torch.clamp(i[0], lo, hi)


def _div(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, y = i[0], i[1]
    int_div = not (x.is_floating_point() or y.is_floating_point())
    return torch.div(x, y, rounding_mode="trunc") if int_div else x / y


# --- shape manipulation ---------------------------------------------------------------

def _reshape(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x = i[0]
    shape = _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[d] if s == 0 else s for d, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x = i[0]
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _split(a: Attrs, i: list[Tensor | None]) -> Outputs:
    x, axis = i[0], a.get("axis", 0)
    sizes = _ints(i[1]) if _opt(i, 1) is not None else None
    if not sizes:  # equal chunks, the last one smaller (possibly empty)
        n, dim = a.get("num_outputs", a["_n_out"]), x.shape[axis]
        chunk = -(-dim // n)
        sizes = [max(0, min(chunk, dim - chunk * k)) for k in range(n)]
    return torch.split(x, sizes, axis)


def _slice(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, starts, ends = i[0], _ints(i[1]), _ints(i[2])
    steps = _ints(i[4]) if _opt(i, 4) is not None else None
    axes = _axes(i, 3)
    axes = range(len(starts)) if axes is None else axes
    for ax, start, end, step in zip(axes, starts, ends, steps or [1] * len(starts)):
        ax, n = ax % x.dim(), x.shape[ax]
        start, end = start + n if start < 0 else start, end + n if end < 0 else end
        if step > 0:
            x = x[(slice(None),) * ax + (slice(min(max(start, 0), n), min(max(end, 0), n), step),)]
        else:  # torch has no negative strides: gather the indices instead
            idx = torch.arange(min(max(start, 0), n - 1), min(max(end, -1), n - 1), step, device=x.device)
            x = x.index_select(ax, idx)
    return x


def _squeeze(a: Attrs, i: list[Tensor | None]) -> Tensor:
    axes = _axes(i)
    return i[0].squeeze() if axes is None else i[0].squeeze(tuple(axes))


def _unsqueeze(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, axes = i[0], _axes(i)
    for ax in sorted(ax % (x.dim() + len(axes)) for ax in axes):
        x = x.unsqueeze(ax)
    return x


def _pad(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, r, mode = i[0], i[0].dim(), a.get("mode", "constant")
    pads, c, axes = _ints(i[1]), _opt(i, 2), _axes(i, 3)
    value = c.item() if c is not None and c.numel() else 0
    if axes is not None:
        full = [0] * 2 * r
        for j, ax in enumerate(axes):
            full[ax % r], full[r + ax % r] = pads[j], pads[len(axes) + j]
        pads = full
    if mode == "constant":
        return F.pad(x, _torch_pad(pads), value=value)
    for ax in range(r):
        n, (b, e) = x.shape[ax], (pads[ax], pads[ax + r])
        if not (b or e):
            continue
        j = torch.arange(-b, n + e, device=x.device)
        if mode == "edge":
            j = j.clamp(0, n - 1)
        elif mode == "wrap":
            j = j % n
        else:  # reflect
            j = j.abs() % (2 * n - 2)
            j = torch.where(j >= n, 2 * n - 2 - j, j)
        x = x.index_select(ax, j)
    return x


def _gather(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, idx = i[0], i[1]
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _shape(a: Attrs, i: list[Tensor | None]) -> Tensor:
    dims = i[0].shape[a.get("start", 0):a.get("end")]
    return torch.tensor(dims, dtype=torch.int64, device=i[0].device)


def _constant(a: Attrs, i: list[Tensor | None]) -> Tensor:
    if "value" in a:
        return a["value"]
    key = next((k for k in ("value_float", "value_floats", "value_int", "value_ints") if k in a), None)
    if key is None:
        raise InputError("Constant nodes holding strings or sparse tensors are not supported by haqc's executor.")
    return torch.tensor(a[key], dtype=torch.float32 if "float" in key else torch.int64)


def _constant_of_shape(a: Attrs, i: list[Tensor | None]) -> Tensor:
    v = a.get("value", torch.zeros(1))
    return torch.full(_ints(i[0]), v.item(), dtype=v.dtype, device=i[0].device)


# --- resize ---------------------------------------------------------------------------

def _source_coords(mode: str, m: int, n: int, scale: float, device: torch.device) -> Tensor:
    """Source coordinate of each of the m output positions, per coordinate_transformation_mode."""
    o = torch.arange(m, dtype=torch.float32, device=device)
    if mode == "asymmetric":
        return o / scale
    if mode == "align_corners":
        return o * ((n - 1) / (m - 1)) if m > 1 else o * 0
    if mode == "pytorch_half_pixel" and m == 1:
        return o * 0
    if mode == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if mode in ("half_pixel", "pytorch_half_pixel"):
        return (o + 0.5) / scale - 0.5
    raise InputError(f"Resize coordinate_transformation_mode {mode!r} is not supported by haqc's executor.")


_NEAREST = {
    "round_prefer_floor": lambda c: torch.ceil(c - 0.5), "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
    "floor": torch.floor, "ceil": torch.ceil,
}


def _interpolate(x: Tensor, scales: list[float] | None, sizes: list[int] | None, mode: str,
                 coord: str, nearest: str) -> Tensor:
    """Separable per-axis nearest/linear resampling; exact for any rank and ONNX rounding rule."""
    if mode not in ("nearest", "linear", "bilinear", "trilinear"):
        raise InputError(f"Resize mode {mode!r} is not supported by haqc's executor.")
    for ax in range(x.dim()):
        n = x.shape[ax]
        m = sizes[ax] if sizes is not None else int(n * scales[ax])
        scale = m / n if sizes is not None else scales[ax]
        if m == n and scale == 1.0:
            continue
        c = _source_coords(coord, m, n, scale, x.device)
        if mode == "nearest":
            x = x.index_select(ax, _NEAREST[nearest](c).clamp(0, n - 1).long())
            continue
        c = c.clamp(0, n - 1)
        lo = c.floor()
        shape = [1] * x.dim()
        shape[ax] = m
        w = (c - lo).view(shape).to(x.dtype)
        lo = lo.long()
        x = torch.lerp(x.index_select(ax, lo), x.index_select(ax, (lo + 1).clamp(max=n - 1)), w)
    return x


def _resize(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x = i[0]
    if a.get("antialias", 0) or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise InputError("Resize with antialias or keep_aspect_ratio_policy is not supported by haqc's executor.")
    s, z = _opt(i, 2), _opt(i, 3)
    scales = s.tolist() if s is not None and s.numel() else None
    sizes = _ints(z) if z is not None and z.numel() else None
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    if "axes" in a:  # scales/sizes name only some axes
        full: list[Any] = [1.0] * x.dim() if sizes is None else list(x.shape)
        for j, ax in enumerate(a["axes"]):
            full[ax % x.dim()] = (scales or sizes)[j]
        scales, sizes = (full, None) if sizes is None else (None, full)
    return _interpolate(x, scales, sizes, a.get("mode", "nearest"), coord, a.get("nearest_mode", "round_prefer_floor"))


# --- reductions, quantization, misc ---------------------------------------------------

def _reducer(fn: Callable[[Tensor, list[int], bool], Tensor]) -> Handler:
    def handler(a: Attrs, i: list[Tensor | None]) -> Tensor:
        x, axes = i[0], _axes(i)
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [ax % x.dim() for ax in axes], bool(a.get("keepdims", 1)))
    return handler


def _prod(x: Tensor, dims: list[int], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


def _arg(fn: Callable[..., Tensor]) -> Handler:
    def handler(a: Attrs, i: list[Tensor | None]) -> Tensor:
        x, axis, keep = i[0], a.get("axis", 0), bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            return x.shape[axis] - 1 - fn(x.flip(axis), axis, keep)
        return fn(x, axis, keep)
    return handler


def _q_param(t: Tensor, x: Tensor, a: Attrs) -> Tensor:
    """Broadcast a per-tensor, per-axis or blocked scale/zero-point against x."""
    axis = a.get("axis", 1) % max(x.dim(), 1)
    if a.get("block_size", 0):
        return t.repeat_interleave(a["block_size"], axis).narrow(axis, 0, x.shape[axis])
    if t.dim() == 1 and x.dim() > 1:
        return t.view([-1 if d == axis else 1 for d in range(x.dim())])
    return t


def _quantize_linear(a: Attrs, i: list[Tensor | None]) -> Tensor:
    """Fake quantization: integer values kept in float, rounding passed straight through."""
    x, scale, zp = i[0], i[1], _opt(i, 2)
    v = x / _q_param(scale, x, a)
    q = v + (torch.round(v) - v).detach()
    if zp is not None:
        q = q + _q_param(zp, x, a).to(q.dtype)
    return q.clamp(*a["_qrange"])


def _dequantize_linear(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x, scale, zp = i[0], i[1], _opt(i, 2)
    x = x.to(scale.dtype)
    if zp is not None:
        x = x - _q_param(zp, x, a).to(scale.dtype)
    return x * _q_param(scale, x, a)


def _dropout(a: Attrs, i: list[Tensor | None]) -> Outputs:
    x = i[0]
    return (x, torch.ones_like(x, dtype=torch.bool)) if a["_n_out"] > 1 else x


def _selu(a: Attrs, i: list[Tensor | None]) -> Tensor:
    x = i[0]
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


class _Sqrt(torch.autograd.Function):
    """sqrt whose gradient stays finite at 0: an STFT front end's magnitude, sqrt(re^2 + im^2), is 0
    at silent bins, and the infinite gradient there made every step of dnsmos_sig_bak_ovr NaN."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        root = x.sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (root,) = ctx.saved_tensors
        return grad / (2 * root.clamp_min(torch.finfo(root.dtype).eps))


def _range(a: Attrs, i: list[Tensor | None]) -> Tensor:
    start = i[0]
    return torch.arange(start.item(), i[1].item(), i[2].item(), dtype=start.dtype, device=start.device)


HANDLERS: dict[str, Handler] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm,
    "MatMul": lambda a, i: torch.matmul(i[0], i[1]),
    "MaxPool": _max_pool, "AveragePool": _avg_pool, "LRN": _lrn,
    "GlobalAveragePool": lambda a, i: i[0].mean(tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda a, i: i[0].amax(tuple(range(2, i[0].dim())), keepdim=True),
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
    "Relu": lambda a, i: torch.relu(i[0]),
    "LeakyRelu": lambda a, i: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "PRelu": lambda a, i: torch.where(i[0] < 0, i[0] * i[1], i[0]),
    "Elu": lambda a, i: F.elu(i[0], a.get("alpha", 1.0)),
    "Selu": _selu, "Clip": _clip,
    "HardSigmoid": lambda a, i: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda a, i: F.hardswish(i[0]),
    "Sigmoid": lambda a, i: torch.sigmoid(i[0]), "Tanh": lambda a, i: torch.tanh(i[0]),
    "Softplus": lambda a, i: F.softplus(i[0]),
    "Gelu": lambda a, i: F.gelu(i[0], approximate=a.get("approximate", "none")),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Add": lambda a, i: i[0] + i[1], "Sub": lambda a, i: i[0] - i[1],
    "Mul": lambda a, i: i[0] * i[1], "Div": _div,
    "Sum": lambda a, i: reduce(torch.add, i), "Mean": lambda a, i: reduce(torch.add, i) / len(i),
    "Max": lambda a, i: reduce(torch.maximum, i), "Min": lambda a, i: reduce(torch.minimum, i),
    "Pow": lambda a, i: torch.pow(i[0], i[1]).to(i[0].dtype),
    "Neg": lambda a, i: -i[0], "Abs": lambda a, i: i[0].abs(), "Exp": lambda a, i: i[0].exp(),
    "Log": lambda a, i: i[0].log(), "Reciprocal": lambda a, i: i[0].reciprocal(),
    "Sqrt": lambda a, i: _Sqrt.apply(i[0]), "Erf": lambda a, i: torch.erf(i[0]),
    "Equal": lambda a, i: torch.eq(i[0], i[1]), "Where": lambda a, i: torch.where(i[0], i[1], i[2]),
    "Reshape": _reshape, "Flatten": _flatten,
    "Transpose": lambda a, i: i[0].permute(a.get("perm", list(range(i[0].dim()))[::-1])),
    "Concat": lambda a, i: torch.cat(i, a["axis"]), "Split": _split, "Slice": _slice,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Pad": _pad,
    "Expand": lambda a, i: i[0].expand(torch.broadcast_shapes(i[0].shape, tuple(_ints(i[1])))),
    "Tile": lambda a, i: i[0].repeat(_ints(i[1])),
    "Resize": _resize,
    "ReduceMean": _reducer(lambda x, d, k: x.mean(d, keepdim=k)),
    "ReduceSum": _reducer(lambda x, d, k: x.sum(d, keepdim=k)),
    "ReduceMax": _reducer(lambda x, d, k: x.amax(d, keepdim=k)),
    "ReduceMin": _reducer(lambda x, d, k: x.amin(d, keepdim=k)),
    "ReduceProd": _reducer(_prod),
    "ReduceL2": _reducer(lambda x, d, k: torch.linalg.vector_norm(x, 2, d, k)),
    "ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin),
    "Dropout": _dropout, "Identity": lambda a, i: i[0],
    "Shape": _shape, "Gather": _gather, "Cast": lambda a, i: i[0].to(_DTYPES[a["to"]]),
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
}


# --- the module -----------------------------------------------------------------------

class _Step(NamedTuple):
    handler: Handler
    attrs: Attrs
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    transforms: tuple[Transform | None, ...]
    free: tuple[str, ...]  # names whose last consumer is this step


class _Env(dict[str, Tensor]):
    """Tensor values by name; the compile-time check leaves only unproduced optional outputs missing."""

    def __missing__(self, name: str) -> Tensor:
        raise InputError(f"the graph uses {name!r}, an optional output (such as MaxPool's Indices) "
                         "that haqc's executor does not compute.")


def unsupported_ops(graph: onnx.GraphProto) -> str | None:
    """The ops of ``graph`` the executor cannot run, with the first node of each, as a phrase; None
    when it runs them all (fine-tuning needs that)."""
    bad: dict[str, list[str]] = {}
    for node in graph.node:
        default = node.domain in ("", "ai.onnx")
        if not default or node.op_type not in HANDLERS:
            op = node.op_type if default else f"{node.domain}.{node.op_type}"
            bad.setdefault(op, []).append(node.name or node.output[0])
    if not bad:
        return None
    return f"op{'s' if len(bad) > 1 else ''} " + ", ".join(
        f"'{op}' (node '{names[0]}'{f' and {len(names) - 1} more' if len(names) > 1 else ''})" for op, names in bad.items())


def _check_supported(graph: onnx.GraphProto) -> None:
    """Name every unsupported op (first node of each) in one error, before building anything."""
    listed = unsupported_ops(graph)
    if listed is not None:
        raise InputError(f"unsupported ONNX {listed}; haqc's executor supports: {', '.join(sorted(HANDLERS))}.")


def _parse_attrs(node: onnx.NodeProto, elem_types: dict[str, int]) -> Attrs:
    """Attributes as Python values, plus the few build-time facts handlers need."""
    attrs: Attrs = {}
    for at in node.attribute:
        v = onnx.helper.get_attribute_value(at)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            elem_types.update(dict.fromkeys(node.output, v.data_type))
            v = _to_torch(v)
        attrs[at.name] = v
    attrs["_n_out"] = len(node.output)
    if node.op_type == "QuantizeLinear":
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        qtype = elem_types.get(zp) if zp else attrs.get("output_dtype") or TP.UINT8
        attrs["_qrange"] = _QRANGE.get(qtype, _QRANGE[TP.UINT8])
    return attrs


def _unique_key(name: str, taken: nn.Module) -> str:
    """Attribute-safe, unique key for an ONNX name (ONNX names may hold '/', ':', '.')."""
    key = re.sub(r"\W", "_", name) or "_"
    key = "_" + key if key[0].isdigit() else key
    while hasattr(taken, key):
        key += "_"
    return key


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module whose parameters are the graph's float initializers.

    ``weight_transforms`` (keyed by initializer name) rewrite a weight each forward,
    ``activation_transforms`` (keyed by tensor name) rewrite a tensor as it is produced
    or fed; transforms that are modules are registered, so their parameters train too.
    """

    def __init__(self, model: onnx.ModelProto,
                 weight_transforms: dict[str, Transform] | None = None,
                 activation_transforms: dict[str, Transform] | None = None) -> None:
        super().__init__()
        graph = model.graph
        if opset_version(model) != CANONICAL_OPSET:
            raise InputError(f"haqc's executor runs canonical models (opset {CANONICAL_OPSET}), this one has opset "
                             f"{opset_version(model)}; canonicalize it first")
        _check_supported(graph)
        wt, act = dict(weight_transforms or {}), dict(activation_transforms or {})

        self.params = nn.ParameterDict()
        self.consts = nn.Module()
        self._param_keys: dict[str, str] = {}
        consts: dict[str, Tensor] = {}
        elem_types = {v.name: v.type.tensor_type.elem_type
                      for v in [*graph.input, *graph.value_info, *graph.output]}
        layer_operands = {node.input[i] for node in graph.node if node.op_type in LAYER_OPS
                          for i in (LAYER_OPS[node.op_type].weight, LAYER_OPS[node.op_type].bias)
                          if i is not None and i < len(node.input)}
        for init in graph.initializer:
            elem_types[init.name] = init.data_type
            t = _to_torch(init)
            if init.data_type in _FLOAT_TYPES:
                key = _unique_key(init.name, self.params)
                # A scalar is a constant of the arithmetic (an epsilon, a Pow's exponent: its gradient
                # is NaN wherever the base is not positive), not a weight: it does not train.
                self.params[key] = nn.Parameter(t, requires_grad=t.numel() > 1 or init.name in layer_operands)
                self._param_keys[init.name] = key
            else:
                consts[init.name] = t
        init_names = {i.name for i in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in init_names]
        self.output_names = [v.name for v in graph.output]
        self._check_transform_keys(graph, wt, act)
        self.weight_transforms = nn.ModuleDict()
        self.activation_transforms = nn.ModuleDict()
        for fns, modules in ((wt, self.weight_transforms), (act, self.activation_transforms)):
            for name, fn in fns.items():
                if isinstance(fn, nn.Module):
                    modules[_unique_key(name, modules)] = fn

        # Compile: nodes computable from constants alone run now, the rest become steps.
        # A transformed constant is applied each forward, so its consumers cannot fold.
        known = set(consts) | set(self._param_keys) | set(self.input_names)
        steps: list[tuple[Handler, Attrs, tuple[str, ...], tuple[str, ...]]] = []
        for node in graph.node:
            missing = [n for n in node.input if n and n not in known]
            if missing:
                raise InputError(f"node '{node.name or node.output[0]}' reads {missing[0]!r} before it is "
                                 "produced; the graph is not topologically sorted or is missing an input.")
            attrs, handler = _parse_attrs(node, elem_types), HANDLERS[node.op_type]
            if all(n in consts and n not in act for n in node.input if n):
                with torch.no_grad():
                    outs = handler(attrs, [consts[n] if n else None for n in node.input])
                for name, value in zip(node.output, (outs,) if isinstance(outs, Tensor) else outs):
                    if name:
                        consts[name] = value
            else:
                steps.append((handler, attrs, tuple(node.input), tuple(node.output)))
            known.update(node.output)

        missing = [n for n in self.output_names if n not in known]
        if missing:
            raise InputError(f"graph output {missing[0]!r} is produced by no node, input or initializer.")

        last_use: dict[str, int] = {}
        for s, (_, _, ins, outs) in enumerate(steps):
            last_use.update(dict.fromkeys([n for n in ins if n] + [n for n in outs if n not in last_use], s))
        keep = set(self.output_names)
        self._plan = [
            _Step(handler, attrs, ins, outs, tuple(act.get(o) for o in outs),
                  tuple(n for n, last in last_use.items() if last == s and n not in keep))
            for s, (handler, attrs, ins, outs) in enumerate(steps)
        ]
        used = set(last_use) | keep
        self._consts: list[tuple[str, str, Transform | None]] = []
        for name, value in consts.items():
            if name in used:
                key = _unique_key(name, self.consts)
                self.consts.register_buffer(key, value)
                self._consts.append((name, key, act.get(name)))
        self._weights = [(name, key, wt.get(name)) for name, key in self._param_keys.items() if name in used]
        self._input_transforms = [act.get(n) for n in self.input_names]
        logger.debug("compiled %d nodes into %d steps (%d folded), %d parameters",
                     len(graph.node), len(self._plan), len(graph.node) - len(self._plan), len(self.params))

    def _check_transform_keys(self, graph: onnx.GraphProto, wt: dict[str, Transform],
                              act: dict[str, Transform]) -> None:
        """A misspelled tensor name would silently skip quantization: reject it."""
        produced = set(self.input_names) | {o for node in graph.node for o in node.output}
        unknown = [n for n in wt if n not in self._param_keys] + [n for n in act if n not in produced]
        if unknown:
            raise InputError(f"transforms name tensors that are not in the graph (weights must be float "
                             f"initializers, activations node outputs or graph inputs): {unknown}.")

    def forward(self, *inputs: Tensor, **named: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the graph on inputs given in graph-input order and/or by name."""
        feeds = dict(zip(self.input_names, inputs)) | named
        if feeds.keys() != set(self.input_names) or len(inputs) > len(self.input_names):
            raise TypeError(f"expected inputs {self.input_names}, got {len(inputs)} positional "
                            f"and {sorted(named)} by name")
        env = _Env()
        for name, key, fn in self._consts:
            env[name] = self.consts._buffers[key] if fn is None else fn(self.consts._buffers[key])
        for name, key, fn in self._weights:
            env[name] = self.params[key] if fn is None else fn(self.params[key])
        for name, fn in zip(self.input_names, self._input_transforms):
            env[name] = feeds[name] if fn is None else fn(feeds[name])
        for step in self._plan:
            outs = step.handler(step.attrs, [env[n] if n else None for n in step.inputs])
            for name, value, fn in zip(step.outputs, (outs,) if isinstance(outs, Tensor) else outs,
                                       step.transforms):
                if name:
                    env[name] = value if fn is None else fn(value)
            for name in step.free:
                env.pop(name, None)
        result = tuple(env[n] for n in self.output_names)
        return result[0] if len(result) == 1 else result

    def initializer_arrays(self) -> dict[str, np.ndarray]:
        """Current float initializer values by ONNX name, to write fine-tuned weights back."""
        out = {}
        for name, key in self._param_keys.items():
            t = self.params[key].detach().cpu()
            out[name] = (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
        return out
