"""Extract (analysis only): the quantizable layers of a canonical model, as plain records.

Quantizable: Conv (incl. grouped / depthwise), ConvTranspose, Gemm, and MatMul
whose second operand is a 2-D constant (x @ W; a transposed weight is folded
into a constant by canonicalize). Layers come in execution order. Their
shapes, MACs and HAQ state features are what hardware targets and the search
see; they never look at the protobuf. Compute the export leaves in float
(attention MatMuls between two activations, normalization, softmax, embedding
lookups, control flow, recurrent cells) is listed in ``Extraction.kept_float``
with the reason, so inspect can say what haqc does not quantize.
"""
from __future__ import annotations

import logging
import math
from collections import Counter

import networkx as nx
import numpy as np
import onnx

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.prepared import Extraction, FloatNode
from haqc.ops import LAYER_OPS
from haqc.passes.base import Pass, tensor_producers

logger = logging.getLogger(__name__)

# Ops with MACs that can be layers; a Gather of a constant 2-D table is one too (an embedding).
QUANTIZABLE_OPS = tuple(op for op, facts in LAYER_OPS.items() if not facts.indexed)


# Ops that do real work but stay float in every export, and why (what inspect lists).
FLOAT_REASONS = {
    "If": "control flow: its branches run in float",
    "Loop": "control flow: its body runs in float",
    "Scan": "control flow: its body runs in float",
    "LSTM": "recurrent cell: haqc quantizes Conv / Gemm / MatMul layers only",
    "GRU": "recurrent cell: haqc quantizes Conv / Gemm / MatMul layers only",
    "RNN": "recurrent cell: haqc quantizes Conv / Gemm / MatMul layers only",
    "LayerNormalization": "normalization stays float",
    "Softmax": "softmax stays float",
    "Gelu": "activation stays float",
    "Gather": "embedding lookup of a table that is not 2-D along axis 0 stays float",
    "Einsum": "einsum is not a layer haqc quantizes",
    "Attention": "fused attention stays float",
}
# Integer ops of a model that is already quantized (ONNX's and ONNX Runtime's com.microsoft ones):
# haqc leaves them as they are and quantizes what is still float.
ALREADY_QUANTIZED = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QAttention",
                     "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "MatMulNBits")
FLOAT_REASONS.update({op: "already quantized: kept as it is" for op in ALREADY_QUANTIZED})


class ExtractLayers(Pass[Extraction]):
    """Find quantizable layers; requires a canonical model (weights as initializers, shapes inferred)."""

    def call(self, model: onnx.ModelProto) -> Extraction:
        shapes = _tensor_shapes(model)
        inits = {t.name: t for t in model.graph.initializer}
        batch = _samples_per_run(model, shapes)
        layers: list[Layer] = []
        skipped: list[str] = []
        kept_float: list[FloatNode] = []
        for node in model.graph.node:
            if _is_embedding(node, inits):
                layers.append(_make_embedding(len(layers), node, tuple(inits[node.input[0]].dims), shapes))
                continue
            if node.op_type not in QUANTIZABLE_OPS:
                # A Gather of a constant table is an embedding; one of a shape is bookkeeping, not compute.
                if node.op_type in FLOAT_REASONS and (node.op_type != "Gather" or node.input[0] in inits):
                    kept_float.append(FloatNode(node.name, node.op_type, FLOAT_REASONS[node.op_type]))
                continue
            weight = node.input[1] if len(node.input) > 1 else ""
            if node.op_type == "Gemm" and _attr(node, "transA", 0):
                skipped.append(f"{node.name} (transposed input)")
                kept_float.append(FloatNode(node.name, node.op_type, "transposed input (transA)"))
                continue
            if weight not in inits or (node.op_type == "MatMul" and len(inits[weight].dims) != 2):
                skipped.append(node.name)
                kept_float.append(FloatNode(node.name, node.op_type, _why_not_a_layer(node, weight, inits)))
                continue
            layers.append(_make_layer(len(layers), node, tuple(inits[weight].dims), shapes, batch))
        if not layers:
            nested = sum(_nested_layers(node) for node in model.graph.node)
            if nested:
                raise InputError(
                    f"all {nested} Conv / Gemm / MatMul nodes of the model are inside If / Loop / Scan bodies, "
                    "which haqc leaves in float (it quantizes main-graph layers only); export the model "
                    "without control flow (e.g. one branch, or the loop unrolled) to quantize it"
                )
            quantized = Counter(node.op for node in kept_float if node.op in ALREADY_QUANTIZED)
            if quantized:
                ops = ", ".join(f"{n} {op}" for op, n in quantized.items())
                raise InputError(f"the model is already quantized ({ops}) and has no float Conv / Gemm / MatMul "
                                 "layer left; pass the float model for haqc to quantize")
            detail = f"; these layers have non-constant weights: {', '.join(skipped[:5])}" if skipped else ""
            raise InputError(
                "the model has no quantizable layer (Conv, ConvTranspose, Gemm or MatMul with a constant "
                f"weight){detail}; haqc needs at least one"
            )
        if skipped:
            logger.info("not quantizable (weights not constant): %s", ", ".join(skipped))
        return Extraction(layers, normalized_state(layers), _dataflow_graph(model, layers), kept_float)


