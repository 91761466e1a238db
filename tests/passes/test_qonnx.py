"""QONNX export: haqc's QDQ exports as Quant nodes, run by qonnx's executor against ONNX Runtime.

Tolerances: the Quant nodes compute what the QDQ computes in the same float32 arithmetic
(x / s rounded half to even and clamped to the same codes; weights are DequantizeLinear's own
products (q - z) * s), and qonnx's executor runs the other nodes in ONNX Runtime one at a time,
except that qonnx's float32 reference adds a non-zero zero point before rounding (x / s + z), so a
value within float32 precision of a tie can take the neighbouring code; where activations have such
zero points (8-bit ranges are min-max) the comparison runs Quant in ONNX Runtime's order,
round(x / s) + z (``_onnx_runtime_rounding``), the same integers;
so against ONNX Runtime without graph optimizations (the QDQ run as written, unfused) the
outputs agree to float rounding: 1e-6 of the output's scale. One flipped activation code would
move them by a step, 1e-3 of the scale or more here. The fused integer kernels ONNX Runtime runs by
default round their requantization differently in the last bit, so they are compared at 1e-5
(test_quantize_linear's tolerance for those kernels against the torch simulation).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general import intquant
from qonnx.transformation.change_batchsize import ChangeBatchSize
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

from conftest import assert_close_rel, run_ort
from haqc.errors import InputError
from haqc.passes.calibrate import calibrate
from haqc.passes.canonicalize import canonicalize
from haqc.passes.extract import extract_layers
from haqc.passes.qonnx import BIAS_BITS, QONNX_DOMAIN, ToQONNX
from haqc.passes.quantize_linear import REQUANT_BITS, LinearQuantize
from haqc.precision import Option
from haqc.quantizer import QuantizeOptions, Quantizer

RNG = np.random.default_rng(0)
# w8a8 on a signed input, w4a6 and w2a3 after a Relu (which the low-bit QDQ drops), a weight-only
# Gemm and a w6a5 MatMul on a signed input.
POLICY = {"c1": Option(8, 8), "c2": Option(4, 6), "c3": Option(2, 3), "fc": Option(5, None), "fc2": Option(6, 5)}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "Clip", "Cast", "Mul"}


@pytest.fixture(scope="module")
def tiny():
    """x -> c1 -> Relu -> c2 -> Relu -> c3 -> GlobalAveragePool -> Flatten -> fc (Gemm) -> fc2 (MatMul) -> y,
    with a dynamic batch; canonical model, layers, calibration and inputs."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["a2"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["a3"], name="c3"),
        helper.make_node("GlobalAveragePool", ["a3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["h"], transB=1, name="fc"),
        helper.make_node("MatMul", ["h", "w5"], ["y"], name="fc2"),
    ]
    shapes = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "w3": (4, 8, 1, 1), "b3": (4,),
              "w4": (6, 4), "b4": (6,), "w5": (6, 3)}
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    layers = extract_layers(model).layers
    x = RNG.standard_normal((8, 3, 8, 8)).astype(np.float32)
    return model, layers, calibrate(model, layers, [{"x": x}]), x


def _qonnx_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """qonnx's executor needs every shape fixed: the batch is set to ``x``'s, then shapes inferred."""
    wrapped = ModelWrapper(model.SerializeToString()).transform(ChangeBatchSize(len(x))).transform(InferShapes())
    return execute_onnx(wrapped, {wrapped.graph.input[0].name: x})[wrapped.graph.output[0].name]


def _unfused(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


def _assert_same(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-6) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * max(1.0, float(np.abs(expected).max())))


