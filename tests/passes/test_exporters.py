"""Exporters: every format, any mix in one graph, run by ONNX Runtime as the torch simulation computes it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_rel, run_ort
from haqc.capabilities import Capabilities
from haqc.errors import InputError
from haqc.finetune import build_simulation
from haqc.passes.calibrate import calibrate
from haqc.passes.canonicalize import canonicalize
from haqc.passes.exporters import Export, ExportContext, exporter_for, exporters
from haqc.passes.extract import extract_layers
from haqc.passes.quantize_nbits import quantize_blocks
from haqc.policy import load_policy, policy_to_json, policy_from_json
from haqc.precision import FP32, FloatFormat, IntFormat, KMeansFormat, Option, parse_option

RNG = np.random.default_rng(0)


def _mixed_model():
    """x [N,3,8,8] -> Conv -> Relu -> Conv -> Relu -> GAP -> Flatten -> Gemm -> Relu -> MatMul -> Gemm(transB)."""
    w = lambda *shape: numpy_helper.from_array((RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), None)  # noqa: E731
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(16, 8, 3, 3), "w3": w(16, 48), "b3": w(48), "w4": w(48, 64),
             "w5": w(10, 64), "b5": w(10)}
    for name, t in inits.items():
        t.name = name
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("MatMul", ["rh", "w4"], ["m"], name="proj"),
        helper.make_node("Gemm", ["m", "w5", "b5"], ["y"], transB=1, name="head"),
    ]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], list(inits.values()))
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, extract_layers(model).layers


MIXED = {"conv1": "kmeans3", "conv2": "w4a8", "fc1": "int8-dynamic", "proj": "w4-block32", "head": "fp16"}


def _export(model, layers, policy, x):
    context = ExportContext(layers, calibrate(model, layers, [{"x": x}]))
    export = Export(context, policy)
    return export(model), export.plan(model)


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "w4a8", "wfa8", "w4-weight-only", "w4-block32", "w8-block64",
                                  "int8-dynamic", "w4a8-dynamic", "kmeans3"])
def test_option_names_read_back(name):
    option = parse_option(name)
    assert option.name == name and parse_option(option.name) == option


@pytest.mark.parametrize(("weight", "activation", "match"), [
    (IntFormat(4, block=32), IntFormat(8), "weight-only"),
    (KMeansFormat(3), IntFormat(8), "codebooks run as float weights"),
    (FloatFormat("fp16"), None, "same format"),
    (None, IntFormat(8, dynamic=True), "integer format"),
])
def test_combinations_no_kernel_runs_are_refused(weight, activation, match):
    with pytest.raises(InputError, match=match):
        Option(weight, activation)
    with pytest.raises(InputError, match="power of two"):
        IntFormat(4, block=24)


def test_each_option_has_one_exporter():
    names = {o: exporter_for(parse_option(o)).name for o in ("w4a8", "kmeans3", "w4-block32", "int8-dynamic", "fp16")}
    assert names == {"w4a8": "qdq", "kmeans3": "kmeans", "w4-block32": "nbits", "int8-dynamic": "dynamic",
                     "fp16": "float16"}
    assert [e.name for e in exporters()][:5] == ["qdq", "kmeans", "nbits", "dynamic", "float16"]


def test_a_policy_mixing_every_format_runs_as_simulated():
    """k-means, static int8, dynamic int8, MatMulNBits and fp16 layers in one graph: ORT computes what
    the torch simulation of the merged plan computes, and each exporter's nodes are there."""
    model, layers = _mixed_model()
    x = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)
    policy = {name: parse_option(o) for name, o in MIXED.items()}
    before = model.SerializeToString()
    exported, plan = _export(model, layers, policy, x)
    assert model.SerializeToString() == before
    onnx.checker.check_model(exported)
    ops = {n.op_type for n in exported.graph.node}
    assert {"MatMulNBits", "DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear", "Gather", "Cast"} <= ops
    halves = [t for t in exported.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert {t.name.split("/")[0] for t in halves} == {"w5", "b5"}
    simulated = build_simulation(model, layers, plan).module.eval()
    with torch.no_grad():
        want = simulated(x=torch.from_numpy(x)).numpy()
    assert_close_rel(run_ort(exported, {"x": x})[0], want, rel=2e-3)
    # Leaving every layer float gives the model back, numerically.
    fp32, _ = _export(model, layers, {name: FP32 for name in MIXED}, x)
    np.testing.assert_allclose(run_ort(fp32, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_nbits_computes_the_planned_blocks(bits):
    model, layers = _mixed_model()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    policy = {"proj": Option(IntFormat(bits, block=16)), "head": Option(IntFormat(bits, block=32))}
    exported, plan = _export(model, layers, policy, x)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for layer, weight in (("proj", "w4"), ("head", "w5")):
        qw = plan.layers[layer].weight
        expanded = np.repeat(qw.scale, qw.block, axis=qw.reduction_axis)[tuple(slice(0, d) for d in qw.q.shape)]
        relative_mse = np.mean((qw.q * expanded - inits[weight]) ** 2) / np.var(inits[weight])
        assert relative_mse < {4: 0.02, 8: 1e-4}[bits]
        codes = qw.q + np.repeat(qw.zero_point, qw.block, axis=qw.reduction_axis)[tuple(slice(0, d) for d in qw.q.shape)]
        assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    simulated = build_simulation(model, layers, plan).module.eval()
    with torch.no_grad():
        want = simulated(x=torch.from_numpy(x)).numpy()
    assert_close_rel(run_ort(exported, {"x": x})[0], want, rel=1e-5)


def test_block_quantization_is_no_worse_than_min_max():
    """The per-block range search includes plain min/max (what matmul_nbits_quantizer uses)."""
    w = RNG.standard_normal((128, 24)).astype(np.float32) ** 3
    qw = quantize_blocks(w, 4, 32, 0)
    blocks = w.reshape(4, 32, 24)
    lo, hi = np.minimum(blocks.min(1), 0), np.maximum(blocks.max(1), 0)
    s = (hi - lo) / 15
    z = np.clip(np.round(-lo / s), 0, 15)
    minmax = ((np.clip(np.round(blocks / s[:, None]) + z[:, None], 0, 15) - z[:, None]) * s[:, None]).reshape(128, 24)
    ours = qw.q * np.repeat(qw.scale, 32, axis=0)
    assert ((ours - w) ** 2).sum() <= ((minmax - w) ** 2).sum()


def test_formats_that_need_a_matmul_name_the_layer():
    model, layers = _mixed_model()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    for option in ("w4-block32", "int8-dynamic"):
        with pytest.raises(InputError, match="layer 'conv1' \\(Conv\\) cannot run as"):
            _export(model, layers, {"conv1": parse_option(option)}, x)


def test_dynamic_int8_weights_take_the_targets_range():
    from tests.passes.test_quantize_linear import REDUCED

    model, layers = _mixed_model()
    policy = {"fc1": parse_option("int8-dynamic")}
    for capabilities, levels in ((Capabilities(), 127), (REDUCED, 64)):
        plan = Export(ExportContext(layers, capabilities=capabilities), policy).plan(model)
        assert plan.layers["fc1"].weight.levels == levels == np.abs(plan.layers["fc1"].weight.q).max()


def test_policies_store_option_names_and_old_files_read_back(tmp_path):
    model, layers = _mixed_model()
    policy = {l.name: parse_option(MIXED[l.name]) for l in layers}
    assert policy_from_json(policy_to_json(policy), layers) == policy
    # A report written before options had names, by a k-means search: widths only, a global method.
    old = tmp_path / "old.json"
    old.write_text('{"search": {"method": "kmeans"}, "policy": [' + ", ".join(
        f'{{"layer": "{l.name}", "w_bits": 3, "a_bits": null}}' for l in layers) + "]}")
    assert set(load_policy(old, layers).values()) == {Option(KMeansFormat(3))}


def test_a_toy_format_added_by_one_file_and_a_registry_entry_exports_and_finetunes(example):
    """docs/extending.md's recipe: tests/passes/toy_ternary.py alone adds a format; its option name
    reads back, it mixes with the built-in formats, ONNX Runtime runs it as simulated, it fine-tunes."""
    from tests.passes.toy_ternary import TERNARY

    from haqc.finetune import FinetuneConfig
    from haqc.quantizer import QuantizeOptions, Quantizer

    assert parse_option("ternary") == TERNARY and exporter_for(TERNARY).name == "ternary"
    prepared = example["prepared"]
    layers = prepared.layers
    policy = {l.name: TERNARY if 0 < i < len(layers) - 1 and l.kind != "depthwise" else parse_option("w8a8")
              for i, l in enumerate(layers)}
    assert policy_from_json(policy_to_json(policy), layers) == policy
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    exported = quantizer.export(policy)
    ternary = [t for t in exported.graph.initializer if t.name.endswith("/ternary")]
    assert ternary and all(set(np.unique(numpy_helper.to_array(t))) <= {-1, 0, 1} for t in ternary)
    val = example["val"].subset(200, seed=0)
    x = val.inputs[prepared.input_names[0]]
    simulated = quantizer.simulate(policy).module.eval()
    with torch.no_grad():
        want = simulated(**{prepared.input_names[0]: torch.from_numpy(x)}).numpy()
    # 24 layers deep, a float rounding difference flips a code now and then: compare predictions.
    assert np.mean(run_ort(exported, {prepared.input_names[0]: x})[0].argmax(1) == want.argmax(1)) >= 0.99
    train = example["train"].subset(128, seed=0)
    tuned = quantizer.finetune(policy, train.inputs, train.labels, FinetuneConfig(epochs=1, lr=1e-3, holdout=0.0))
    assert {t.name for t in tuned.graph.initializer if t.name.endswith("/ternary")} == {t.name for t in ternary}


def _embedding_model():
    """ids [N, 6] -> Gather(table [50, 16]) -> MatMul(16 -> 8): an embedding lookup as a layer."""
    table = numpy_helper.from_array(RNG.standard_normal((50, 16)).astype(np.float32), "table")
    w = numpy_helper.from_array(RNG.standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8])], [table, w])
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, extract_layers(model).layers


