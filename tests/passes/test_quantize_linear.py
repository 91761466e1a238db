"""Linear QDQ export: per-bitwidth parity with a numpy reference, storage types, validity."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import run_ort
from haqc.errors import InputError
from haqc.passes.calibrate import calibrate
from haqc.passes.canonicalize import canonicalize
from haqc.passes.extract import extract_layers
from haqc.passes.quantize_linear import (
    LinearQuantize,
    bias_scale,
    container_type,
    dequantize,
    input_sources,
    quantize_bias,
    quantize_weight,
    requantized_outputs,
)
from haqc.capabilities import Capabilities, OpCapability
from haqc.hw_targets import load_target
from haqc.finetune import build_simulation
from haqc.policy import uniform_policy
from haqc.precision import Option
from haqc.quantizer import QuantizeOptions, Quantizer

RNG = np.random.default_rng(0)


def _tiny_conv(relu_input: bool):
    """x -> [Relu] -> Conv(3->4, 3x3, bias) -> y; returns canonical model and its layers."""
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu_input else []
    nodes.append(helper.make_node("Conv", ["r" if relu_input else "x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv"))
    inits = [
        numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, extract_layers(model).layers


def _reference(model, layer, calibration, x, w_bits, a_bits):
    """numpy fake-quant + torch conv in float64: what the exported QDQ model must compute."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qw = quantize_weight(inits[layer.weight], w_bits, axis=0, levels=OpCapability().weight_levels(w_bits, a_bits))
    w = dequantize(qw).astype(np.float64)
    xin = np.maximum(x, 0) if layer.input == "r" else x
    c, zero = calibration.clip(layer.input, a_bits), calibration.zero_point(layer.input, a_bits)
    levels = 2**a_bits - 1 - zero  # steps above zero; ``zero`` steps below it
    s = np.float32(c / levels)
    lo = -zero
    xq = np.clip(np.round(np.clip(xin, lo * s, levels * s) / s), lo, levels) * s
    bias = inits[[n for n in model.graph.node if n.name == layer.name][0].input[2]]
    step = bias_scale(float(s), qw.scale)
    bias = quantize_bias(bias, step) * step.astype(np.float64)  # int32 bias in steps of s_a * s_w
    y = torch.nn.functional.conv2d(torch.from_numpy(xq.astype(np.float64)), torch.from_numpy(w), torch.from_numpy(bias.astype(np.float64)), padding=1)
    return y.numpy()


@pytest.mark.parametrize("relu_input", [True, False], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_bitwidth_matches_numpy_reference(bits, relu_input):
    model, layers = _tiny_conv(relu_input)
    x = RNG.standard_normal((16, 3, 6, 6)).astype(np.float32) * 2
    calibration = calibrate(model, layers, [{"x": x}], method="kl")
    q = LinearQuantize(layers, calibration, {"conv": Option(bits, bits)})(model)
    onnx.checker.check_model(q, full_check=True)
    got = run_ort(q, {"x": x})[0]
    want = _reference(model, layers[0], calibration, x, bits, bits)
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.abs(want).max())
    # Activations really take at most 2^b values (odd widths included).
    act = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and "/a" in n.name][0]
    probe = onnx.ModelProto()
    probe.CopyFrom(q)
    probe.graph.output.append(onnx.ValueInfoProto(name=act.input[0]))
    # Codes are uint8 in [0, 2^b - 1] around the zero point (ORT's integer kernels need one type).
    zero_point = int(numpy_helper.to_array({t.name: t for t in q.graph.initializer}[act.input[2]]))
    assert zero_point == calibration.zero_point(layers[0].input, bits) and (zero_point == 0) == relu_input
    codes = run_ort(probe, {"x": x})[1].astype(np.int64)
    assert len(np.unique(codes)) <= 2**bits
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_weights_stored_packed_in_smallest_type(bits):
    model, layers = _tiny_conv(True)
    calibration = calibrate(model, layers, [{"x": RNG.standard_normal((4, 3, 6, 6)).astype(np.float32)}])
    q = LinearQuantize(layers, calibration, {"conv": Option(bits, 7)})(model)
    stored = [t for t in q.graph.initializer if t.name.endswith(f"/w{bits}/q")][0]
    assert stored.data_type == container_type(bits)
    container_bits = {TensorProto.INT2: 2, TensorProto.INT4: 4, TensorProto.INT8: 8}[stored.data_type]
    assert len(stored.raw_data) == int(np.ceil(108 * container_bits / 8))
    values = numpy_helper.to_array(stored).astype(int)
    assert values.min() >= -(2 ** (bits - 1) - 1) and values.max() <= 2 ** (bits - 1) - 1
    assert "w" not in {t.name for t in q.graph.initializer}, "the float weight must be gone"