def _quant_of(model: onnx.ModelProto, tensor: str) -> tuple[onnx.NodeProto, dict] | None:
    """The Quant node writing ``tensor`` and its bitwidth, signed and narrow (None when none writes it)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next((n for n in model.graph.node if tensor in n.output and n.op_type == "Quant"), None)
    if node is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return node, {"bits": float(inits[node.input[3]]), "zero_point": float(inits[node.input[2]]),
                  "signed": attrs["signed"], "narrow": attrs["narrow"]}


def _assert_policy_bits(qonnx: onnx.ModelProto, layers, calibration, policy) -> None:
    """Each layer's weight Quant has its w_bits (signed, narrow), its input Quant its a_bits (signed
    exactly for the calibrated symmetric zero point, and then with zero point 0; else the calibrated
    zero point), its bias 32 bits."""
    nodes = {n.name: n for n in qonnx.graph.node}
    for layer in layers:
        option, node = policy[layer.name], nodes[layer.name]
        _, weight = _quant_of(qonnx, node.input[1])
        assert (weight["bits"], weight["signed"], weight["narrow"], weight["zero_point"]) == (option.w_bits, 1, 1, 0)
        activation = _quant_of(qonnx, node.input[0])
        if option.a_bits is None:  # float input, or the previous integer layer's 8-bit requantized output
            assert activation is None or activation[1]["bits"] == REQUANT_BITS
            assert len(node.input) < 3 or _quant_of(qonnx, node.input[2]) is None, "a weight-only bias stays float"
            continue
        zero = calibration.zero_point(layer.input, option.a_bits)
        signed = zero == 2 ** (option.a_bits - 1)
        assert activation[1] == {"bits": option.a_bits, "zero_point": 0.0 if signed else float(zero),
                                 "signed": int(signed), "narrow": 0}
        if len(node.input) > 2:
            bias = _quant_of(qonnx, node.input[2])[1]
            assert (bias["bits"], bias["signed"], bias["narrow"]) == (BIAS_BITS, 1, 0)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_mixed_policy_runs_in_qonnx_as_in_onnx_runtime(tiny, packed):
    model, layers, calibration, x = tiny
    qdq = LinearQuantize(layers, calibration, POLICY, packed=packed)(model)
    before = qdq.SerializeToString()
    qonnx = ToQONNX(POLICY)(qdq)
    assert qdq.SerializeToString() == before, "the QDQ model must not be modified"
    # Only the QDQ went: the other nodes, in order, and the interface (dynamic batch included) are the same.
    assert [n for n in qonnx.graph.node if n.op_type != "Quant"] == [n for n in qdq.graph.node if n.op_type not in QDQ_OPS]
    assert list(qonnx.graph.input) == list(qdq.graph.input) and list(qonnx.graph.output) == list(qdq.graph.output)
    assert qonnx.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {n.domain for n in qonnx.graph.node if n.op_type == "Quant"} == {QONNX_DOMAIN}
    assert QONNX_DOMAIN in {o.domain for o in qonnx.opset_import}
    assert all(t.data_type == TensorProto.FLOAT for t in qonnx.graph.initializer), "no integer codes left"
    _assert_policy_bits(qonnx, layers, calibration, POLICY)
    # Without the policy, haqc's node names give the same widths (the unpacked w4 / w2 weights are INT8).
    assert ToQONNX()(qdq) == qonnx

    y = _qonnx_run(qonnx, x)
    _assert_same(y, _unfused(qdq, x))
    assert_close_rel(y, run_ort(qdq, {"x": x})[0], rel=1e-5)
    # qonnx's cleanup (shape inference, constant folding outside the Quant nodes, renaming) keeps them.
    cleaned = cleanup_model(ModelWrapper(qonnx.SerializeToString()), override_inpsize=len(x))
    assert sum(n.op_type == "Quant" for n in cleaned.graph.node) == sum(n.op_type == "Quant" for n in qonnx.graph.node)
    _assert_same(execute_onnx(cleaned, {cleaned.graph.input[0].name: x})[cleaned.graph.output[0].name], y)


def _onnx_runtime_rounding(monkeypatch) -> None:
    """qonnx's Quant computed as ONNX Runtime's QuantizeLinear computes it: x / s rounded, then the
    zero point added (qonnx adds it before rounding, in float32, which moves values within float32
    precision of a tie to the other code: 33.499996 + 134 is 167.5 in float32, so 34 instead of 33)."""
    def quant(x, scale, zeropt, bitwidth, signed, narrow, rounding_mode):
        codes = np.clip(intquant.resolve_rounding_mode(rounding_mode)(x / scale) + zeropt,
                        intquant.min_int(signed, narrow, bitwidth), intquant.max_int(signed, narrow, bitwidth))
        return (codes - zeropt) * scale

    monkeypatch.setattr(intquant, "int_quant", quant)


def test_example_mixed_policy_runs_in_qonnx_as_in_onnx_runtime(example, monkeypatch):
    """The bundled example (depthwise and grouped convolutions, residual adds) under a mixed policy;
    its 8-bit activations have min-max zero points (see the module docstring)."""
    _onnx_runtime_rounding(monkeypatch)
    prepared = example["prepared"]
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    options = [Option(8, 8), Option(4, 6), Option(2, 3), Option(5, None), Option(6, 5)]
    policy = {layer.name: options[i % len(options)] for i, layer in enumerate(prepared.layers)}
    qdq = quantizer.export(policy)
    qonnx = ToQONNX(policy)(qdq)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in qonnx.graph.node}
    assert all(t.data_type == TensorProto.FLOAT for t in qonnx.graph.initializer if t.name not in
               {i.name for i in prepared.model.graph.initializer}), "no integer codes left"
    _assert_policy_bits(qonnx, prepared.layers, quantizer.calibration, policy)
    x = example["val"].inputs[next(iter(example["val"].inputs))][:16]
    _assert_same(_qonnx_run(qonnx, x), _unfused(qdq, x))


def test_float_model_passes_through_unchanged(tiny):
    model, layers, calibration, _ = tiny
    assert ToQONNX()(model) == model
    fp32 = LinearQuantize(layers, calibration, {name: Option() for name in POLICY})(model)
    assert ToQONNX()(fp32) == fp32


def test_policy_that_does_not_match_the_export_is_rejected(tiny):
    model, layers, calibration, _ = tiny
    qdq = LinearQuantize(layers, calibration, POLICY)(model)
    with pytest.raises(InputError, match="c1.*`policy`'s 2 bits"):
        ToQONNX({**POLICY, "c1": Option(2, 8)})(qdq)


@pytest.mark.parametrize(("zero_point", "clip", "bits", "quant_zero_point"), [
    (14, None, 8, 14.0),  # a short negative side (hard-swish): the zero point stays
    (3, (0, 31), 5, 3.0),
    (16, (0, 31), 5, 0.0),  # symmetric: signed, zero point 0
    (8, (2, 9), 3, 6.0),  # codes 2..9 around 8: relative -6..1, an unsigned 3-bit range from 6 below zero
])
def test_activation_zero_points_and_clips_map_onto_the_quant_range(zero_point, clip, bits, quant_zero_point):
    """QuantizeLinear -> [Clip] -> DequantizeLinear built by hand: the Quant covers exactly the codes."""
    scale = np.array(0.05, np.float32)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.array(zero_point, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q")]
    if clip is not None:
        inits += [numpy_helper.from_array(np.array(v, np.uint8), k) for k, v in zip(("lo", "hi"), clip)]
        nodes.append(helper.make_node("Clip", ["q", "lo", "hi"], ["c"], name="clip"))
    nodes.append(helper.make_node("DequantizeLinear", [nodes[-1].output[0], "s", "z"], ["y"], name="a/Dequantize"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    qdq = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    qonnx = ToQONNX()(qdq)
    assert [n.op_type for n in qonnx.graph.node] == ["Quant"]
    assert [vi.name for vi in qonnx.graph.value_info] == []
    _, quant = _quant_of(qonnx, "y")
    assert (quant["bits"], quant["zero_point"], quant["signed"]) == (bits, quant_zero_point, int(quant_zero_point == 0))
    # Off the rounding ties (where QONNX, adding the zero point before rounding, may differ), exact.
    x = ((RNG.integers(-40, 300, (4, 64)) + RNG.uniform(-0.4, 0.4, (4, 64))) * scale).astype(np.float32)
    _assert_same(_qonnx_run(qonnx, x), run_ort(qdq, {"x": x})[0])


@pytest.mark.parametrize(("data_type", "zero_point", "bits"), [
    (TensorProto.UINT8, 128, 8),  # int8 codes offset by 128 (the u8u8 form of 8-bit weights)
    (TensorProto.INT8, 0, 8),
    (TensorProto.INT4, 0, 4),
])
def test_weight_codes_with_a_zero_point_and_a_channel_axis_become_float_weights(data_type, zero_point, bits):
    """x @ DequantizeLinear(w, s, z, axis=1): a MatMul's weight [in, out] has its channels on axis 1,
    where QONNX needs the scale shaped [1, out] to broadcast."""
    top = 2 ** (bits - 1) - 1
    codes = RNG.integers(-top, top + 1, (6, 5))
    scale = RNG.uniform(0.01, 0.1, 5).astype(np.float32)
    stored = codes + zero_point
    weight = numpy_helper.from_array(stored.astype(np.uint8 if data_type == TensorProto.UINT8 else np.int8), "w")
    if data_type == TensorProto.INT4:
        weight = helper.make_tensor("w", data_type, stored.shape, stored.ravel().tolist())
    inits = [weight, numpy_helper.from_array(scale, "s"),
             helper.make_tensor("z", data_type, [5], [zero_point] * 5)]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=1, name="fc/Dequantize"),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    qdq = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    qonnx = ToQONNX()(qdq)
    quant, found = _quant_of(qonnx, "wf")
    assert (found["bits"], found["signed"], found["zero_point"]) == (bits, 1, 0.0)
    values = {t.name: numpy_helper.to_array(t) for t in qonnx.graph.initializer}
    assert values[quant.input[1]].shape == (1, 5)
    np.testing.assert_array_equal(values[quant.input[0]], (codes * scale).astype(np.float32))
    # Unfused: ONNX Runtime's default session turns DequantizeLinear -> MatMul into MatMulNBits, which
    # quantizes x as well (off by 1e-2 here).
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    _assert_same(_qonnx_run(qonnx, x), _unfused(qdq, x))
