"""Layer subgraphs for measured targets: each layer alone computes what it computes in the model,
and at w8a8 it is the export's own QDQ, which ONNX Runtime fuses into an integer kernel."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from haqc.passes.isolate import LayerSubgraphs
from haqc.pipeline import prepare
from haqc.precision import FP32, Option
from tests.conftest import run_ort

RNG = np.random.default_rng(0)


def _two_convs() -> onnx.ModelProto:
    """x -> Conv(3->8, 3x3) -> Relu -> Conv(8->8, 3x3) -> y, twice the same second geometry."""
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("w3", (8, 8, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, name="conv2"),
             helper.make_node("Conv", ["c2", "w3"], ["y"], pads=[1] * 4, name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_a_float_layer_alone_computes_what_it_computes_in_the_model():
    prepared = prepare(_two_convs())
    subgraphs = LayerSubgraphs(prepared.model, prepared.layers)
    x = RNG.standard_normal((2, 3, 10, 10)).astype(np.float32)
    alone = subgraphs.layer(prepared.layers[0], FP32, batch=2)
    assert [d.dim_value for d in alone.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 10, 10]
    want = run_ort(prepared.model, {"x": x})  # the first layer's output, through the rest of the model
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared.model)
    probe.graph.output.append(onnx.ValueInfoProto(name="c1"))
    np.testing.assert_allclose(run_ort(alone, {"x": x})[0], run_ort(probe, {"x": x})[1], rtol=1e-5, atol=1e-5)
    assert want[0].shape == (2, 8, 10, 10)


def test_w8a8_layer_alone_is_the_exports_qdq_fused_into_an_integer_kernel(tmp_path):
    prepared = prepare(_two_convs())
    subgraphs = LayerSubgraphs(prepared.model, prepared.layers)
    alone = subgraphs.layer(prepared.layers[1], Option(8, 8))
    ops = [n.op_type for n in alone.graph.node]
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(ops)
    fused = _fused_ops(alone, tmp_path)
    assert "QLinearConv" in fused and "Conv" not in fused, fused


def test_geometry_keys_share_measurements_between_layers_of_one_shape():
    prepared = prepare(_two_convs())
    subgraphs = LayerSubgraphs(prepared.model, prepared.layers)
    conv1, conv2, conv3 = prepared.layers
    assert subgraphs.geometry(conv2, 1) == subgraphs.geometry(conv3, 1)  # same shapes, other weights
    assert subgraphs.geometry(conv1, 1) != subgraphs.geometry(conv2, 1)
    assert subgraphs.geometry(conv2, 1) != subgraphs.geometry(conv2, 4)


def test_whole_model_feeds_and_variants_run():
    prepared = prepare(_two_convs())
    subgraphs = LayerSubgraphs(prepared.model, prepared.layers)
    feeds = subgraphs.feeds(batch=3)
    assert feeds["x"].shape == (3, 3, 10, 10) and feeds["x"].dtype == np.float32
    assert subgraphs.whole(FP32) is prepared.model
    int8 = subgraphs.whole(Option(8, 8), batch=3)
    out = run_ort(int8, feeds)[0]
    assert out.shape == (3, 8, 10, 10) and np.isfinite(out).all()


def test_chains_are_layers_whose_integer_output_feeds_the_next_kernel_directly():
    prepared = prepare(_two_convs())
    subgraphs = LayerSubgraphs(prepared.model, prepared.layers)
    assert subgraphs.chains() == [(0, 1), (1, 2)]  # through the ReLU, and directly
    conversion = subgraphs.conversion(prepared.layers[1], batch=2)
    assert [n.op_type for n in conversion.graph.node] == ["QuantizeLinear", "DequantizeLinear"]
    x = RNG.standard_normal((2, 8, 10, 10)).astype(np.float32)
    assert run_ort(conversion, {prepared.layers[1].input: x})[0].shape == x.shape