REDUCED = Capabilities.uniform(OpCapability(reduced_range=True), "a kernel that adds pairs in int16")


@pytest.mark.parametrize(("relu_input", "option", "levels"), [
    (True, Option(8, 8), 64), (False, Option(8, 8), 64),  # 8-bit input codes, unsigned or signed
    (True, Option(8, 7), 127), (False, Option(8, 4), 127), (True, Option(8, None), 127),
    (False, Option(7, 8), 63), (True, Option(4, 8), 7)])
def test_weights_that_could_saturate_a_reduced_range_kernel_use_a_reduced_range(relu_input, option, levels):
    """On a target whose kernel adds pairs of u8 x s8 products in int16 (x86 without VNNI), 8-bit
    weights under 8-bit input codes take codes within +-64 (2 * 255 * 64 <= 32767), stored int8;
    every other option keeps its full symmetric range, and so does every option on a full-range target."""
    model, layers = _tiny_conv(relu_input)
    calibration = calibrate(model, layers, [{"x": RNG.standard_normal((4, 3, 6, 6)).astype(np.float32)}])
    for capabilities, want in ((REDUCED, levels), (Capabilities(), 2 ** (option.w_bits - 1) - 1)):
        q = LinearQuantize(layers, calibration, {"conv": option}, capabilities=capabilities)(model)
        inits = {t.name: t for t in q.graph.initializer}
        dq = next(n for n in q.graph.node if n.name == f"conv/w{option.w_bits}/Dequantize")
        stored = inits[dq.input[0]]
        assert stored.data_type == container_type(option.w_bits)
        planned = LinearQuantize(layers, calibration, {"conv": option}, capabilities=capabilities).plan(model)
        planned = planned.layers["conv"].weight
        assert planned.levels == want == capabilities.of(layers[0]).weight_levels(option.w_bits, option.a_bits)
        codes = numpy_helper.to_array(stored).astype(int)
        np.testing.assert_array_equal(codes, planned.q)
        assert np.abs(codes).max() == want  # the largest weight of some channel reaches the top code


def test_w8a8_layers_at_the_top_of_both_ranges_run_exactly_on_this_cpu():
    """Inputs at the top code times 8-bit weights of one sign: the pair sums vpmaddubsw would clamp
    to int16 on x86 without VNNI if the weights used all of int8 (2 * 255 * 127 > 32767). With the
    range ort-cpu derives from this CPU (+-64 without VNNI, full int8 with VNNI or ARM's dot product),
    ONNX Runtime's u8s8 integer kernels (QLinearConv, QGemm) match the simulation."""
    model, layers = _residual_model()
    for t in model.graph.initializer:
        if t.name.startswith("w"):
            t.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(t)) + 0.5, t.name))
    x = np.abs(RNG.standard_normal((2, 3, 8, 8))).astype(np.float32) + 2.0
    calibration = calibrate(model, layers, [{"x": x}])
    w8a8 = {layer.name: Option(8, 8) for layer in layers}
    capabilities = load_target("ort-cpu").capabilities()
    quantize = LinearQuantize(layers, calibration, w8a8, capabilities=capabilities)
    simulated = build_simulation(model, layers, quantize.plan(model)).module(x=torch.from_numpy(x))
    np.testing.assert_allclose(run_ort(quantize(model), {"x": x})[0], simulated.detach().numpy(), rtol=1e-5, atol=1e-5)
    if not capabilities.reduced_range:  # the full range is used where it is exact
        assert max(w.levels for w in (l.weight for l in quantize.plan(model).layers.values())) == 127


