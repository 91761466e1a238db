"""Layer subgraphs: each quantizable layer alone, and the whole model at one option, for measured targets.

A measured target (``haqc.hw_targets.base.MeasuredTarget``) times models in a runtime
instead of evaluating a formula; it never sees or edits the user's graph. What it
times is built here, with the quantize pass itself, so a measured layer holds the
same nodes the export writes: its input QuantizeLinear / DequantizeLinear, its
integer weights, its int32 bias and its requantized output, which ONNX Runtime fuses
into one integer kernel (QLinearConv, QGemm). Calibration is on seeded random data:
the values do not change how long a kernel takes, only which numbers it computes.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from haqc.prepared import InputShapes, input_specs
from haqc.layers import Layer
from haqc.ops import FOLDED_IN_CHAINS, LAYER_OPS
from haqc.policy import uniform_policy
from haqc.passes.base import tensor_producers, tensor_readers
from haqc.passes.calibrate import calibrate
from haqc.passes.exporters import Export, ExportContext
from haqc.precision import Option

logger = logging.getLogger(__name__)



class LayerSubgraphs:
    """Standalone models of one canonical model's layers (and of the whole model), built on demand.

    ``input_shapes`` are the shapes the layers were analysed at (the data's dims for
    dynamic ones); ``batch`` scales the leading dim where the model's batch is dynamic (a
    fixed-batch model runs at its own batch).
    """

    def __init__(self, model: onnx.ModelProto, layers: Sequence[Layer], input_shapes: InputShapes | None = None,
                 seed: int = 0) -> None:
        self.model = model
        self.layers = list(layers)
        self.input_shapes = dict(input_shapes or {})
        self.seed = seed
        self._nodes = {n.name: n for n in model.graph.node}
        self._inits = {t.name: t for t in model.graph.initializer}
        self._specs = input_specs(model)
        self._dynamic_batch = all(shape and not isinstance(shape[0], int) for _, shape, _ in self._specs)

    def _batched(self, shape: Sequence[int], batch: int) -> tuple[int, ...]:
        """``shape`` with its leading dim times ``batch`` where the batch is dynamic."""
        shape = tuple(int(d) for d in shape)
        return (shape[0] * batch, *shape[1:]) if shape and self._dynamic_batch else shape

    def geometry(self, layer: Layer, batch: int) -> str:
        """What decides how long ``layer`` runs (op, attributes, shapes), not its weights' values:
        a key under which measurements are shared by every layer of that geometry."""
        node = self._nodes[layer.name]
        parts = {
            "op": node.op_type,
            "attributes": sorted(str(helper.get_attribute_value(a)) + a.name for a in node.attribute),
            "input": list(self._batched(layer.input_shape, batch)),
            "operands": [list(self._inits[i].dims) if i in self._inits else None for i in node.input
                         if i != layer.input],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def layer(self, layer: Layer, option: Option, batch: int = 1) -> onnx.ModelProto:
        """``layer`` alone at ``option``: its node, weight and bias, an input of its analysed shape
        (leading dim times ``batch``) and a float output, with what the export writes for it."""
        node = onnx.NodeProto()
        node.CopyFrom(self._nodes[layer.name])
        operands = [self._inits[i] for i in node.input if i and i != layer.input]
        shape = self._batched(layer.input_shape, batch)
        # The output goes through an Identity (which ONNX Runtime removes) so that the export's
        # requantization of it is read: a graph output would keep the float kernel.
        copy = helper.make_node("Identity", [node.output[0]], [f"{layer.name}/alone/y"])
        indexed = LAYER_OPS[node.op_type].indexed
        graph = helper.make_graph(
            [node, copy], f"{layer.name}/alone",
            [helper.make_tensor_value_info(layer.input, onnx.TensorProto.INT64 if indexed else onnx.TensorProto.FLOAT,
                                           shape)],
            [helper.make_tensor_value_info(copy.output[0], onnx.TensorProto.FLOAT, None)],
            operands,
        )
        alone = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        if not option.quantized:
            return alone
        calibration = None
        if option.calibrated_input:
            feeds = {layer.input: np.random.default_rng(self.seed).standard_normal(shape).astype(np.float32)}
            calibration = calibrate(alone, [layer], [feeds])
        return Export(ExportContext([layer], calibration, packed=False), {layer.name: option})(alone)

    def input_feed(self, layer: Layer, batch: int = 1) -> dict[str, np.ndarray]:
        """Seeded data for ``layer``'s standalone model: normal floats, or valid indices of an embedding."""
        shape = self._batched(layer.input_shape, batch)
        rng = np.random.default_rng(self.seed)
        if LAYER_OPS[layer.op].indexed:
            return {layer.input: rng.integers(0, layer.c_in, shape).astype(np.int64)}
        return {layer.input: rng.standard_normal(shape).astype(np.float32)}

    def conversion(self, layer: Layer, batch: int = 1) -> onnx.ModelProto:
        """A QuantizeLinear -> DequantizeLinear of ``layer``'s input alone: the conversion two chained
        integer layers no longer pay (ONNX Runtime runs the producer's integer output straight into
        the consumer's kernel)."""
        shape = self._batched(layer.input_shape, batch)
        scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
        zero = numpy_helper.from_array(np.array(128, np.uint8), "zero_point")
        nodes = [helper.make_node("QuantizeLinear", [layer.input, "scale", "zero_point"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["dq"])]
        graph = helper.make_graph(nodes, f"{layer.name}/conversion",
                                  [helper.make_tensor_value_info(layer.input, onnx.TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("dq", onnx.TensorProto.FLOAT, shape)], [scale, zero])
        return helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)

    def chains(self) -> list[tuple[int, int]]:
        """(producer, consumer) layer indices where the consumer reads the producer's output directly
        or through ops ONNX Runtime folds into the integer kernels (ReLU / Clip, reshapes), each
        tensor on the way read once: at w8a8 both, no conversion runs between them."""
        producer = tensor_producers(self.model)
        readers = tensor_readers(self.model)
        layer_of = {layer.name: layer.index for layer in self.layers}
        out = []
        for layer in self.layers:
            tensor = layer.input
            while len(readers.get(tensor, [])) == 1 and (node := producer.get(tensor)) is not None:
                if node.name in layer_of:
                    out.append((layer_of[node.name], layer.index))
                    break
                if node.op_type not in FOLDED_IN_CHAINS:
                    break
                tensor = node.input[0]
        return out

    def whole(self, option: Option, batch: int = 1) -> onnx.ModelProto:
        """The whole model with every layer at ``option`` (the model itself for fp32), calibrated on
        ``feeds``."""
        if not option.quantized:
            return self.model
        policy = uniform_policy(self.layers, option)
        calibration = calibrate(self.model, self.layers, [self.feeds(batch)]) if option.calibrated_input else None
        return Export(ExportContext(self.layers, calibration, packed=False), policy)(self.model)

    def feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Seeded inputs for the whole model at the analysed shapes: normal floats, zero integers
        (a valid index for any embedding or mask)."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for name, dims, dtype in self._specs:
            shape = self._batched(self.input_shapes.get(name) or tuple(d if isinstance(d, int) else 1 for d in dims),
                                  batch)
            if np.issubdtype(dtype, np.floating):
                out[name] = rng.standard_normal(shape).astype(dtype)
            else:
                out[name] = np.zeros(shape, dtype)
        return out
