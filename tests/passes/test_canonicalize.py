"""Canonicalize: opset conversion, constant/BN/affine folding, naming; numerics preserved."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_rel, light_params, light_path, randomize_constant_of_shape, run_ort
from haqc.errors import InputError
from haqc.passes.canonicalize import CANONICAL_OPSET, ConvertOpset, FoldConstants, ProbeShapes, canonicalize, opset_version
from haqc.passes.extract import extract_layers
from haqc.passes.load import load_model

RNG = np.random.default_rng(0)


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(nodes, inits, x_shape, y_shape, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check_preserved(model: onnx.ModelProto, x_shape) -> onnx.ModelProto:
    canon = canonicalize(model)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    assert_close_rel(run_ort(canon, {"x": x})[0], run_ort(model, {"x": x})[0])
    return canon


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_conv_batchnorm_mul_add_fold_into_conv():
    w = RNG.standard_normal((8, 4, 3, 3))
    bn = [RNG.uniform(0.5, 1.5, 8) for _ in range(4)]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("Mul", ["bn", "s"], ["mul"]),
        helper.make_node("Add", ["t", "mul"], ["add"]),  # constant on the left
        helper.make_node("Relu", ["add"], ["y"]),
    ]
    inits = [_const("w", w)] + [_const(n, a) for n, a in zip("gbmv", bn)]
    inits += [_const("s", RNG.uniform(0.5, 2, (8, 1, 1))), _const("t", RNG.standard_normal((1, 8, 1, 1)))]
    canon = _check_preserved(_model(nodes, inits, [2, 4, 6, 6], [2, 8, 6, 6]), (2, 4, 6, 6))
    assert _ops(canon) == ["Conv", "Relu"]


def test_gemm_batchnorm_fold_with_transposed_weight_and_beta():
    nodes = [
        helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, beta=0.5),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"]),
    ]
    inits = [_const("w", RNG.standard_normal((5, 3))), _const("c", RNG.standard_normal(5))]
    inits += [_const(n, RNG.uniform(0.5, 1.5, 5)) for n in "sbmv"]
    canon = _check_preserved(_model(nodes, inits, [4, 3], [4, 5]), (4, 3))
    assert _ops(canon) == ["Gemm"]


def test_mul_by_non_channel_constant_is_not_folded():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    inits = [_const("w", RNG.standard_normal((3, 2, 1, 1))), _const("s", RNG.standard_normal((1, 1, 4, 1)))]
    canon = _check_preserved(_model(nodes, inits, [1, 2, 4, 4], [1, 3, 4, 4]), (1, 2, 4, 4))
    assert _ops(canon) == ["Conv", "Mul"]


def test_shared_conv_output_is_not_folded():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["m"]),
        helper.make_node("Add", ["c", "m"], ["y"]),
    ]
    inits = [_const("w", RNG.standard_normal((3, 2, 1, 1))), _const("s", np.array(2.0))]
    canon = _check_preserved(_model(nodes, inits, [1, 2, 4, 4], [1, 3, 4, 4]), (1, 2, 4, 4))
    assert "Mul" in _ops(canon)


def test_weights_from_constant_nodes_become_initializers():
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([4, 3, 1, 1], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["w"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Conv", ["x", "w"], ["y"]),
    ]
    canon = _check_preserved(_model(nodes, [], [1, 3, 5, 5], [1, 4, 5, 5]), (1, 3, 5, 5))
    assert _ops(canon) == ["Conv"]
    assert canon.graph.node[0].input[1] in {t.name for t in canon.graph.initializer}


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 21, 25])
def test_opsets_convert_to_canonical(opset):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = _model(nodes, [_const("w", RNG.standard_normal((2, 3, 1, 1)))], [1, 3, 4, 4], [1, 2, 4, 4], opset)
    if opset < 9:  # IR 3: initializers must be listed as graph inputs
        model.ir_version = 3
        model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1]))
    canon = _check_preserved(load_model_from(model), (1, 3, 4, 4))
    assert opset_version(canon) == CANONICAL_OPSET


def load_model_from(model: onnx.ModelProto, tmp=None) -> onnx.ModelProto:
    """What load_model does to a file, minus the file: strip initializer inputs."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        onnx.save(model, path)
        return load_model(path)


def test_opset_below_7_is_rejected():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [], [1], [1], opset=6)
    with pytest.raises(InputError, match="opset 6"):
        ConvertOpset()(model)


def test_passes_do_not_modify_their_input():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    model = _model(nodes, [_const("w", np.ones((3, 2, 1, 1))), _const("s", np.array(2.0))], [1, 2, 4, 4], [1, 3, 4, 4])
    before = model.SerializeToString()
    canonicalize(model)
    FoldConstants()(model)
    assert model.SerializeToString() == before