def test_float_layers_are_untouched_and_input_unmodified():
    model, layers = _tiny_conv(True)
    before = model.SerializeToString()
    x = RNG.standard_normal((4, 3, 6, 6)).astype(np.float32)
    calibration = calibrate(model, layers, [{"x": x}])
    q = LinearQuantize(layers, calibration, {"conv": Option(None, None)})(model)
    assert model.SerializeToString() == before
    assert np.array_equal(run_ort(q, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_per_tensor_option_and_weight_cache():
    model, layers = _tiny_conv(True)
    calibration = calibrate(model, layers, [{"x": RNG.standard_normal((4, 3, 6, 6)).astype(np.float32)}])
    cache = {}
    per_tensor = LinearQuantize(layers, calibration, {"conv": Option(4, 8)}, per_channel=False, cache=cache)
    q = per_tensor(model)
    scale = [t for t in q.graph.initializer if t.name.endswith("/w4/scale")][0]
    assert list(scale.dims) == []
    per_tensor(model)
    assert len(cache) == 1


def test_one_bit_rejected():
    model, layers = _tiny_conv(True)
    calibration = calibrate(model, layers, [{"x": np.ones((1, 3, 6, 6), np.float32)}])
    with pytest.raises(InputError, match=">= 2 bits"):
        LinearQuantize(layers, calibration, {"conv": Option(1, 8)})


def test_weight_quantizer_reduces_error_with_bits():
    w = RNG.standard_normal((8, 16, 3, 3)).astype(np.float32)
    errs = [np.mean((dequantize(quantize_weight(w, b, 0)) - w) ** 2) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_two_bit_weights_before_a_quantized_output_load_in_ort():
    """ORT 1.32 fuses DQ(int2) -> Conv -> Q into an invalid QLinearConv; the export must avoid it."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    layers = extract_layers(model).layers
    x = np.abs(RNG.standard_normal((1, 3, 6, 6))).astype(np.float32)
    calibration = calibrate(model, layers, [{"x": x}])
    q = LinearQuantize(layers, calibration, {"c1": Option(2, 8), "c2": Option(8, 8)})(model)
    onnx.checker.check_model(q, full_check=True)
    stored = [t for t in q.graph.initializer if t.name.endswith("/w2/q")][0]
    assert stored.data_type == TensorProto.INT2
    assert run_ort(q, {"x": x})[0].shape == (1, 2, 6, 6)


def _residual_model():
    """x -> c1 -> Relu -> r; r -> c2 -> a2; Add(a2, r) -> GlobalAveragePool -> Flatten -> fc -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["a2"], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Add", ["a2", "r"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    inits = [numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w1", (4, 3, 3, 3)), ("b1", (4,)), ("w2", (4, 4, 3, 3)), ("b2", (4,)), ("w3", (5, 4)), ("b3", (5,)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, extract_layers(model).layers


def test_integer_layers_get_their_outputs_requantized_and_match_the_simulation():
    """A layer with quantized weights and input writes 8-bit integers wherever its output is not
    just the next layer's quantized input; the torch simulation does the same, to the bit."""
    model, layers = _residual_model()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    calibration = calibrate(model, layers, [{"x": x}])
    w8a8 = {layer.name: Option(8, 8) for layer in layers}
    # r feeds c2 and the Add, a2 feeds the Add; the classifier's output is the model's and stays float.
    assert requantized_outputs(model, layers, w8a8) == ["r", "a2"]
    assert requantized_outputs(model, layers, {**w8a8, "c2": Option(None, 8)}) == ["r"]
    # The classifier's input QDQ goes before the Flatten too, so the pooling runs in integers.
    assert input_sources(model, layers)["fc"] == "g"
    for policy in (w8a8, {**w8a8, "c1": Option(4, 5)}, {**w8a8, "fc": Option(8, None)}):
        q = LinearQuantize(layers, calibration, policy)(model)
        onnx.checker.check_model(q, full_check=True)
        simulated = build_simulation(model, layers, LinearQuantize(layers, calibration, policy).plan(model)).module(x=torch.from_numpy(x))
        np.testing.assert_allclose(run_ort(q, {"x": x})[0], simulated.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_w8a8_example_runs_as_integer_kernels(example, tmp_path):
    """ONNX Runtime turns every layer of the example's w8a8 export into an integer kernel
    (QLinearConv / QGemm): no float Conv or Gemm, as with ORT's own quantize_static."""
    prepared = example["prepared"]
    quantized = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions()).export(
        uniform_policy(prepared.layers, Option(8, 8)))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    layer_ops = Counter(layer.op for layer in prepared.layers)
    assert not {"Conv", "FusedConv", "Gemm"} & set(ops), ops
    assert ops["QLinearConv"] == layer_ops["Conv"] and ops["QGemm"] == layer_ops["Gemm"]


@pytest.mark.parametrize(("low", "folded"), [(0.0, True), ("relu", True), (0.5, False), (None, False)])
def test_activation_before_a_low_bit_input_is_folded_only_when_it_changes_nothing(low, folded):
    """x -> Clip(low, 6) or Relu -> conv at a4: quantizing the activation's input instead gives
    the same codes when it passes [0, c] unchanged (the 4-bit clamp after QuantizeLinear does the
    rest). Clip(0.5, 6) changes small values; without a lower bound the input is signed."""
    if low == "relu":
        act = helper.make_node("Relu", ["x"], ["r"], name="clip")
    else:
        act = helper.make_node("Clip", ["x", "low" if low is not None else "", "high"], ["r"], name="clip")
    nodes = [act, helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(6.0, np.float32), "high")]
    if isinstance(low, float):
        inits.append(numpy_helper.from_array(np.array(low, np.float32), "low"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 4])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    layers = extract_layers(model).layers
    x = (RNG.standard_normal((2, 3, 6, 6)) * 4).astype(np.float32)
    calibration = calibrate(model, layers, [{"x": x}])
    policy = {"conv": Option(8, 4)}
    q = LinearQuantize(layers, calibration, policy)(model)
    assert ("clip" not in {n.name for n in q.graph.node}) == folded
    simulated = build_simulation(model, layers, LinearQuantize(layers, calibration, policy).plan(model)).module(x=torch.from_numpy(x))
    np.testing.assert_allclose(run_ort(q, {"x": x})[0], simulated.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [(2, 8), (4, 4), (3, 5)])
def test_unpacked_export_computes_the_same_as_integer_kernels(example, tmp_path, bits):
    """The search's unpacked export (INT8 weights) gives the packed export's outputs and runs
    every layer as an ONNX Runtime integer kernel, where INT4 / INT2 weights stay float."""
    prepared, val = example["prepared"], example["val"]
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    policy = uniform_policy(prepared.layers, Option(*bits))
    packed, unpacked = quantizer.export(policy), quantizer.export(policy, packed=False)
    feeds = {prepared.model.graph.input[0].name: val.inputs[next(iter(val.inputs))][:64]}
    a, b = run_ort(packed, feeds)[0], run_ort(unpacked, feeds)[0]
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.98
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(unpacked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert not {"Conv", "FusedConv", "Gemm"} & set(ops), ops


def test_a_dead_channel_keeps_its_bias_within_int32():
    """ppocrv4_det has channels whose weights are ~1e-16 and whose bias is not: at step activation
    scale x weight scale that bias needed more than 2^31 steps and wrapped around int32. The channel's
    weight scale widens (as ONNX Runtime's quantizer does) so the bias is written as it is."""
    import warnings

    import haqc

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    w[1] *= 1e-16
    bias = np.array([0.1, -0.32, 0.2], np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "dead",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": rng.standard_normal((8, 2, 4, 4)).astype(np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        quantized = haqc.quantize(model, bits="w8a8", calib_data=x).model
    out, ref = run_ort(quantized, x)[0], run_ort(model, x)[0]
    np.testing.assert_allclose(out[:, 1], ref[:, 1], atol=1e-3)  # the dead channel: its bias, everywhere
    assert np.max(np.abs(out - ref)) < 0.05 * np.max(np.abs(ref))