def test_embedding_tables_are_gathered_as_int8_rows_then_scaled():
    """A per-row int8 table is gathered before it is scaled: only the rows read are dequantized
    (ONNX Runtime would dequantize a whole table on every run otherwise); a uniform integer option
    gives an embedding int8 rows, and the lookup's indices are never quantized."""
    from haqc.policy import uniform_policy

    model, layers = _embedding_model()
    assert [l.kind for l in layers] == ["embedding", "matmul"] and layers[0].input == "ids"
    policy = uniform_policy(layers, parse_option("w4a8"))
    assert policy == {"embed": Option(8, None), "proj": Option(4, 8)}
    ids = RNG.integers(0, 50, (3, 6)).astype(np.int64)
    context = ExportContext(layers, calibrate(model, layers, [{"ids": ids}]))
    exported = Export(context, policy)(model)
    table = next(t for t in exported.graph.initializer if t.name.startswith("table"))
    assert table.data_type == TensorProto.INT8
    reader = next(n for n in exported.graph.node if table.name in n.input)
    assert reader.op_type == "Gather"  # the int8 table is read by the lookup, not dequantized whole
    simulated = build_simulation(model, layers, Export(context, policy).plan(model)).module.eval()
    with torch.no_grad():
        want = simulated(ids=torch.from_numpy(ids)).numpy()
    assert_close_rel(run_ort(exported, {"ids": ids})[0], want, rel=1e-4)
    with pytest.raises(InputError, match="embedding lookup"):
        Export(context, {"embed": Option(8, 8)})


