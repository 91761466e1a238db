"""Canonicalize: one opset, constants folded, BatchNorm/affine folded into layers, shapes known.

After ``canonicalize`` every quantizable weight is an initializer (real models
compute weights with Constant / ConstantOfShape nodes), every node has a
unique name, and tensors have inferred shapes where inference knows them, so
the extract and quantize passes can work on plain data. The model's interface
is kept: dynamic input dims stay dynamic, and nothing is folded that depends
on them. Control flow (If / Loop / Scan bodies) and recurrent nodes pass
through as they are. Numerics are preserved (tested against ONNX Runtime
within 1e-4 relative).
"""
from __future__ import annotations

import gc
import logging

import numpy as np
import onnx
import onnxruntime as ort
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER
from onnx import helper, version_converter

from haqc.errors import InputError, first_line
from haqc.passes.base import (Pass, bytes_with_outputs, copy_model, initializers_as_inputs, opset_version,
                              quiet_session_options)
from haqc.prepared import graph_inputs

logger = logging.getLogger(__name__)

# Opset 25 is the first where QuantizeLinear/DequantizeLinear take INT2/UINT2
# (INT4 needs 21); ONNX Runtime 1.32 runs all of them. See docs/design.md.
CANONICAL_OPSET = 25

G_LOGGER.severity = G_LOGGER.ERROR  # its size warnings are noise for weight folding


class ConvertOpset(Pass[onnx.ModelProto]):
    """Upgrade the default domain to CANONICAL_OPSET (models from opset 7 up)."""

    def __init__(self, opset: int = CANONICAL_OPSET) -> None:
        self.opset = opset

    def requires(self, model: onnx.ModelProto) -> None:
        if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
            domains = ", ".join(sorted({o.domain for o in model.opset_import})) or "none"
            raise InputError(f"the model imports no standard ONNX operators (only: {domains}), so it has no Conv, "
                             "Gemm or MatMul layer to quantize; haqc quantizes neural-network layers")
        version = opset_version(model)
        if version < 7:
            raise InputError(f"model uses opset {version}; haqc converts opset 7 and newer, re-export it")
        if version > self.opset:
            raise InputError(f"model uses opset {version}, newer than haqc's {self.opset}")

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        if opset_version(model) == self.opset:
            return copy_model(model)
        try:
            converted = version_converter.convert_version(model, self.opset)
        except Exception as err:  # the converter raises bare RuntimeError/ValueError subclasses
            raise InputError(
                f"cannot convert the model from opset {opset_version(model)} to {self.opset}: "
                f"{first_line(err)}"
            ) from None
        # Other domains (com.microsoft's quantized ops, ai.onnx.ml) keep their versions; onnx's table may not
        # know them (an older int8 OCR model's com.microsoft import raised 'Unsupported opset-version.').
        converted.ir_version = max(converted.ir_version,
                                   helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True))
        if opset_version(model) < 11:
            _keep_asymmetric_linear_resize(converted)
        return converted


