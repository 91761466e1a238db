"""QONNX export: haqc's QDQ model rewritten with QONNX ``Quant`` nodes, which FINN and hls4ml read.

QONNX's ``Quant(x, scale, zeropoint, bitwidth)`` (domain ``qonnx.custom_op.general``) computes
``(round(clamp(x / scale + zeropoint)) - zeropoint) * scale`` with the clamp to the b-bit range that
``signed`` and ``narrow`` select, numpy-broadcasting its parameters. qonnx's float32 reference
executor adds a non-zero zero point before rounding, where ONNX Runtime rounds x / scale first and
adds the zero point to the integer: the two give the same codes except for a value within float32
precision of a tie (33.499996 + 134 is 167.5 in float32). ``ToQONNX`` maps what ``LinearQuantize``
writes onto it:

- an activation's QuantizeLinear -> [integer Clip] -> DequantizeLinear becomes one Quant whose range
  is the Clip's codes (the container's without a Clip);
- a weight's DequantizeLinear of integer codes (INT8, INT4, INT2, UINT8 less its zero point 128,
  per tensor or per channel, and INT2's Cast + Mul) becomes the dequantized float weight read by a
  signed, narrow Quant of the layer's weight bit width, its scale shaped to broadcast;
- an int32 bias's DequantizeLinear becomes the float bias read by a signed 32-bit Quant, the form
  qonnx's own ``QCDQToQuant`` gives an int32 DequantizeLinear.

qonnx's ``QCDQToQuant`` (1.0.0) is not used: on haqc's exports it fails on per-channel weight
scales (it multiplies before reshaping them to broadcast) and on INT4 / INT2 codes, misses the Cast
+ Mul form, gives an unpacked w5 layer 8 bits and keeps uint8 zero points FINN rejects.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from haqc.errors import InputError
from haqc.passes.base import (GraphBuilder, Pass, copy_model, tensor_producers, tensor_readers, tensor_reads,
                              without_initializers)
from haqc.policy import Policy

logger = logging.getLogger(__name__)

QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_OPSET = 1
BIAS_BITS = 32  # an int32 bias is a signed 32-bit Quant, as in qonnx's QCDQToQuant

# Integer containers of codes: their bits and range (the container's width is the fallback weight width).
_CONTAINERS = {
    TensorProto.INT2: (2, -2, 1), TensorProto.INT4: (4, -8, 7), TensorProto.INT8: (8, -128, 127),
    TensorProto.UINT8: (8, 0, 255), TensorProto.INT32: (32, -2**31, 2**31 - 1),
}
# What haqc names a weight's dequantization: ``{layer}/w{bits}/Dequantize`` (INT2: ``.../Cast``, ``.../Mul``).
_WEIGHT_NAME = re.compile(r"/w(\d+)/Dequantize")


@dataclass(frozen=True)
class _Quant:
    """One Quant node to emit in place of ``replaces``, and the nodes it makes redundant."""

    x: str  # the quantized tensor (a graph tensor, or the name of ``codes``' initializer)
    scale: np.ndarray  # float32, shaped to broadcast against x
    zero_point: float
    bits: int
    signed: bool
    narrow: bool
    replaces: onnx.NodeProto  # its output becomes the Quant's
    removed: tuple[onnx.NodeProto, ...] = ()
    codes: np.ndarray | None = None  # the integers of a constant x (q - z), emitted as codes * scale


class ToQONNX(Pass[onnx.ModelProto]):
    """Rewrite a ``LinearQuantize`` export as QONNX; a model with nothing to convert comes back as is.

    ``policy`` (the one the model was exported with) gives each layer's weight bit width: codes
    alone cannot tell a w5 layer stored in INT8 from a w8 one. Without it (a model read from
    disk) the width is the one in haqc's node name ``{layer}/w{bits}/Dequantize``, else the
    container's. Either way the width is checked against the codes, so the Quant changes no
    value. Activation widths need no policy: the Clip bounds are the b-bit range.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = dict(policy or {})

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        readers, producer = tensor_readers(model), tensor_producers(model)
        outputs = {o.name for o in graph.output}
        quants = []
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                found = self._weight(node, inits, readers)
            elif node.op_type == "DequantizeLinear":
                found = _activation(node, inits, readers, producer, outputs)
            elif node.op_type == "Mul":
                found = self._cast_mul(node, inits, readers, producer, outputs)
            else:
                continue
            if found is not None:
                quants.append(found)
        if not quants:
            return copy_model(model)
        return _rewrite(model, quants)

    def _weight(self, dq: onnx.NodeProto, inits: dict[str, TensorProto],
                readers: dict[str, list[onnx.NodeProto]]) -> _Quant | None:
        """A DequantizeLinear of constant integer codes (a weight, or an int32 bias)."""
        q = inits[dq.input[0]]
        scale = _float_constant(inits, dq.input[1])
        if q.data_type not in _CONTAINERS or scale is None or _attr(dq, "block_size", 0):
            return None
        zero_name = dq.input[2] if len(dq.input) > 2 else ""
        if zero_name and zero_name not in inits:
            return None
        values = numpy_helper.to_array(q).astype(np.int64)
        zero_point = numpy_helper.to_array(inits[zero_name]).astype(np.int64) if zero_name else np.zeros((), np.int64)
        axis = _attr(dq, "axis", 1) % max(values.ndim, 1)
        codes = values - _along(zero_point, axis, values.ndim)
        scale = _along(scale, axis, values.ndim)
        if q.data_type == TensorProto.INT32:
            bits, narrow = BIAS_BITS, False
        else:
            found = self._weight_bits(dq, readers, q.data_type, codes)
            if found is None:
                return None
            bits, narrow = found
        return _Quant(q.name, scale, 0.0, bits, True, narrow, dq, codes=codes)

    def _cast_mul(self, mul: onnx.NodeProto, inits: dict[str, TensorProto],
                  readers: dict[str, list[onnx.NodeProto]], producer: dict[str, onnx.NodeProto],
                  outputs: set[str]) -> _Quant | None:
        """INT2 weights dequantized as Cast(codes) * scale (haqc's work-around of an ONNX Runtime fusion bug)."""
        for cast_out, scale_name in (mul.input, mul.input[::-1]):
            cast = producer.get(cast_out)
            scale = _float_constant(inits, scale_name)
            if cast is None or cast.op_type != "Cast" or scale is None or cast.input[0] not in inits:
                continue
            q = inits[cast.input[0]]
            if q.data_type not in _CONTAINERS or q.data_type == TensorProto.INT32 \
                    or _attr(cast, "to", None) != TensorProto.FLOAT or len(readers[cast_out]) != 1 or cast_out in outputs:
                continue
            codes = numpy_helper.to_array(q).astype(np.int64)
            if np.broadcast_shapes(codes.shape, scale.shape) != codes.shape:
                continue
            found = self._weight_bits(mul, readers, q.data_type, codes)
            if found is None:
                return None
            return _Quant(q.name, scale, 0.0, found[0], True, found[1], mul, (cast,), codes)
        return None

    def _weight_bits(self, node: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]], data_type: int,
                     codes: np.ndarray) -> tuple[int, bool] | None:
        """(bits, narrow) of the signed Quant that holds ``codes`` exactly: the policy's width for the
        layer reading ``node``'s output, else the one in haqc's name, else the container's."""
        layer = readers.get(node.output[0], [])
        option = self.policy.get(layer[0].name) if len(layer) == 1 else None
        if option is not None and option.w_bits is not None:
            narrow = _signed_fit(codes, option.w_bits)
            if narrow is None:
                raise InputError(f"layer {layer[0].name!r}: its weight codes do not fit the `policy`'s "
                                 f"{option.w_bits} bits; pass the policy the model was exported with")
            return option.w_bits, narrow
        named = _WEIGHT_NAME.search(node.name)
        for bits in ([int(named.group(1))] if named else []) + [_CONTAINERS[data_type][0]]:
            narrow = _signed_fit(codes, bits)
            if narrow is not None:
                return bits, narrow
        logger.warning("%s: codes %d..%d fit no signed Quant; left as is", node.name, codes.min(), codes.max())
        return None


