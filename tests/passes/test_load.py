"""Load: validation, external data, input shapes; every bad input is one InputError."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from haqc.errors import InputError
from haqc.passes.load import check_input_shapes, load_model, parse_input_shape, read_model, with_input_shapes


def _conv_model(x_shape) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], 2] + list(x_shape[2:]))],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _dims(model: onnx.ModelProto) -> list:
    return [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.fixture
def saved(tmp_path):
    def save(model: onnx.ModelProto, **kwargs):
        path = tmp_path / "m.onnx"
        onnx.save(model, path, **kwargs)
        return path

    return save


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 10, b"hello world, not a protobuf"])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not (a valid )?(an )?ONNX model"):
        load_model(path)


def test_truncated(saved):
    path = saved(_conv_model([1, 3, 4, 4]))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(InputError):
        load_model(path)


def test_external_data_loaded(saved):
    path = saved(_conv_model([1, 3, 4, 4]), save_as_external_data=True, all_tensors_to_one_file=True,
                 location="weights.bin", size_threshold=0)
    model = load_model(path)
    assert numpy_helper.to_array(model.graph.initializer[0]).sum() == 6


def test_external_data_missing(saved):
    path = saved(_conv_model([1, 3, 4, 4]), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(InputError, match="weights.bin.*not found"):
        load_model(path)


def test_dynamic_batch_alone_is_kept(saved):
    assert _dims(load_model(saved(_conv_model(["N", 3, 4, 4])))) == ["N", 3, 4, 4]


def test_other_dynamic_dims_need_input_shape(saved):
    path = saved(_conv_model(["N", 3, "H", "W"]))
    with pytest.raises(InputError, match=r"'x' \[N, 3, H, W\] has dynamic dimensions.*--input-shape x=1x3x224x224$"):
        load_model(path)
    assert _dims(load_model(path, {"x": (2, 3, 8, 8)})) == [2, 3, 8, 8]


def test_read_model_keeps_the_interface_the_shapes_only_fix_the_analysis_copy(saved):
    path = saved(_conv_model(["N", 3, "H", "W"]))
    model = read_model(path)
    assert _dims(model) == ["N", 3, "H", "W"]
    assert _dims(with_input_shapes(model, {"x": (1, 3, 8, 8)})) == [1, 3, 8, 8]
    assert _dims(model) == ["N", 3, "H", "W"]


@pytest.mark.parametrize("batch", [-1, 0, "batch"])
def test_a_batch_of_minus_one_or_a_named_one_is_dynamic_not_a_contradiction(saved, batch):
    model = _conv_model([1, 3, "H", "W"])
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    if isinstance(batch, str):
        dim.dim_param = batch
    else:
        dim.dim_value = batch
    assert _dims(load_model(saved(model), {"x": (1, 3, 48, 192)}))[1:] == [3, 48, 192]


def test_every_input_needing_a_shape_is_named_in_one_message_with_typical_sizes():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["ids"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InputError, match=r"inputs 'x' .* 'ids' \[N, seq\] have dynamic.*"
                                         r"--input-shape x=1x3x224x224 --input-shape ids=1x128$"):
        check_input_shapes(model, {})
    check_input_shapes(model, {"x": (1, 3, 8, 8), "ids": (1, 16)})


def test_input_shape_errors(saved):
    path = saved(_conv_model([1, 3, 4, 4]))
    with pytest.raises(InputError, match="unknown input 'image'.*x"):
        load_model(path, {"image": (1, 3, 4, 4)})
    with pytest.raises(InputError, match="has 3 dims"):
        load_model(path, {"x": (1, 3, 4)})
    with pytest.raises(InputError, match="contradicts"):
        load_model(path, {"x": (1, 3, 5, 5)})


@pytest.mark.parametrize("text", ["x", "x=", "x=1x", "x=1xax3", "=1x2", "x=0x3", "x=1,3"])
def test_malformed_input_shape(text):
    with pytest.raises(InputError, match="malformed --input-shape"):
        parse_input_shape(text)


def test_parse_input_shape_with_slash_name():
    assert parse_input_shape("gpu_0/data_0=1x3x224x224") == ("gpu_0/data_0", (1, 3, 224, 224))


def test_input_file_is_not_modified(saved):
    path = saved(_conv_model(["N", 3, 4, 4]))
    before = path.read_bytes()
    load_model(path, {"x": (1, 3, 4, 4)})
    assert path.read_bytes() == before


def test_a_dim_named_like_the_batch_is_hinted_as_the_batch():
    """An RNN state [layers, batch, hidden] shares the batch's name: the hint gives it 1, not a length."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 128])]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match=r"--input-shape x=1x128 --input-shape state=2x1x128$"):
        check_input_shapes(model, {})
