"""Blocked weight-only integers (``w4-block32``, ``w8-block32``, ...): ONNX Runtime's MatMulNBits.

A MatMul (or Gemm) layer's constant weight [K, N] is cut into blocks of ``block``
weights along K; each block gets its own scale and zero point (asymmetric, all 2^b
codes used) and its codes are packed (two 4-bit codes a byte) in the layout
``com.microsoft.MatMulNBits`` reads: B [N, blocks, block * bits / 8], scales and zero
points [N * blocks]. The activations stay float: the kernel dequantizes a block at a
time, which is what makes large fc and attention projections small and, being
memory-bound, fast. Each block's range is chosen by a short search over shrunken
min/max ranges for the least squared error (plain min/max, what
``matmul_nbits_quantizer`` does, is one of the candidates).
"""
from __future__ import annotations

import logging
from functools import partial

import numpy as np
import onnx
from onnx import helper, numpy_helper

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.passes.base import GraphBuilder, Pass, replace_nodes
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import ExportPlan, LayerQuant, QuantizedWeight
from haqc.policy import Policy
from haqc.precision import IntFormat, Option

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
_SHRINK = np.linspace(0.80, 1.0, 9)  # fractions of each block's [min, max] tried for the least squared error


def claims(option: Option) -> bool:
    """Blocked integer weights (activations float)."""
    return isinstance(option.weight, IntFormat) and option.weight.block is not None and option.weight.bits in (4, 8)