def _unrolled(steps: int = 20, width: int = 256) -> tuple[onnx.ModelProto, list]:
    """x [N, width] through ``steps`` MatMul + Tanh that all read one weight (an RNN cell unrolled over
    time, as torch exports an LSTM's time steps)."""
    w = numpy_helper.from_array((RNG.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w")
    nodes, x = [], "x"
    for t in range(steps):
        nodes += [helper.make_node("MatMul", [x, "w"], [f"m{t}"], name=f"step{t}"),
                  helper.make_node("Tanh", [f"m{t}"], [f"h{t}"])]
        x = f"h{t}"
    graph = helper.make_graph(nodes, "unrolled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], [w])
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, extract_layers(model).layers


@pytest.mark.parametrize("option", ["w8a8", "w4a8", "int8-dynamic", "w4-block32", "fp16", "kmeans3"])
def test_a_weight_that_layers_share_is_stored_once(option, monkeypatch):
    """captcha-whisperer's CRNN unrolls its LSTM over 20 steps, all reading one weight: each step was
    quantized to the same integers and stored apart, so w8a8 came out 3.6x the size of the fp32 file.
    Equal constants are stored once, every step reads them, and the model computes what it did."""
    import haqc.passes.exporters as exporters_module

    model, layers = _unrolled()
    x = RNG.standard_normal((4, 256)).astype(np.float32)
    before = model.SerializeToString()
    policy = {l.name: parse_option(option) for l in layers}
    out, _ = _export(model, layers, policy, x)
    assert model.SerializeToString() == before  # the input is not touched
    assert len(out.SerializeToString()) < (0.6 if option == "fp16" else 0.35) * len(before)
    monkeypatch.setattr(exporters_module, "store_equal_constants_once", lambda m: m)
    apart, _ = _export(model, layers, policy, x)
    if option != "kmeans3":  # what it wrote before (k-means stored one codebook per weight already)
        assert len(apart.SerializeToString()) > 2 * len(before)
    # equal up to float rounding (ONNX Runtime runs a shared float16 weight through another kernel path)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], run_ort(apart, {"x": x})[0], rtol=0, atol=1e-5)


def test_equal_constants_that_are_graph_inputs_keep_their_names():
    """An initializer listed as a graph input may be fed by the caller, so it is not merged away."""
    from haqc.passes.base import store_equal_constants_once

    w = (RNG.standard_normal((32, 32))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "a"], ["m"]), helper.make_node("MatMul", ["m", "b"], ["y"]),
         helper.make_node("MatMul", ["y", "c"], ["z"])], "equal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w, n) for n in ("a", "b", "c")])
    model = store_equal_constants_once(helper.make_model(graph))
    assert sorted(t.name for t in model.graph.initializer) == ["a", "b"]
    assert [n.input[1] for n in model.graph.node] == ["a", "b", "a"]