def _keep_asymmetric_linear_resize(model: onnx.ModelProto) -> None:
    """Resize-10 and Upsample interpolate linearly on asymmetric coordinates; onnx's converter
    writes their Resize-11+ form without saying so, which then means half_pixel (measured: 1.28
    off on a unit-variance input at 2x). Say it. Nearest is converted right and left alone."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            for a in node.attribute:
                graphs.extend([a.g] if a.HasField("g") else [])
                graphs.extend(a.graphs)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Resize" and attrs.get("mode") in (b"linear", "linear") \
                    and "coordinate_transformation_mode" not in attrs:
                node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))


_LARGE_INITIALIZER = 4096  # bytes; see FoldConstants and InferShapes


class FoldConstants(Pass[onnx.ModelProto]):
    """Evaluate constant subgraphs, then fold BatchNorm and per-channel Mul/Add into layers."""

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = gs.import_onnx(_slice_partial_shapes(model))
        # Subgraph bodies stay as they are: folding inside them is not needed to find layers. An If
        # with a constant condition is not flattened either: onnx-graphsurgeon wires only the first
        # output of an inlined branch (silero-vad's two-output If lost its second, and the graph
        # no longer loaded).
        graph.fold_constants(recurse_subgraphs=False, flatten_subgraphs=False)
        graph.cleanup()
        while _fold_affine_once(graph):
            pass
        graph.cleanup()
        # gs.export_onnx copies every folded array into the protobuf while the graph still holds
        # it, with a transient bytes copy on top (~3x the weights at peak, ~2.2 GB on vgg19):
        # export large arrays as empty placeholders, then move each one in and drop it.
        detached = _detach_large_constants(graph)
        out = gs.export_onnx(graph)
        del graph
        gc.collect()  # the gs graph (and what folding replaced) is cyclic: free its arrays now, not later
        _attach_constants(out, detached)
        return _with_metadata(out, model)


def _slice_partial_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Shape(x, start, end)`` as ``Slice(Shape(x))``, which folds correctly.

    onnx-graphsurgeon's shape folding ignores Shape's start / end attributes
    (opset 15): on torch's dynamo BERT, ``Shape(mask, start=1, end=2)`` folded to
    the whole shape, and the folded graph no longer ran in ONNX Runtime.
    """
    partial = [n for n in model.graph.node if n.op_type == "Shape" and any(a.name in ("start", "end") for a in n.attribute)]
    if not partial:
        return model
    out = copy_model(model)
    taken = {t for n in out.graph.node for t in (*n.input, *n.output)} | {t.name for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Shape" or not ({"start", "end"} & set(attrs)):
            nodes.append(node)
            continue
        full, starts, ends = (_fresh(f"{node.output[0]}/{k}", taken) for k in ("full", "starts", "ends"))
        out.graph.initializer.extend([
            helper.make_tensor(starts, onnx.TensorProto.INT64, [1], [attrs.get("start", 0)]),
            helper.make_tensor(ends, onnx.TensorProto.INT64, [1], [attrs.get("end", np.iinfo(np.int64).max)]),
        ])
        nodes.append(helper.make_node("Shape", [node.input[0]], [full], name=node.name))
        nodes.append(helper.make_node("Slice", [full, starts, ends], list(node.output), name=f"{node.name}/slice"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _fresh(name: str, taken: set[str]) -> str:
    base, k = name, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


# numpy dtypes whose ONNX raw_data is the little-endian array bytes
_RAW_DTYPES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                           np.uint8, np.uint16, np.uint32, np.uint64))


def _detach_large_constants(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Replace large folded (in-memory) constants' values with empty arrays; return the originals."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    detached = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or isinstance(tensor._values, LazyValues):
            continue
        values = tensor.values
        if isinstance(values, np.ndarray) and values.dtype in _RAW_DTYPES and values.nbytes > _LARGE_INITIALIZER:
            detached[tensor.name] = values
            tensor.values = np.zeros((0,), values.dtype)
    return detached


def _attach_constants(model: onnx.ModelProto, detached: dict[str, np.ndarray]) -> None:
    """Fill the placeholders left by _detach_large_constants, freeing each array as it goes."""
    for tensor in model.graph.initializer:
        values = detached.pop(tensor.name, None)
        if values is None:
            continue
        shape = values.shape
        data = np.ascontiguousarray(values, values.dtype.newbyteorder("<")).tobytes()
        del values
        del tensor.dims[:]
        tensor.dims.extend(shape)
        tensor.raw_data = data
        del data
    if detached:  # every graph-level constant is exported as an initializer of the main graph
        raise RuntimeError(f"constants lost in export: {sorted(detached)[:3]}")


class NameNodes(Pass[onnx.ModelProto]):
    """Give every node a unique, readable name (its first output's name when unnamed)."""

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        out = copy_model(model)
        seen: set[str] = set()
        for i, node in enumerate(out.graph.node):
            name = node.name or (node.output[0] if node.output else f"{node.op_type}_{i}")
            base, k = name, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            seen.add(name)
        return out


class InferShapes(Pass[onnx.ModelProto]):
    """Shape inference so every layer's input and output shapes are known.

    Strict first; where strict inference rejects a graph that ONNX Runtime runs
    (torch's dynamo exports, a declared output shape the graph does not produce),
    the lenient mode keeps what it could infer, and the analysis asks ONNX
    Runtime for any layer shape still missing. The model's own value_info is
    dropped first: inference writes it anew, and stale entries conflict.
    """

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        # onnx.shape_inference serializes the model and parses it back (several copies of every
        # weight: ~4x the weights at peak on vgg19). Shapes depend only on the initializers'
        # types and dims, except for small constants that data propagation reads (Reshape
        # shapes...), so inference runs on the graph with large initializers declared as typed
        # inputs instead, and the inferred value_info is put on a copy of the model.
        light = initializers_as_inputs(model, _is_large)[0]
        del light.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
        except onnx.shape_inference.InferenceError as err:
            logger.info("strict shape inference failed (%s); inferring leniently", first_line(err))
            try:
                inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
            except onnx.shape_inference.InferenceError as err:
                raise InputError(f"shape inference failed: {first_line(err)}") from None
        out = copy_model(model)
        del out.graph.value_info[:]
        out.graph.value_info.extend(inferred.graph.value_info)
        del out.graph.output[:]
        out.graph.output.extend(inferred.graph.output)
        return out


class ProbeShapes(Pass[onnx.ModelProto]):
    """Layer shapes static inference leaves unknown, measured: one ONNX Runtime run on zeros.

    After an If whose branches differ, or ops the inference cannot follow, a layer's input or
    output may have no shape, or unknown dims past the batch, which would count as 1 and make
    its MACs wrong. Such tensors are exposed as outputs of one run at the analysis shapes (a
    dynamic batch as 1) and their shapes written into ``value_info``. Control flow is followed
    as zeros take it; the model's outputs are unchanged.
    """

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        known = {vi.name: vi for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
        layers = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        missing = [t for t in dict.fromkeys(x for n in layers for x in (n.input[0], n.output[0]))
                   if t not in known or not _static_past_batch(known[t])]
        if not missing:
            return model
        feeds = {i.name: np.zeros([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                   for d in i.type.tensor_type.shape.dim],
                                  helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
                 for i in graph_inputs(model)}
        try:
            session = ort.InferenceSession(bytes_with_outputs(model, missing), quiet_session_options(),
                                           providers=["CPUExecutionProvider"])
            values = dict(zip(missing, session.run(missing, feeds)))
        except Exception as err:  # ORT raises its own error types for models it cannot run on zeros
            raise InputError(f"the shapes of {missing[0]!r} and {len(missing) - 1} more layer tensors cannot be "
                             f"inferred, and running the model on zeros to measure them failed ({first_line(err)}); "
                             "give `input_shapes` for every input") from None
        out = copy_model(model)
        keep = [vi for vi in out.graph.value_info if vi.name not in values]
        del out.graph.value_info[:]
        out.graph.value_info.extend(keep)
        for name, value in values.items():
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            out.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
        logger.info("shapes of %d layer tensors measured with ONNX Runtime", len(values))
        return out


def _static_past_batch(value: onnx.ValueInfoProto) -> bool:
    """A shape is known with every dim after the first (the batch) fixed."""
    t = value.type.tensor_type
    return t.HasField("shape") and all(d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim[1:])


def _is_large(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() > _LARGE_INITIALIZER


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the canonical pass pipeline; the result passes the ONNX checker."""
    for pass_ in (ConvertOpset(), NameNodes(), FoldConstants(), InferShapes()):
        model = pass_(model)
    # The checker serializes the model it checks (two more copies of every weight): check the
    # graph with large initializers as typed inputs; their data comes from our own folding.
    onnx.checker.check_model(initializers_as_inputs(model, _is_large)[0])
    return model


def _with_metadata(out: onnx.ModelProto, src: onnx.ModelProto) -> onnx.ModelProto:
    """gs.export_onnx drops model-level fields; keep the source's."""
    out.ir_version = src.ir_version
    del out.opset_import[:]
    out.opset_import.extend(src.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(src, field))
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    return out


# --- BatchNorm / affine folding -------------------------------------------------

_FOLD_INTO = ("Conv", "ConvTranspose", "Gemm")


def _fold_affine_once(graph: gs.Graph) -> bool:
    """Fold one BatchNormalization, Mul or Add that follows a layer; True if anything changed."""
    for node in graph.nodes:
        if node.op not in ("BatchNormalization", "Mul", "Add"):
            continue
        layer = _producing_layer(node, graph)
        if layer is None:
            continue
        channels = _out_channels(layer)
        affine = _as_channel_affine(node, channels, _out_rank(layer))
        bias = _layer_bias(layer, channels)
        if affine is None or bias is None:
            continue
        scale, shift = affine
        _apply_affine(layer, scale, bias * scale + shift)
        # Bypass `node`: the layer now writes the node's output tensor.
        out = node.outputs[0]
        node.outputs.clear()
        layer.outputs[0] = out
        return True
    return False


def _producing_layer(node: gs.Node, graph: gs.Graph) -> gs.Node | None:
    """The Conv/ConvTranspose/Gemm feeding ``node``, if it has constant weights and no other user."""
    data = [t for t in node.inputs if not isinstance(t, gs.Constant)]
    if len(data) != 1 or not data[0].inputs:
        return None
    layer = data[0].inputs[0]
    if layer.op not in _FOLD_INTO or len(data[0].outputs) != 1 or data[0] in graph.outputs:
        return None
    if not all(isinstance(t, gs.Constant) for t in layer.inputs[1:]):
        return None
    if layer.op == "ConvTranspose" and layer.attrs.get("group", 1) != 1:
        return None
    return layer


def _out_channels(layer: gs.Node) -> int:
    w = layer.inputs[1].values
    if layer.op == "Conv":
        return w.shape[0]
    if layer.op == "ConvTranspose":
        return w.shape[1]
    return w.shape[0] if layer.attrs.get("transB", 0) else w.shape[1]


def _out_rank(layer: gs.Node) -> int:
    return 2 if layer.op == "Gemm" else layer.inputs[1].values.ndim


def _as_channel_affine(node: gs.Node, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per output channel equivalent to ``node``, or None if not per-channel."""
    if node.op == "BatchNormalization":
        if len(node.outputs) != 1 or node.attrs.get("training_mode", 0):
            return None
        if not all(isinstance(t, gs.Constant) for t in node.inputs[1:5]):
            return None
        gamma, beta, mean, var = (t.values.astype(np.float64) for t in node.inputs[1:5])
        scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        return scale, beta - mean * scale
    const = [t for t in node.inputs if isinstance(t, gs.Constant)]
    if len(const) != 1 or const[0].values.dtype != np.float32:
        return None
    per_channel = _channel_vector(const[0].values, channels, rank)
    if per_channel is None:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    return (per_channel, zeros) if node.op == "Mul" else (ones, per_channel)


def _channel_vector(values: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis (1) of a rank-``rank`` output only."""
    if values.size == 1 and values.ndim <= rank:
        return np.full(channels, float(values.reshape(())), dtype=np.float64)
    if values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + values.shape  # right-aligned broadcast
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return values.reshape(channels).astype(np.float64)


def _apply_affine(layer: gs.Node, scale: np.ndarray, new_bias: np.ndarray) -> None:
    """Rewrite layer so that layer'(x) = layer(x) * scale + shift (new_bias = bias * scale + shift)."""
    w = layer.inputs[1].values.astype(np.float64)
    if layer.op == "Conv":
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    elif layer.op == "ConvTranspose":
        w = w * scale.reshape((1, -1) + (1,) * (w.ndim - 2))
    elif layer.attrs.get("transB", 0):
        w = w * scale[:, None]
    else:
        w = w * scale[None, :]
    name = layer.inputs[1].name + "_folded"
    layer.inputs[1] = gs.Constant(name, w.astype(np.float32))
    bias_const = gs.Constant(name + "_bias", new_bias.astype(np.float32))
    if len(layer.inputs) > 2:
        layer.inputs[2] = bias_const
    else:
        layer.inputs.append(bias_const)
    if layer.op == "Gemm":
        layer.attrs["beta"] = 1.0


def _layer_bias(layer: gs.Node, channels: int) -> np.ndarray | None:
    """The layer's bias as a per-channel vector (Gemm's beta folded in); None if not per-channel."""
    if len(layer.inputs) < 3 or not layer.inputs[2].name:
        return np.zeros(channels)
    c = layer.inputs[2].values.astype(np.float64)
    if layer.op == "Gemm":
        c = float(layer.attrs.get("beta", 1.0)) * c
    if c.size not in (1, channels) or (c.ndim == 2 and c.shape[0] != 1):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).copy()
