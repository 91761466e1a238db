"""Dynamic integer MatMul (``int8-dynamic``): int8 weights, activations quantized at run time.

The input of a MatMul (or Gemm) layer is quantized per batch by DynamicQuantizeLinear
(uint8 over [min(x, 0), max(x, 0)]), multiplied by per-column int8 weights with
MatMulInteger and rescaled by the product of the two scales: nothing is calibrated,
so it suits activations whose range moves from input to input (transformer
projections). ONNX Runtime fuses the four nodes into DynamicQuantizeMatMul. The
weights take the range the target's kernel computes exactly (``OpCapability``): u8s8
kernels without VNNI add pairs of products in int16, as for static int8.
"""
from __future__ import annotations

import logging
from functools import partial

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from haqc.capabilities import Capabilities
from haqc.layers import Layer
from haqc.passes.base import GraphBuilder, Pass, replace_nodes
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import DynamicQuant, ExportPlan, LayerQuant, QuantizedWeight
from haqc.passes.quantize_linear import quantize_weight
from haqc.passes.quantize_nbits import matmul_layers_only
from haqc.policy import Policy
from haqc.precision import IntFormat, Option

logger = logging.getLogger(__name__)


def claims(option: Option) -> bool:
    """Integer weights under an input quantized at run time."""
    return isinstance(option.activation, IntFormat) and option.activation.dynamic


class DynamicQuantize(Pass[onnx.ModelProto]):
    """Replace each dynamic-int8 layer's MatMul (or Gemm) by DynamicQuantizeLinear -> MatMulInteger ->
    rescale; the others stay as they are."""

    def __init__(self, layers: list[Layer], policy: Policy, capabilities: Capabilities = Capabilities(),
                 cache: dict | None = None) -> None:
        self.layers = [l for l in layers if l.name in policy and claims(policy[l.name])]
        self.policy = policy
        self.capabilities = capabilities
        self.cache = {} if cache is None else cache

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        axes = matmul_layers_only(model, self.layers, "dynamic int8 (MatMulInteger)")
        inits = {t.name: t for t in model.graph.initializer}
        out = {}
        for layer in self.layers:
            option = self.policy[layer.name]
            levels = self.capabilities.of(layer).weight_levels(option.w_bits, option.a_bits)
            channel_axis = 1 - axes[layer.name]
            key = (layer.weight, option.w_bits, levels, channel_axis)
            if key not in self.cache:
                self.cache[key] = quantize_weight(numpy_helper.to_array(inits[layer.weight]), option.w_bits,
                                                  channel_axis, levels=levels)
            out[layer.name] = LayerQuant(weight=self.cache[key], activation=DynamicQuant(option.a_bits))
        return ExportPlan(out)

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        plan = self.plan(model)  # checks every layer is a MatMul / Gemm with a 2-D weight
        return replace_nodes(model, {l.name: partial(_dynamic_matmul, l, plan.layers[l.name].weight)
                                     for l in self.layers})


def _dynamic_matmul(layer: Layer, qw: QuantizedWeight, build: GraphBuilder, node: onnx.NodeProto,
                    inits: dict) -> list[onnx.NodeProto]:
    """The nodes computing ``node`` with a run-time quantized input and ``qw``'s int8 weights [K, N]
    (per output channel: the reduction axis is the other one)."""
    prefix = f"{layer.name}/dynamic"
    weight = np.moveaxis(qw.q.astype(np.int8), 1 - qw.axis, 0)  # [K, N]
    scale = np.asarray(qw.scale, np.float32).reshape(-1)
    quantize = build.node("DynamicQuantizeLinear", [node.input[0]], f"{prefix}/x", name=f"{prefix}/Quantize")
    quantize.output.extend([build.fresh(f"{prefix}/x_scale"), build.fresh(f"{prefix}/x_zero_point")])
    product = build.node("MatMulInteger", [quantize.output[0], build.const(f"{prefix}/w", weight), quantize.output[2]],
                         f"{prefix}/int32", name=f"{prefix}/MatMulInteger")
    cast = build.node("Cast", [product.output[0]], f"{prefix}/float", name=f"{prefix}/Cast", to=TensorProto.FLOAT)
    combined = build.node("Mul", [quantize.output[1], build.const(f"{prefix}/w_scale", scale)], f"{prefix}/scale",
                          name=f"{prefix}/Scale")
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    rescaled = helper.make_node("Mul", [cast.output[0], combined.output[0]],
                                [node.output[0] if bias is None else build.fresh(f"{prefix}/nobias")], name=node.name)
    nodes = [quantize, product, cast, combined, rescaled]
    if bias is not None:
        nodes.append(helper.make_node("Add", [rescaled.output[0], bias], [node.output[0]], name=f"{prefix}/bias"))
    return nodes


def _build(context: ExportContext, policy: Policy) -> DynamicQuantize:
    return DynamicQuantize(context.layers, policy, context.capabilities, cache=context.cache("dynamic"))


register(Exporter("dynamic", claims, _build))