def _nested_layers(node: onnx.NodeProto) -> int:
    """How many quantizable ops the subgraphs of ``node`` hold, at any depth."""
    count = 0
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            count += sum((inner.op_type in QUANTIZABLE_OPS) + _nested_layers(inner) for inner in graph.node)
    return count


def _why_not_a_layer(node: onnx.NodeProto, weight: str, inits: dict[str, onnx.TensorProto]) -> str:
    if weight in inits:
        return f"constant operand of rank {len(inits[weight].dims)}, not a 2-D weight"
    if node.op_type == "MatMul":
        return "both operands are activations (e.g. attention scores)"
    return "weight is computed at run time, not a constant"


def extract_layers(model: onnx.ModelProto) -> Extraction:
    return ExtractLayers()(model)


def normalized_state(layers: list[Layer]) -> np.ndarray:
    """Min-max normalize each state column over all layers; a constant column stays as is (as HAQ does)."""
    raw = np.array([layer.state for layer in layers], dtype=np.float64)
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (raw - lo) / span, raw).astype(np.float32)


def _is_embedding(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """A Gather of rows of a constant 2-D float table: an embedding, quantized per row (weight-only)."""
    if node.op_type != "Gather" or node.input[0] not in inits or _attr(node, "axis", 0) != 0:
        return False
    table = inits[node.input[0]]
    return len(table.dims) == 2 and table.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def _make_embedding(index: int, node: onnx.NodeProto, table: tuple[int, ...],
                    shapes: dict[str, tuple[int, ...]]) -> Layer:
    """An embedding as a layer: no MACs; each looked-up index reads one row of ``c_out`` weights."""
    facts = LAYER_OPS["Gather"]
    indices = _shape(node.input[facts.activation], shapes, node)
    rows = math.prod(indices[1:]) if len(indices) > 1 else 1
    return Layer(index=index, name=node.name, op="Gather", kind="embedding", c_in=int(table[0]), c_out=int(table[1]),
                 kernel=(1, 1), stride=(1, 1), groups=1, feature_size=1, out_feature_size=1, rows=int(rows),
                 reduction=1, params=int(table[0] * table[1]), macs=0, input_elems=int(rows),
                 output_elems=int(rows * table[1]), weight=node.input[facts.weight], weight_axis=0,
                 input=node.input[facts.activation], input_shape=tuple(int(d) for d in indices))


def _samples_per_run(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The samples one analysed run holds: the leading dim the model's inputs share (1 where the batch is
    dynamic, else the fixed batch); None where the inputs disagree (a recurrent state batched elsewhere)."""
    constant = {t.name for t in model.graph.initializer}
    leading = {shapes[v.name][0] for v in model.graph.input
               if v.name not in constant and shapes.get(v.name)}
    return leading.pop() if len(leading) == 1 else None


def _make_layer(index: int, node: onnx.NodeProto, w: tuple[int, ...], shapes: dict[str, tuple[int, ...]],
                batch: int | None = None) -> Layer:
    x_shape = _shape(node.input[0], shapes, node)
    y_shape = _shape(node.output[0], shapes, node)
    in_elems, out_elems = math.prod(x_shape[1:]), math.prod(y_shape[1:])
    params = math.prod(w)
    if node.op_type in ("Conv", "ConvTranspose"):
        groups = _attr(node, "group", 1)
        k = w[2:]
        kernel = (k[0], k[1] if len(k) > 1 else 1) if k else (1, 1)
        strides = _attr(node, "strides", [1] * len(k)) or [1]
        stride = (strides[0], strides[1] if len(strides) > 1 else strides[0])
        c_in = x_shape[1]
        feature, out_feature = math.prod(x_shape[2:]), math.prod(y_shape[2:])
        if node.op_type == "Conv":
            c_out, axis = w[0], 0
            rows, reduction = out_feature, w[1] * math.prod(k)
        else:  # each input pixel scatters a (c_out/g * k) patch: rows count pixel x tap pairs
            c_out, axis = w[1] * groups, 1
            rows, reduction = feature * math.prod(k), w[0] // groups
        kind = "depthwise" if groups > 1 and groups == c_in and reduction == math.prod(k) else "conv"
    else:
        trans_b = node.op_type == "Gemm" and _attr(node, "transB", 0)
        c_in, c_out = (w[1], w[0]) if trans_b else (w[0], w[1])
        axis = 0 if trans_b else 1
        kernel, stride, groups = (1, 1), (1, 1), 1
        feature = out_feature = 1
        rows = math.prod(x_shape[1:-1]) if len(x_shape) > 2 else 1
        if batch and math.prod(x_shape[:-1]) % batch == 0:
            # the rows of one sample wherever its batch sits: a time-major [steps, batch, features] input, or
            # tokens flattened to [batch * steps, features], holds steps rows per sample
            rows = math.prod(x_shape[:-1]) // batch
            in_elems, out_elems = math.prod(x_shape) // batch, math.prod(y_shape) // batch
        reduction = c_in
        kind = "fc" if node.op_type == "Gemm" else "matmul"
    return Layer(
        index=index,
        name=node.name,
        op=node.op_type,
        kind=kind,
        c_in=int(c_in),
        c_out=int(c_out),
        kernel=(int(kernel[0]), int(kernel[1])),
        stride=(int(stride[0]), int(stride[1])),
        groups=int(groups),
        feature_size=int(feature),
        out_feature_size=int(out_feature),
        rows=int(rows),
        reduction=int(reduction),
        params=int(params),
        macs=int(rows * c_out * reduction),
        input_elems=int(in_elems),
        output_elems=int(out_elems),
        weight=node.input[1],
        weight_axis=axis,
        input=node.input[0],
        input_shape=tuple(int(d) for d in x_shape),
    )


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor; a dynamic dim (the batch) counts as 1 sample."""
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _shape(name: str, shapes: dict[str, tuple[int, ...]], node: onnx.NodeProto) -> tuple[int, ...]:
    if name not in shapes:
        raise InputError(f"the shape of {name!r} (at layer {node.name!r}) is unknown; run canonicalize first")
    return shapes[name]


def _dataflow_graph(model: onnx.ModelProto, layers: list[Layer]) -> nx.DiGraph:
    layer_of = {layer.name: layer.index for layer in layers}
    graph = nx.DiGraph()
    for node in model.graph.node:
        graph.add_node(node.name, op=node.op_type, layer=layer_of.get(node.name))
    producer = tensor_producers(model)
    for node in model.graph.node:
        for tensor in node.input:
            if tensor in producer:
                graph.add_edge(producer[tensor].name, node.name, tensor=tensor)
    return graph
