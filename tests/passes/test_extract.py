"""Extract: layer records, shapes, MACs, HAQ state, on inline graphs and the real models."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import EXAMPLE, LIGHT_MODELS, light_params, light_path
from haqc.errors import InputError
from haqc.layers import STATE_FEATURES
from haqc.passes.canonicalize import canonicalize
from haqc.passes.base import layer_outputs
from haqc.passes.extract import extract_layers, normalized_state
from haqc.pipeline import prepare


def _w(name, shape):
    return numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), name)


def _extract(nodes, inits, x_shape, extra_inputs=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return extract_layers(canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))


def test_conv_depthwise_fc_records():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Conv", ["a", "w2"], ["b"], group=8, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Conv", ["b", "w3"], ["c"], group=2, name="grouped"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w4"], ["y"], transB=1, name="fc"),
    ]
    inits = [_w("w1", (8, 3, 3, 3)), _w("w2", (8, 1, 3, 3)), _w("w3", (16, 4, 1, 1)), _w("w4", (10, 16))]
    layers = _extract(nodes, inits, ["N", 3, 16, 16]).layers
    assert [l.name for l in layers] == ["stem", "dw", "grouped", "fc"]
    assert [l.kind for l in layers] == ["conv", "depthwise", "conv", "fc"]
    stem, dw, grouped, fc = layers
    assert (stem.c_in, stem.c_out, stem.kernel, stem.stride, stem.feature_size, stem.out_feature_size) == (
        3, 8, (3, 3), (2, 2), 256, 64)
    assert stem.macs == 64 * 8 * 27 and stem.params == 216
    assert (dw.groups, dw.reduction, dw.macs, dw.params) == (8, 9, 64 * 8 * 9, 72)
    assert (grouped.groups, grouped.reduction, grouped.macs) == (2, 4, 64 * 16 * 4)
    assert (fc.c_in, fc.c_out, fc.rows, fc.macs, fc.feature_size) == (16, 10, 1, 160, 1)
    assert [l.index for l in layers] == [0, 1, 2, 3]


def test_conv_transpose_and_matmul():
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1"], ["a"], strides=[2, 2], name="up"),
        helper.make_node("Reshape", ["a", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="proj"),
        helper.make_node("MatMul", ["m", "z"], ["y"], name="dynamic"),  # no constant operand
    ]
    shape = numpy_helper.from_array(np.array([1, 16, 16], np.int64), "shape")
    inits = [_w("w1", (4, 2, 2, 2)), shape, _w("w2", (16, 5))]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5, 3])
    layers = _extract(nodes, inits, [1, 4, 4, 4], extra_inputs=[z]).layers
    up, proj = layers
    assert (up.kind, up.c_in, up.c_out, up.macs) == ("conv", 4, 2, 16 * 4 * 4 * 2)
    assert (proj.kind, proj.c_in, proj.c_out, proj.rows, proj.macs) == ("matmul", 16, 5, 16, 16 * 16 * 5)


def test_no_quantizable_layer_names_the_non_constant_weights():
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1])
    with pytest.raises(InputError, match="no quantizable layer.*non-constant weights: conv"):
        _extract([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [], [1, 3, 4, 4], extra_inputs=[w])
    with pytest.raises(InputError, match="no quantizable layer"):
        _extract([helper.make_node("Relu", ["x"], ["y"])], [], [1, 3])


def test_state_normalization_keeps_constant_columns():
    raw = np.array([[0, 3, 1], [1, 3, 5], [2, 3, 3]], dtype=float)

    class L:
        def __init__(self, row):
            self.state = list(row)

    state = normalized_state([L(r) for r in raw])
    assert np.allclose(state[:, 0], [0, 0.5, 1]) and np.allclose(state[:, 1], 3) and np.allclose(state[:, 2], [0, 1, 0.5])


def test_dataflow_graph_is_topological():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["b"], name="c2"),
        helper.make_node("Add", ["b", "r"], ["y"], name="add"),
    ]
    ex = _extract(nodes, [_w("w1", (4, 3, 1, 1)), _w("w2", (4, 4, 1, 1))], [1, 3, 4, 4])
    import networkx as nx

    order = list(nx.topological_sort(ex.graph))
    assert order.index("c1") < order.index("c2") < order.index("add")
    assert ex.graph.nodes["c2"]["layer"] == 1 and ex.graph.nodes["relu"]["layer"] is None
    assert ex.state_matrix.shape == (2, len(STATE_FEATURES))


@pytest.mark.parametrize("name", light_params())
def test_light_model_layer_counts(name):
    prepared = prepare(light_path(name))
    assert len(prepared.layers) == LIGHT_MODELS[name]
    assert len({l.name for l in prepared.layers}) == len(prepared.layers)
    assert all(l.macs > 0 and l.params > 0 for l in prepared.layers)


def test_example_has_at_least_15_layers_with_depthwise():
    if not EXAMPLE.exists():
        pytest.skip("example model not built")
    layers = prepare(EXAMPLE).layers
    assert len(layers) >= 15
    assert any(l.kind == "depthwise" for l in layers)


def test_layer_outputs_follow_single_reader_activations():
    """The tensor an integer kernel writes: after Relu / Clip chains with one reader each, not past
    a tensor read twice, and never a graph output."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a1"], name="c1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Clip", ["r1"], ["r2"]),
        helper.make_node("Conv", ["r2", "w2"], ["a2"], name="c2"),
        helper.make_node("Relu", ["a2"], ["r3"]),
        helper.make_node("Add", ["r3", "a2"], ["s"]),
        helper.make_node("Conv", ["s", "w3"], ["y"], name="c3"),
    ]
    model = canonicalize(helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_w("w1", (2, 2, 1, 1)), _w("w2", (2, 2, 1, 1)), _w("w3", (2, 2, 1, 1))]),
        opset_imports=[helper.make_opsetid("", 17)]))
    layers = extract_layers(model).layers
    assert layer_outputs(model, layers) == {"c1": "r2", "c2": "a2"}


