"""16-bit float islands (``fp16``, ``bf16``): a layer computed in half precision inside a float32 model.

The layer's weights (and bias) are stored in the 16-bit format, its input is cast to
it and its output cast back to float32, so the layer runs a 16-bit kernel (what GPU
execution providers run fast) while its neighbours keep their own formats. Rounding
to 16 bits is the whole of the numerical change, and the fine-tuning simulation
applies exactly that to the same three tensors.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from haqc.layers import Layer
from haqc.ops import LAYER_OPS
from haqc.passes.base import GraphBuilder, Pass, with_nodes, without_initializers
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import ExportPlan, HalfFloat, LayerQuant
from haqc.policy import Policy
from haqc.precision import FloatFormat, Option

logger = logging.getLogger(__name__)

ONNX_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def claims(option: Option) -> bool:
    """A layer computed in a 16-bit float format."""
    return isinstance(option.weight, FloatFormat)


def to_half(values: np.ndarray, kind: str) -> TensorProto:
    """``values`` as a 16-bit float tensor (bfloat16 rounded to nearest even, as torch rounds it)."""
    if kind == "fp16":
        return numpy_helper.from_array(values.astype(np.float16))
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    tensor = TensorProto(data_type=TensorProto.BFLOAT16, dims=list(values.shape))
    tensor.raw_data = rounded.tobytes()
    return tensor


class Float16Quantize(Pass[onnx.ModelProto]):
    """Run each 16-bit float layer in that format (Cast in, 16-bit weights and bias, Cast out)."""

    def __init__(self, layers: list[Layer], policy: Policy) -> None:
        self.layers = [l for l in layers if l.name in policy and claims(policy[l.name])]
        self.policy = policy

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        out = {}
        for layer in self.layers:
            half = HalfFloat(self.policy[layer.name].weight.kind)
            out[layer.name] = LayerQuant(weight=half, activation=half, output=half)
        return ExportPlan(out)

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        out = without_initializers(model)
        inits = {t.name: t for t in model.graph.initializer}
        build = GraphBuilder(model)
        before: dict[str, list[onnx.NodeProto]] = {}
        after: dict[str, list[onnx.NodeProto]] = {}
        by_name = {layer.name: layer for layer in self.layers}
        for node in out.graph.node:
            layer = by_name.get(node.name)
            if layer is None:
                continue
            kind = self.policy[layer.name].weight.kind
            prefix = f"{layer.name}/{kind}"
            indices = LAYER_OPS[node.op_type].activation if LAYER_OPS[node.op_type].indexed else None
            for i, name in enumerate(node.input):
                if name in inits:  # weight, bias: stored in the 16-bit format
                    node.input[i] = build.const(f"{name}/{kind}", to_half(numpy_helper.to_array(inits[name]), kind))
                elif name and i != indices:  # an embedding's indices stay integers
                    cast = build.node("Cast", [name], f"{prefix}/in{i}", to=ONNX_TYPES[kind])
                    before.setdefault(node.name, []).append(cast)
                    node.input[i] = cast.output[0]
            result = node.output[0]
            node.output[0] = build.fresh(f"{prefix}/out")
            after[node.name] = [helper.make_node("Cast", [node.output[0]], [result], name=f"{prefix}/Cast",
                                                 to=TensorProto.FLOAT)]
        nodes = [m for n in out.graph.node for m in (*before.get(n.name, ()), n, *after.get(n.name, ()))]
        return with_nodes(model, out, nodes, build)


def _build(context: ExportContext, policy: Policy) -> Float16Quantize:
    return Float16Quantize(context.layers, policy)


register(Exporter("float16", claims, _build))