def _activation(dq: onnx.NodeProto, inits: dict[str, TensorProto], readers: dict[str, list[onnx.NodeProto]],
                producer: dict[str, onnx.NodeProto], outputs: set[str]) -> _Quant | None:
    """QuantizeLinear -> [Clip] -> DequantizeLinear of one tensor, per tensor, as one Quant.

    The codes span [lo - z, hi - z] around zero (lo, hi: the Clip's bounds within the container's,
    z: the zero point), 2^b of them. Where that range starts at 0 the Quant is unsigned, where it
    starts at -2^(b-1) (haqc's symmetric signed inputs) signed, both with zero point 0: exactly
    QuantizeLinear's round-half-even of x / s and its clamp. Any other start (a short negative
    side: hard-swish, SiLU) needs the unsigned Quant's zero point z' = z - lo, which QONNX adds
    before rounding where QuantizeLinear adds it after: for an odd z' an exact tie x / s = k + 1/2
    rounds the other way, and x / s + z' is rounded to float32 once more. The zero point 0 forms,
    the only ones FINN and hls4ml take, are exact.
    """
    chain = [producer.get(dq.input[0])]
    if chain[0] is not None and chain[0].op_type == "Clip":
        chain.insert(0, producer.get(chain[0].input[0]))
    quant = chain[0]
    if quant is None or quant.op_type != "QuantizeLinear" or len(quant.input) < 3 or len(dq.input) < 3:
        return None
    if any(len(readers[n.output[0]]) != 1 or n.output[0] in outputs for n in chain):
        return None
    # One scale and one zero point, the same on both sides (haqc's per-tensor activations).
    scale, dq_scale = _float_constant(inits, quant.input[1]), _float_constant(inits, dq.input[1])
    z, dq_z = _int_constant(inits, quant.input[2]), _int_constant(inits, dq.input[2])
    if scale is None or dq_scale is None or scale.size != 1 or dq_scale.size != 1 \
            or scale.reshape(()) != dq_scale.reshape(()) or z is None or z != dq_z:
        return None
    _, lo, hi = _CONTAINERS[inits[quant.input[2]].data_type]
    if len(chain) == 2:
        bounds = [_int_constant(inits, name) for name in chain[1].input[1:3]]
        if len(bounds) != 2 or None in bounds:
            return None
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    levels = hi - lo + 1
    if levels < 2 or levels & (levels - 1):
        logger.warning("%s: %d codes are no b-bit range; left as is", dq.name, levels)
        return None
    bits = levels.bit_length() - 1
    start = lo - z
    signed = bits > 1 and start == -(levels // 2)  # a signed 1-bit Quant is bipolar (+-1) in QONNX
    zero_point = 0.0 if signed or start == 0 else float(-start)
    return _Quant(quant.input[0], scale.reshape(()), zero_point, bits, signed, False, dq, tuple(chain))


def _rewrite(model: onnx.ModelProto, quants: list[_Quant]) -> onnx.ModelProto:
    """``model`` with each of ``quants`` emitted in place of the node it replaces; the nodes, codes and
    parameters only those used are dropped (with the value infos of the tensors that are gone)."""
    graph = model.graph
    position = {id(n): i for i, n in enumerate(graph.node)}
    build = GraphBuilder(model)
    emitted: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for quant in quants:
        node = quant.replaces
        base = node.name.split("/Dequantize")[0] + "/Quant" if "/Dequantize" in node.name else f"{node.output[0]}/Quant"
        if quant.codes is None:
            x = quant.x
        else:  # the float weight is what the dequantization computed: (q - z) as float times the scale
            x = build.const(f"{quant.x}/float", (quant.codes.astype(np.float32) * quant.scale).astype(np.float32))
        inputs = [x, build.const(f"{base}/scale", quant.scale.astype(np.float32)),
                  build.const(f"{base}/zero_point", np.array(quant.zero_point, np.float32)),
                  build.const(f"{base}/bitwidth", np.array(quant.bits, np.float32))]
        emitted[position[id(node)]] = helper.make_node(
            "Quant", inputs, [node.output[0]], name=build.fresh(base), domain=QONNX_DOMAIN,
            signed=int(quant.signed), narrow=int(quant.narrow), rounding_mode="ROUND")
        removed.update(position[id(n)] for n in quant.removed)
    out = without_initializers(model)
    nodes = [emitted.get(i, n) for i, n in enumerate(out.graph.node) if i not in removed]
    gone = {t for i in (*removed, *emitted) for t in graph.node[i].input} - tensor_reads(nodes) - {o.name for o in graph.output}
    dead = {t for i in removed for t in graph.node[i].output} | gone
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend([t for t in graph.initializer if t.name not in gone] + build.initializers)
    kept = [vi for vi in out.graph.value_info if vi.name not in dead]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    if not any(o.domain == QONNX_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, QONNX_OPSET))
    logger.info("QONNX: %d Quant nodes", len(quants))
    return out


def _signed_fit(codes: np.ndarray, bits: int) -> bool | None:
    """Whether signed ``bits``-bit codes need the narrow range (None: they do not fit at all)."""
    top = 2 ** (bits - 1) - 1
    low, high = (int(codes.min()), int(codes.max())) if codes.size else (0, 0)
    if bits < 2 or high > top or low < -top - 1:
        return None
    return low >= -top


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-axis (1-D) DequantizeLinear parameter shaped to broadcast like QONNX's; scalars stay."""
    if values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _float_constant(inits: dict[str, TensorProto], name: str) -> np.ndarray | None:
    tensor = inits.get(name)
    return numpy_helper.to_array(tensor) if tensor is not None and tensor.data_type == TensorProto.FLOAT else None


def _int_constant(inits: dict[str, TensorProto], name: str) -> int | None:
    tensor = inits.get(name)
    if tensor is None or tensor.data_type not in (TensorProto.UINT8, TensorProto.INT8):
        return None
    value = numpy_helper.to_array(tensor)
    return int(value.reshape(())) if value.size == 1 else None


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
