"""Linear quantization: a per-layer precision policy becomes a QDQ ONNX model.

Weights are stored as integers in the smallest ONNX type that holds them
(INT2 / INT4 / INT8, packed; within the range the target's kernel computes exactly,
``haqc.capabilities.OpCapability.weight_levels``) and expanded by
DequantizeLinear (INT2: Cast + Mul, working around an ONNX Runtime fusion bug); activations
pass through QuantizeLinear / DequantizeLinear in uint8, with the codes
clamped by an integer Clip whenever the b-bit range is narrower, so odd
widths (3, 5, 6, 7 bits) really are b-bit. Bias becomes int32 in steps of s_a * s_w when
both weights and activations are quantized (HAQ kept it float; ONNX Runtime
would requantize it that way on load anyway, so haqc does it explicitly).
Such an integer layer's output is requantized to 8 bits where no quantized
layer input does it already (``requantized_outputs``), so the export runs
as ONNX Runtime's integer kernels.

``LinearQuantize.plan`` hands out every parameter the export uses (weight
scales and integers, activation clips and scales, bias steps, the
requantized outputs) as data: the torch fake-quant used for fine-tuning
applies exactly those, so the simulation and the export agree.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from haqc.capabilities import Capabilities, OpCapability
from haqc.errors import InputError
from haqc.layers import Layer
from haqc.ops import LAYER_OPS, RESHAPES
from haqc.passes.base import (GraphBuilder, Pass, layer_outputs, tensor_producers, tensor_readers, with_nodes,
                              without_initializers)
from haqc.passes.calibrate import Calibration
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import ActivationQuant, ExportPlan, LayerQuant, QuantizedWeight
from haqc.policy import Policy
from haqc.runner.facts import INT8_RANGE_KEY
from haqc.precision import FP32, IntFormat, Option

logger = logging.getLogger(__name__)

LINEAR_MIN_BITS = 2
# Weights below this width get an MSE-searched clip per channel; above it |w|max
# loses nothing measurable (the reference uses max for b >= 5 too).
_CLIP_SEARCH_BELOW = 5
_CLIP_RATIOS = np.linspace(0.3, 1.0, 15)


def quantize_weight(w: np.ndarray, bits: int, axis: int | None, scale: np.ndarray | None = None,
                    levels: int | None = None) -> QuantizedWeight:
    """Symmetric quantization per output channel (``axis``) or per tensor (``axis=None``) to
    integers within +-``levels`` (default: the full b-bit range, 2^(b-1) - 1).

    Below 5 bits the clip per channel minimises the squared error over a grid
    of fractions of |w|max; at 5+ bits the clip is |w|max. A given ``scale`` (one per
    channel, or a scalar) is used as is: fine-tuned weights are exported with the scales they
    were trained under, since scales chosen afresh from them round them differently.
    """
    levels = 2 ** (bits - 1) - 1 if levels is None else levels
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    if scale is not None:
        return _round_to(moved, np.asarray(scale, np.float32).reshape(-1), w, bits, axis, levels)
    # The float64 arithmetic runs over slices of about _CHUNK elements (whole rows, or columns of
    # a single row): a large layer (vgg19's fc6, 103M weights) would otherwise take several
    # float64 temporaries of 0.8 GB each. Every step is elementwise or a per-row max, so the
    # result is bit-identical to the unsliced computation.
    slices = _slices(moved.shape)
    absmax = np.zeros(moved.shape[0])
    for rows, cols in slices:
        absmax[rows] = np.maximum(absmax[rows], np.abs(moved[rows, cols].astype(np.float64)).max(axis=1))
    absmax = np.where(absmax > 0, absmax, 1.0)
    if bits < _CLIP_SEARCH_BELOW:
        # Per-row error sums: sliced by whole rows only, so every sum keeps its order.
        ratio = np.empty(moved.shape[0])
        for rows in (r for r, _ in slices) if moved.shape[0] > 1 else [slice(0, 1)]:
            w64 = moved[rows].astype(np.float64)
            errs = []
            for r in _CLIP_RATIOS:
                s = (absmax[rows] * r / levels)[:, None]
                errs.append(((np.clip(np.round(w64 / s), -levels, levels) * s - w64) ** 2).sum(axis=1))
            ratio[rows] = _CLIP_RATIOS[np.argmin(np.stack(errs), axis=0)]
        clip = absmax * ratio
    else:
        clip = absmax
    return _round_to(moved, (clip / levels).astype(np.float32), w, bits, axis, levels)


def _round_to(moved: np.ndarray, scale: np.ndarray, w: np.ndarray, bits: int, axis: int | None,
              levels: int) -> QuantizedWeight:
    """Round the rows of ``moved`` (``w`` with its channel axis first) to ``scale``'s steps, within +-levels."""
    scale64 = scale.astype(np.float64)[:, None]
    q = np.empty(moved.shape, np.int8)
    for rows, cols in _slices(moved.shape):
        q[rows, cols] = np.clip(np.round(moved[rows, cols].astype(np.float64) / scale64[rows]), -levels, levels)
    if axis is None:
        return QuantizedWeight(q.reshape(w.shape), scale.reshape(()), bits, None, levels)
    q = np.moveaxis(q.reshape((w.shape[axis],) + tuple(np.delete(w.shape, axis))), 0, axis)
    return QuantizedWeight(q, scale, bits, axis, levels)


