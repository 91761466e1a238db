"""A toy format added the way docs/extending.md says: this one file and a registry entry, nothing else.

Ternary weights (TTQ-like): each output channel's weights become {-1, 0, +1} times one scale,
stored as int8 codes and expanded by DequantizeLinear; activations stay float. The plan is an
ordinary ``QuantizedWeight`` (levels 1), so fine-tuning simulates it with no change to haqc.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from haqc.layers import Layer
from haqc.passes.base import GraphBuilder, Pass, with_nodes, without_initializers
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import ExportPlan, LayerQuant
from haqc.passes.quantize_linear import quantize_weight
from haqc.policy import Policy
from haqc.precision import Option, TensorFormat


@dataclass(frozen=True)
class TernaryFormat(TensorFormat):
    """Weights in {-1, 0, +1} x a scale per output channel."""

    bits: int = 2

    @property
    def name(self) -> str:
        return "ternary"


TERNARY = Option(TernaryFormat())


class TernaryQuantize(Pass[onnx.ModelProto]):
    def __init__(self, layers: list[Layer], policy: Policy) -> None:
        self.layers = [l for l in layers if l.name in policy]

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return ExportPlan({l.name: LayerQuant(weight=quantize_weight(inits[l.weight], 2, l.weight_axis, levels=1))
                           for l in self.layers})

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        plan = self.plan(model)
        out, build = without_initializers(model), GraphBuilder(model)
        before = {}
        for node in out.graph.node:
            layer = next((l for l in self.layers if l.name == node.name), None)
            if layer is None:
                continue
            qw = plan.layers[layer.name].weight
            q = build.const(f"{layer.weight}/ternary", qw.q.astype(np.int8))
            dq = helper.make_node("DequantizeLinear", [q, build.const(f"{layer.weight}/scale", qw.scale)],
                                  [build.fresh(f"{layer.weight}/dq")], axis=layer.weight_axis)
            node.input[list(node.input).index(layer.weight)] = dq.output[0]
            before[node.name] = [dq]
        return with_nodes(model, out, [m for n in out.graph.node for m in (*before.get(n.name, ()), n)], build)


def _build(context: ExportContext, policy: Policy) -> TernaryQuantize:
    return TernaryQuantize(context.layers, policy)


register(Exporter("ternary", lambda option: isinstance(option.weight, TernaryFormat), _build,
                  parse=lambda name: TERNARY if name == "ternary" else None))