def quantize_blocks(w: np.ndarray, bits: int, block: int, reduction_axis: int) -> QuantizedWeight:
    """Asymmetric b-bit codes per block of ``block`` weights along ``reduction_axis`` of a 2-D ``w``:
    ``q`` = code - zero point (so q * scale is the weight), scale and zero point per block (the
    weight's shape with the reduction axis counted in blocks)."""
    moved = np.moveaxis(w.astype(np.float64), reduction_axis, 0)  # [K, N]
    k, n = moved.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n))
    padded[:k] = moved
    grouped = padded.reshape(blocks, block, n)
    top = 2**bits - 1
    best_err = np.full((blocks, n), np.inf)
    scale = np.ones((blocks, n))
    zero = np.zeros((blocks, n))
    lo_all, hi_all = np.minimum(grouped.min(axis=1), 0.0), np.maximum(grouped.max(axis=1), 0.0)
    for shrink in _SHRINK:
        lo, hi = lo_all * shrink, hi_all * shrink
        s = np.where(hi > lo, (hi - lo) / top, 1.0)
        z = np.clip(np.round(-lo / s), 0, top)
        q = np.clip(np.round(grouped / s[:, None, :]) + z[:, None, :], 0, top)
        err = (((q - z[:, None, :]) * s[:, None, :] - grouped) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        scale, zero = np.where(better, s, scale), np.where(better, z, zero)
    scale = scale.astype(np.float32)
    q = np.clip(np.round(grouped / scale[:, None, :].astype(np.float64)) + zero[:, None, :], 0, top) - zero[:, None, :]
    q = q.reshape(blocks * block, n)[:k].astype(np.int16)
    return QuantizedWeight(np.moveaxis(q, 0, reduction_axis), np.moveaxis(scale, 0, reduction_axis), bits,
                           axis=1 - reduction_axis, levels=top, block=block, reduction_axis=reduction_axis,
                           zero_point=np.moveaxis(zero.astype(np.uint8), 0, reduction_axis))


class NBitsQuantize(Pass[onnx.ModelProto]):
    """Replace each blocked-weight layer (MatMul with a constant [K, N] weight, or a Gemm) by
    MatMulNBits; the others stay as they are."""

    def __init__(self, layers: list[Layer], policy: Policy, cache: dict | None = None) -> None:
        self.layers = [l for l in layers if l.name in policy and claims(policy[l.name])]
        self.policy = policy
        self.cache = {} if cache is None else cache

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        axes = matmul_layers_only(model, self.layers, "MatMulNBits")
        inits = {t.name: t for t in model.graph.initializer}
        out = {}
        for layer in self.layers:
            fmt = self.policy[layer.name].weight
            axis = axes[layer.name]
            key = (layer.weight, fmt.bits, fmt.block, axis)
            if key not in self.cache:
                self.cache[key] = quantize_blocks(numpy_helper.to_array(inits[layer.weight]), fmt.bits, fmt.block, axis)
            out[layer.name] = LayerQuant(weight=self.cache[key])
        return ExportPlan(out)

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        plan = self.plan(model)  # checks every layer is a MatMul / Gemm with a 2-D weight
        out = replace_nodes(model, {l.name: partial(_matmul_nbits, l, plan.layers[l.name].weight) for l in self.layers})
        if not any(o.domain == MS_DOMAIN for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return out


def matmul_layers_only(model: onnx.ModelProto, layers: list[Layer], kernel: str) -> dict[str, int]:
    """Each layer's reduction axis (of its weight initializer); an InputError naming the first layer
    that is not a MatMul or Gemm with a constant 2-D weight, which ``kernel`` needs."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    axes = {}
    for layer in layers:
        node = nodes[layer.name]
        axis = _reduction_axis(node, layer, inits)
        if axis is None:
            raise InputError(f"layer {layer.name!r} ({node.op_type}) cannot run as {kernel}: it takes a MatMul or a "
                             "Gemm with a constant 2-D weight; give the layer an integer QDQ or float option")
        axes[layer.name] = axis
    return axes


def _reduction_axis(node: onnx.NodeProto, layer: Layer, inits: dict) -> int | None:
    """The axis of the weight initializer that is K (0 for MatMul's B and Gemm's B, 1 for Gemm's
    transposed B), or None when the layer cannot run as MatMulNBits."""
    weight = inits.get(layer.weight)
    if weight is None or len(weight.dims) != 2 or len(node.input) < 2 or node.input[1] != layer.weight:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm" and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0 \
            and attrs.get("beta", 1.0) == 1.0:
        return 1 if attrs.get("transB", 0) else 0
    return None


def _matmul_nbits(layer: Layer, qw: QuantizedWeight, build: GraphBuilder, node: onnx.NodeProto,
                  inits: dict) -> list[onnx.NodeProto]:
    """MatMulNBits computing what ``node`` did with ``qw``'s weights (plus the Gemm's bias, if any)."""
    codes = np.moveaxis(qw.q + qw.zero_point.repeat(qw.block, axis=qw.reduction_axis)[
        tuple(slice(0, d) for d in qw.q.shape)], qw.reduction_axis, 1)  # [N, K], unsigned
    n, k = codes.shape
    blocks = -(-k // qw.block)
    padded = np.zeros((n, blocks * qw.block), np.uint8)
    padded[:, :k] = codes
    grouped = padded.reshape(n, blocks, qw.block)
    packed = grouped[..., 0::2] | (grouped[..., 1::2] << 4) if qw.bits == 4 else grouped
    scales = np.moveaxis(qw.scale, qw.reduction_axis, 1).reshape(-1)  # [N * blocks]
    zeros = np.moveaxis(qw.zero_point, qw.reduction_axis, 1)  # [N, blocks]
    if qw.bits == 4:  # two zero points a byte, each row padded to whole bytes
        zeros = np.concatenate([zeros, np.zeros((n, blocks % 2), np.uint8)], axis=1)
        zeros = zeros[:, 0::2] | (zeros[:, 1::2] << 4)
    prefix = f"{layer.weight}/nbits{qw.bits}"
    inputs = [node.input[0], build.const(f"{prefix}/B", packed.astype(np.uint8)),
              build.const(f"{prefix}/scales", scales.astype(np.float32)),
              build.const(f"{prefix}/zero_points", zeros.reshape(-1).astype(np.uint8))]
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    one_d_bias = bias is not None and bias in inits and int(np.prod(inits[bias].dims)) == n
    if one_d_bias:
        inputs += ["", build.const(f"{prefix}/bias", numpy_helper.to_array(inits[bias]).reshape(-1))]
    out_name = node.output[0] if bias is None or one_d_bias else f"{node.output[0]}/nobias"
    matmul = helper.make_node("MatMulNBits", inputs, [out_name], name=node.name, domain=MS_DOMAIN, K=k, N=n,
                              bits=qw.bits, block_size=qw.block)
    if bias is None or one_d_bias:
        return [matmul]
    return [matmul, helper.make_node("Add", [out_name, bias], [node.output[0]], name=f"{node.name}/bias")]


def _build(context: ExportContext, policy: Policy) -> NBitsQuantize:
    return NBitsQuantize(context.layers, policy, cache=context.cache("nbits"))


register(Exporter("nbits", claims, _build))