_CHUNK = 1 << 22  # elements per slice in quantize_weight


def _slices(shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    rows, cols = shape
    if rows == 1:
        return [(slice(0, 1), slice(c, c + _CHUNK)) for c in range(0, max(cols, 1), _CHUNK)]
    step = max(1, _CHUNK // max(cols, 1))
    return [(slice(r, r + step), slice(None)) for r in range(0, rows, step)]


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    scale = qw.scale if qw.axis is None else np.expand_dims(qw.scale, tuple(i for i in range(qw.q.ndim) if i != qw.axis))
    return (qw.q.astype(np.float32) * scale).astype(np.float32)


def activation_quant(calibration: Calibration, tensor: str, bits: int, clip: float | None = None) -> ActivationQuant:
    """The calibrated quantization of ``tensor`` at ``bits``; ``clip`` replaces the calibrated clip
    (one fine-tuning learned; the zero point stays the calibrated one)."""
    return ActivationQuant(bits, calibration.clip(tensor, bits) if clip is None else clip,
                           calibration.zero_point(tensor, bits))


REQUANT_BITS = 8


def input_sources(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """Layer name -> the earliest tensor its input QDQ can go on: the input itself, or what it
    is a reshaped copy of through reshapes that each have one reader.

    The export puts the QDQ there as well as on the layer's edge (QDQ is idempotent, so the
    numbers do not change): ONNX Runtime fuses an op into its integer form only with a
    QuantizeLinear right after it, and quantized only after a Flatten, a GlobalAveragePool
    stays float.
    """
    readers = tensor_readers(model)
    producer = tensor_producers(model)
    sources = {}
    for layer in layers:
        tensor = layer.input
        while (node := producer.get(tensor)) is not None and node.op_type in RESHAPES and node.input[0] in producer \
                and len(readers.get(tensor, [])) == 1 and len(readers.get(node.input[0], [])) == 1:
            tensor = node.input[0]
        sources[layer.name] = tensor
    return sources


def requantized_outputs(model: onnx.ModelProto, layers: list[Layer], policy: Policy) -> list[str]:
    """Tensors re-quantized to 8 bits after a layer whose weights and input are both quantized.

    An integer kernel writes integers: without a QuantizeLinear on its output, ONNX Runtime
    cannot run the layer as QLinearConv / QGemm and falls back to a float Conv on dequantized
    weights (measured 2.3x slower than ``quantize_static`` on the example before this). The
    output needs no extra step when its one reader leads to a quantized layer's input QDQ,
    which is that requantization.
    """
    readers = tensor_readers(model)
    sources = input_sources(model, layers)
    quantized_inputs = {sources[name] for name, bits in policy.items() if bits.a_bits is not None and name in sources}
    out = []
    for tensor in layer_outputs(model, [l for l in layers if _integer(policy, l.name)]).values():
        if not (len(readers.get(tensor, [])) == 1 and tensor in quantized_inputs):
            out.append(tensor)
    return list(dict.fromkeys(out))


def _integer(policy: Policy, layer: str) -> bool:
    return policy.get(layer, FP32).integer


WeightCache = dict[tuple[str, int, int, "int | None"], QuantizedWeight]


def handles(option: Option) -> bool:
    """Integer QDQ: per-channel (or per-tensor) integer weights and/or a calibrated integer input."""
    w, a = option.weight, option.activation
    return (w is None or (isinstance(w, IntFormat) and w.block is None)) \
        and (a is None or (isinstance(a, IntFormat) and not a.dynamic))


class LinearQuantize(Pass[onnx.ModelProto]):
    """Insert QDQ for every layer ``policy`` quantizes.

    Configuration is fixed at construction. ``cache`` (owned by the caller, one per set of
    weights) memoizes quantized weights per (weight, bits, axis) across policies, so a search
    quantizes each (layer, bits, levels) once. What fine-tuning trained under is used rather than chosen:
    ``weight_scales`` by weight name, ``input_clips`` by layer name (per layer: two layers reading
    one tensor may learn two clips). ``capabilities`` are the target's: they say which integer
    range each layer's kernel computes exactly. ``packed=False`` stores every weight in 8 bits: the same numbers,
    and ONNX Runtime runs 8-bit weights (only) as integer kernels, which is what an evaluation during
    the search wants.
    """

    def __init__(self, layers: list[Layer], calibration: Calibration, policy: Policy, *, per_channel: bool = True,
                 packed: bool = True, weight_scales: dict[str, np.ndarray] | None = None,
                 input_clips: dict[str, float] | None = None, cache: WeightCache | None = None,
                 capabilities: Capabilities = Capabilities()) -> None:
        for name, option in policy.items():
            if not handles(option):
                raise InputError(f"layer {name!r}: {option.name} is not an integer QDQ format; export mixed formats "
                                 "with haqc.passes.exporters.Export")
            for b in (option.w_bits, option.a_bits):
                if b is not None and b < LINEAR_MIN_BITS:
                    raise InputError(f"layer {name!r}: linear quantization needs >= {LINEAR_MIN_BITS} bits, got {b}")
        self.layers = layers
        self.calibration = calibration
        self.policy = policy
        self.per_channel = per_channel
        self.packed = packed
        self.weight_scales = weight_scales or {}
        self.input_clips = input_clips or {}
        self.cache = {} if cache is None else cache
        self.capabilities = capabilities

    def weight_quant(self, layer: Layer, array: np.ndarray, bits: int, levels: int) -> QuantizedWeight:
        """``layer``'s weights at ``bits`` within +-``levels`` as this pass quantizes them (cached
        unless a scale is imposed)."""
        axis = layer.weight_axis if self.per_channel else None
        scale = self.weight_scales.get(layer.weight)
        if scale is not None:
            return quantize_weight(array, bits, axis, scale, levels)
        key = (layer.weight, bits, levels, axis)
        if key not in self.cache:
            self.cache[key] = quantize_weight(array, bits, axis, levels=levels)
        return self.cache[key]

    def requires(self, model: onnx.ModelProto) -> None:
        inits = {t.name for t in model.graph.initializer}
        missing = [l.name for l in self.layers if l.weight not in inits]
        if missing:
            raise InputError(f"layer {missing[0]!r} has no constant weight; canonicalize the model first")

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        """Every quantization parameter the export of ``model`` uses (an analysis; ``model`` is unchanged)."""
        self.requires(model)
        inits = {t.name: t for t in model.graph.initializer}
        nodes = {n.name: n for n in model.graph.node}
        layers = {}
        for layer in self.layers:
            option = self.policy.get(layer.name, FP32)
            qw = qa = step = weights = None
            if option.w_bits is not None:
                weights = numpy_helper.to_array(inits[layer.weight])
                levels = self.capabilities.of(layer).weight_levels(option.w_bits, option.a_bits)
                qw = self.weight_quant(layer, weights, option.w_bits, levels)
            if option.a_bits is not None:
                qa = activation_quant(self.calibration, layer.input, option.a_bits, self.input_clips.get(layer.name))
            node = nodes[layer.name]
            if qw is not None and qa is not None and len(node.input) > 2 and node.input[2]:
                bias = numpy_helper.to_array(inits[node.input[2]])
                qw = fit_bias(qw, qa.scale, bias, weights)
                step = bias_scale(qa.scale, qw.scale)
            layers[layer.name] = LayerQuant(qw, qa, step)
        requantized = {t: activation_quant(self.calibration, t, REQUANT_BITS)
                       for t in requantized_outputs(model, self.layers, self.policy)}
        return ExportPlan(layers, requantized)

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        plan = self.plan(model)
        # The structure is copied without weights and only the initializers still used come
        # back: a full copy would hold every float weight once more (0.6 GB on vgg19).
        out = without_initializers(model)
        graph = out.graph
        inits = {t.name: t for t in model.graph.initializer}
        nodes_by_name = {n.name: n for n in graph.node}
        sources = input_sources(model, self.layers)
        build = GraphBuilder(model)
        activations = _Activations(model)
        before: dict[str, list[onnx.NodeProto]] = {}  # layer name -> nodes to put before it
        after: dict[str, list[onnx.NodeProto]] = {}  # tensor -> nodes to put after its producer
        renamed: dict[str, str] = {}  # tensor -> the name all its readers read instead
        for layer in self.layers:
            quant = plan.layers[layer.name]
            node = nodes_by_name[layer.name]
            emitted = before.setdefault(layer.name, [])
            if quant.weight is not None and LAYER_OPS[node.op_type].indexed:
                _gather_then_dequantize(build, node, layer, quant.weight, after)
            elif quant.weight is not None:
                dequantized = _dequantize_weight(build, layer, quant.weight, emitted, self.packed)
                node.input[list(node.input).index(layer.weight)] = dequantized
            if quant.activation is not None:
                # On this edge only: other readers of the input (a residual Add) see floats.
                qa, prefix, source = quant.activation, f"{layer.name}/a{quant.activation.bits}", sources[layer.name]
                node.input[list(node.input).index(layer.input)] = _fake_quant(build, qa, prefix, emitted, layer.input,
                                                                              activations)
                if source != layer.input:  # the same QDQ before the reshapes too (it is idempotent)
                    qdq = after.setdefault(source, [])
                    renamed[source] = _fake_quant(build, qa, f"{prefix}/source", qdq, source, activations)
            if quant.bias_scale is not None:
                bias = numpy_helper.to_array(inits[node.input[2]])
                node.input[2] = _dequantize_bias(build, layer, bias, quant.bias_scale, emitted)
        for tensor, qa in plan.requantized.items():
            renamed[tensor] = _fake_quant(build, qa, f"{tensor}/requant{REQUANT_BITS}", after.setdefault(tensor, []),
                                          tensor)
        nodes = []
        for node in graph.node:
            if node.name in activations.dropped:
                continue
            for n in (*before.get(node.name, ()), node):
                for i, name in enumerate(n.input):
                    n.input[i] = renamed.get(name, name)
                nodes.append(n)
            for tensor in node.output:
                nodes.extend(after.get(tensor, ()))
        with_nodes(model, out, nodes, build)
        _mark_int8_range(out, plan)
        return out


_PAIR_SUM_SAFE = OpCapability(reduced_range=True)


def _mark_int8_range(model: onnx.ModelProto, plan: ExportPlan) -> None:
    """Say in the model's metadata when an integer layer's weights pass what a pair-summing int16
    kernel computes exactly: such a model is right only on 32-bit accumulators (VNNI, ARM, the FPGAs),
    and a host without them evaluates it unfused (``haqc.evaluation.make_session``)."""
    full = any(q.weight is not None and q.activation is not None
               and q.weight.levels > _PAIR_SUM_SAFE.weight_levels(q.weight.bits, q.activation.bits)
               for q in plan.layers.values())
    kept = [p for p in model.metadata_props if p.key != INT8_RANGE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if full:
        model.metadata_props.add(key=INT8_RANGE_KEY, value="full")


def _fake_quant(build: GraphBuilder, qa: ActivationQuant, prefix: str, nodes: list, x: str,
                activations: "_Activations | None" = None) -> str:
    """Emit QuantizeLinear -> [integer Clip] -> DequantizeLinear of ``x``; returns the dequantized name.
    With ``activations``, an unsigned low-bit QDQ quantizes the input of a Relu / Clip it makes redundant."""
    lo, hi = qa.codes
    scale = build.const(f"{prefix}/scale", np.array(qa.scale, np.float32))
    zero_point = build.const(f"{prefix}/zero_point", np.array(qa.zero_point, np.uint8))
    if activations is not None and qa.bits < 8 and not qa.signed:
        x = activations.bypass(x, hi * qa.scale)
    q = build.node("QuantizeLinear", [x, scale, zero_point], f"{prefix}/q", name=f"{prefix}/Quantize")
    nodes.append(q)
    if qa.bits < 8:  # the 8-bit container's range alone would allow more levels: clamp the codes
        bounds = [build.const(f"{prefix}/{k}", np.array(qa.zero_point + v, np.uint8)) for k, v in (("lo", lo), ("hi", hi))]
        q = build.node("Clip", [q.output[0], *bounds], f"{prefix}/clipped", name=f"{prefix}/Clip")
        nodes.append(q)
    dq = build.node("DequantizeLinear", [q.output[0], scale, zero_point], f"{prefix}/dq", name=f"{prefix}/Dequantize")
    nodes.append(dq)
    return dq.output[0]


def bias_scale(activation_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """The int32 bias step: activation scale x weight scale, in float32 (as integer kernels use)."""
    return (np.float32(activation_scale) * weight_scale.astype(np.float32)).astype(np.float32)


# The largest int32 bias, in steps: half the int32 range, the other half left to the products' sum.
BIAS_STEPS = 2**30


def fit_bias(qw: QuantizedWeight, activation_scale: float, bias: np.ndarray, weights: np.ndarray) -> QuantizedWeight:
    """``qw`` with each channel's scale widened where the int32 bias would need more than BIAS_STEPS
    steps of activation scale x weight scale (as ONNX Runtime's quantizer widens it): a dead channel
    (ppocrv4_det: weights ~1e-16, bias -0.32) wrapped around int32 and wrote a wrong bias."""
    need = np.abs(bias.astype(np.float64)) / (float(activation_scale) * BIAS_STEPS)
    scale = qw.scale.astype(np.float64)
    if scale.size == 1:  # one scale for the tensor: the channel that needs most
        need = need.max(initial=0.0)
    if np.all(scale >= need):
        return qw
    return quantize_weight(weights, qw.bits, qw.axis, np.maximum(scale, need).astype(np.float32), qw.levels)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Bias as int32 multiples of ``scale``: what an integer accumulator adds."""
    return np.round(bias.astype(np.float64) / scale.astype(np.float64)).astype(np.int32)


def _dequantize_bias(build: GraphBuilder, layer: Layer, bias: np.ndarray, scale: np.ndarray, nodes: list) -> str:
    """Store the bias as int32 with scale s_a * s_w, as integer hardware (and ORT's QDQ fusion) does.

    Leaving it float would let ONNX Runtime requantize it on load with that same
    step anyway, so the float model haqc simulates would not be the one that runs.
    """
    prefix = f"{layer.name}/bias"
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    inputs = [build.const(f"{prefix}/q", quantize_bias(bias, scale)), build.const(f"{prefix}/scale", scale),
              build.const(f"{prefix}/zero_point", np.zeros(bias.shape, np.int32))]
    dq = build.node("DequantizeLinear", inputs, f"{prefix}/dq", name=f"{prefix}/Dequantize", axis=0)
    nodes.append(dq)
    return dq.output[0]


class _Activations:
    """The Relu / Clip nodes a low-bit QDQ makes redundant, found while the QDQs are emitted.

    The clamp to the b-bit codes comes after QuantizeLinear, so quantizing the activation's
    input instead gives the same codes and lets the producing Conv run as an integer kernel;
    ONNX Runtime itself folds such a Clip only into an 8-bit QuantizeLinear.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.readers = tensor_readers(model)
        self.producer = tensor_producers(model)
        self.constants = {t.name: t for t in model.graph.initializer}
        self.dropped: set[str] = set()

    def bypass(self, tensor: str, top: float) -> str:
        """The input of the Relu / Clip writing ``tensor`` (now dropped) when the QDQ about to read
        ``tensor`` is its one reader and it leaves [0, top] unchanged; else ``tensor``."""
        act = self.producer.get(tensor)
        if act is None or len(self.readers.get(tensor, [])) != 1 or not _passes_unchanged(act, self.constants, top):
            return tensor
        self.dropped.add(act.name)
        return act.input[0]


def _passes_unchanged(act: onnx.NodeProto, constants: dict[str, TensorProto], top: float) -> bool:
    """Whether ``act`` leaves every value in [0, top] as it is and maps the rest outside it."""
    if act.op_type == "Relu":
        return True
    if act.op_type != "Clip" or any(b and b not in constants for b in act.input[1:]):
        return False
    bounds = [float(numpy_helper.to_array(constants[b])) if b else None for b in act.input[1:3]]
    low, high = (bounds + [None, None])[:2]
    return (low is None or low <= 0.0) and (high is None or high >= top)


def container_type(bits: int) -> int:
    """The smallest signed ONNX integer type holding a symmetric b-bit value."""
    return TensorProto.INT2 if bits <= 2 else TensorProto.INT4 if bits <= 4 else TensorProto.INT8


def pack_signed(values: np.ndarray, bits_per_value: int) -> bytes:
    """Pack int8 values two's-complement into 2- or 4-bit fields, first value in the low bits."""
    per_byte = 8 // bits_per_value
    flat = (values.ravel().astype(np.int16) & ((1 << bits_per_value) - 1)).astype(np.uint8)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % per_byte, np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte) * bits_per_value).astype(np.uint8)
    return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8).tobytes()


def _int_tensor(name: str, values: np.ndarray, data_type: int) -> TensorProto:
    if data_type == TensorProto.INT8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    tensor = TensorProto(name=name, data_type=data_type, dims=list(values.shape))
    tensor.raw_data = pack_signed(values, 2 if data_type == TensorProto.INT2 else 4)
    return tensor


def _gather_then_dequantize(build: GraphBuilder, node: onnx.NodeProto, layer: Layer, qw: QuantizedWeight,
                            after: dict[str, list[onnx.NodeProto]]) -> None:
    """An embedding lookup on int8 rows: Gather the codes and the rows' scales, then scale them.

    Dequantizing the table first would run over every row at every inference (ONNX Runtime does
    not fold DequantizeLinear: 18.7 of 75 ms on a BERT-base-width encoder); gathering first
    touches only the rows read. Int8 containers, whatever the width: Gather takes no INT4."""
    prefix = f"{layer.weight}/w{qw.bits}"
    facts = LAYER_OPS[node.op_type]
    indices, result = node.input[facts.activation], node.output[0]
    node.input[facts.weight] = build.const(f"{prefix}/q", qw.q.astype(np.int8))
    node.output[0] = build.fresh(f"{prefix}/rows")
    cast = build.node("Cast", [node.output[0]], f"{prefix}/float", name=f"{layer.name}/Cast", to=TensorProto.FLOAT)
    if qw.axis is None:  # one scale for the table
        scales = [], build.const(f"{prefix}/scale", qw.scale.astype(np.float32))
    else:
        gathered = build.node("Gather", [build.const(f"{prefix}/scale", qw.scale.reshape(-1, 1).astype(np.float32)),
                                         indices], f"{prefix}/row_scale", name=f"{layer.name}/scales")
        scales = [gathered], gathered.output[0]
    scaled = onnx.helper.make_node("Mul", [cast.output[0], scales[1]], [result], name=f"{layer.name}/Scale")
    after[node.output[0]] = [*scales[0], cast, scaled]


def _dequantize_weight(build: GraphBuilder, layer: Layer, qw: QuantizedWeight, nodes: list, packed: bool = True) -> str:
    """Emit the stored integer weight and its dequantization; returns the float weight's name.

    INT2 weights are dequantized by Cast + Mul instead of DequantizeLinear:
    ONNX Runtime 1.32 fuses DequantizeLinear(int2) -> Conv -> QuantizeLinear
    into a QLinearConv that rejects int2 and fails to load the model. Cast +
    Mul computes the same q * scale (the zero point is 0) and ORT folds it.
    """
    prefix = f"{layer.weight}/w{qw.bits}"
    data_type = container_type(qw.bits) if packed else TensorProto.INT8
    q = build.const(f"{prefix}/q", _int_tensor(f"{prefix}/q", qw.q, data_type))
    name = f"{layer.name}/w{qw.bits}/Dequantize"
    if data_type == TensorProto.INT2:
        shape = [1] * qw.q.ndim
        if qw.axis is not None:
            shape[qw.axis] = -1
        scale = build.const(f"{prefix}/scale", qw.scale.reshape(shape) if qw.axis is not None else qw.scale)
        cast = build.node("Cast", [q], f"{prefix}/float", name=f"{name}/Cast", to=TensorProto.FLOAT)
        mul = build.node("Mul", [cast.output[0], scale], f"{prefix}/dq", name=f"{name}/Mul")
        nodes.extend([cast, mul])
        return mul.output[0]
    scale = build.const(f"{prefix}/scale", qw.scale)
    zero_point = build.const(f"{prefix}/zero_point", _int_tensor(f"{prefix}/zero_point", np.zeros(qw.scale.shape, np.int8),
                                                                 data_type))
    attrs = {} if qw.axis is None else {"axis": qw.axis}
    dq = build.node("DequantizeLinear", [q, scale, zero_point], f"{prefix}/dq", name=name, **attrs)
    nodes.append(dq)
    return dq.output[0]


def _build(context: ExportContext, policy: Policy) -> LinearQuantize:
    if context.calibration is None and any(o.a_bits is not None for o in policy.values()):
        raise InputError("the policy quantizes activations, which needs calibration data; pass `calib_data`")
    return LinearQuantize(context.layers, context.calibration, policy, per_channel=context.per_channel,
                          packed=context.packed, weight_scales=context.weight_scales, input_clips=context.input_clips,
                          cache=context.cache("qdq"), capabilities=context.capabilities)


register(Exporter("qdq", handles, _build))