def test_dynamic_batch_stays_dynamic():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    model = _model(nodes, [_const("w", RNG.standard_normal((2, 3, 1, 1)))], ["N", 3, 4, 4], ["N", 2, 4, 4])
    canon = canonicalize(model)
    for batch in (1, 5):
        x = RNG.standard_normal((batch, 3, 4, 4)).astype(np.float32)
        assert run_ort(canon, {"x": x})[0].shape == (batch, 2, 4, 4)


@pytest.mark.parametrize("name", light_params())
def test_light_models_preserve_numerics(name):
    raw = randomize_constant_of_shape(onnx.load(light_path(name)))
    canon = canonicalize(load_model_from(raw))
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feed = canon.graph.input[0].name
    expected = run_ort(raw, {feed: x})[0]
    assert np.std(expected) > 0, "the randomized model should not give a constant output"
    assert_close_rel(run_ort(canon, {feed: x})[0], expected)
    assert not [n for n in canon.graph.node if n.op_type in ("Constant", "ConstantOfShape")]


def test_if_subgraphs_reading_outer_tensors_survive_intact():
    """An If whose branches read an outer tensor its own inputs do not depend on: the graph is sorted
    with the branches' outer reads counted, stays valid, and computes what the original does."""
    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["c", "c"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "Add"), else_branch=branch("else", "Mul")),
    ]
    inits = [_const("w", RNG.standard_normal((2, 3, 1, 1))), _const("zero", np.array(0.0))]
    model = _model(nodes, inits, [1, 3, 4, 4], None)
    canon = _check_preserved(model, (1, 3, 4, 4))
    if_node = next(n for n in canon.graph.node if n.op_type == "If")
    assert [n.op_type for a in if_node.attribute for n in a.g.node] in (["Add", "Mul"], ["Mul", "Add"])
    onnx.checker.check_model(canon)


def test_partial_shape_folds_to_its_slice():
    """Shape(x, start=1, end=2) of a fixed-size axis folds to [that size], not the whole shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("Concat", ["minus1", "s"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    canon = canonicalize(_model(nodes, inits, [3, 6], [3, 6], opset=15))
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(canon, {"x": x})[0], x)
    assert "Shape" not in _ops(canon)


def test_dynamic_spatial_dims_stay_dynamic():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])]
    model = _model(nodes, [_const("w", RNG.standard_normal((2, 3, 1, 1)))], ["N", 3, "H", "W"], None)
    canon = canonicalize(model)
    for shape in ((1, 3, 4, 4), (3, 3, 6, 2)):
        x = RNG.standard_normal(shape).astype(np.float32)
        assert_close_rel(run_ort(canon, {"x": x})[0], run_ort(model, {"x": x})[0])


@pytest.mark.parametrize("op, opset", [("Resize", 10), ("Upsample", 9)])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 3]])
def test_old_linear_resizes_keep_their_coordinates(op, opset, scales):
    """Resize-10 / Upsample interpolate on asymmetric coordinates; the opset upgrade must say so
    (onnx's converter alone turns them into half_pixel, 1.28 off at 2x)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "s"], ["y"], mode="linear")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(scales, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    converted = ConvertOpset()(model)
    np.testing.assert_allclose(run_ort(converted, {"x": x})[0], run_ort(model, {"x": x})[0], atol=1e-5)


def _if_model() -> onnx.ModelProto:
    """x -> If(constant true) with two outputs (the branches differ in height) -> Conv on the second."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])

    def branch(name: str, tall: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("Identity", ["x"], [f"{name}_a"])]
        if tall:
            nodes.append(helper.make_node("Concat", ["x", "x"], [f"{name}_b"], axis=2))
        else:
            nodes.append(helper.make_node("Neg", ["x"], [f"{name}_b"]))
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_a", TensorProto.FLOAT, None),
                                                   helper.make_tensor_value_info(f"{name}_b", TensorProto.FLOAT, None)])

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("If", ["cond"], ["a", "b"], then_branch=branch("then", False), else_branch=branch("else", True)),
        helper.make_node("Conv", ["b", "w"], ["y"], name="conv"),
        helper.make_node("Add", ["a", "a"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                                                      helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_if_with_two_outputs_survives_and_layers_after_it_get_measured_shapes():
    """A constant-condition If is not inlined (onnx-graphsurgeon wires only an inlined branch's first
    output), and the Conv reading its second output, whose height inference cannot know, gets its
    shapes from one ONNX Runtime run."""
    model = _if_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    canon = canonicalize(model)
    assert [n.op_type for n in canon.graph.node].count("If") == 1
    for got, want in zip(run_ort(canon, {"x": x}), run_ort(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    layers = extract_layers(ProbeShapes()(canon)).layers
    assert [(l.name, l.c_in, l.c_out, l.feature_size) for l in layers] == [("conv", 3, 2, 16)]


def test_a_model_whose_layers_are_all_inside_control_flow_says_so():
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((4, 4), np.float32), "w")])
    with pytest.raises(InputError, match="all 1 Conv / Gemm / MatMul nodes of the model are inside If / Loop / Scan"):
        extract_layers(canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