def test_attention_block_projections_are_layers_the_rest_is_listed_float():
    """A weight reached through a Transpose of an initializer is folded into a constant: a layer. The
    attention product of two activations, the softmax and the layer norm stay float, with reasons."""
    nodes = [
        helper.make_node("Transpose", ["wq"], ["wq_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wq_t"], ["q"], name="q_proj"),
        helper.make_node("Transpose", ["q"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "q"], ["ctx"], name="context"),
        helper.make_node("LayerNormalization", ["ctx", "gamma"], ["y"], name="norm"),
    ]
    inits = [_w("wq", (8, 8)), _w("gamma", (8,))]
    extraction = _extract(nodes, inits, [1, 5, 8])
    (layer,) = extraction.layers
    assert (layer.name, layer.kind, layer.c_in, layer.c_out, layer.rows) == ("q_proj", "matmul", 8, 8, 5)
    kept = {f.name: (f.op, f.reason) for f in extraction.kept_float}
    assert set(kept) == {"scores", "softmax", "context", "norm"}
    assert "activations" in kept["scores"][1] and "normalization" in kept["norm"][1]


@pytest.mark.parametrize("time_major", [False, True])
def test_a_matmul_counts_every_row_of_a_sample_wherever_its_batch_is(time_major):
    """A time-major [steps, batch, features] input (captcha-whisperer's CTC head) was costed as one row."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2] if time_major else [0, 1, 2]),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="head")]
    (layer,) = _extract(nodes, [_w("w", (200, 37))], [1, 20, 200]).layers
    assert (layer.rows, layer.macs, layer.input_elems, layer.output_elems) == (20, 20 * 200 * 37, 20 * 200, 20 * 37)


def test_a_matmul_over_flattened_tokens_counts_them():
    """[batch * steps, features] (an old-opset CTC head's canonical form) holds steps rows per sample."""
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="head")]
    flat = numpy_helper.from_array(np.array([-1, 200], np.int64), "flat")
    (layer,) = _extract(nodes, [_w("w", (200, 37)), flat], [1, 20, 200]).layers
    assert (layer.rows, layer.macs) == (20, 20 * 200 * 37)
