"""haqc inspect through the CLI: JSON shape, target costs, and every bad input as one line + exit 2."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import EXAMPLE, light_path
from haqc.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


def _conv_model(x_shape, weight_as_input=False):
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1])
    inits = [] if weight_as_input else [numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)] + ([w] if weight_as_input else []),
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], 2] + list(x_shape[2:]))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_json_for_the_example_with_targets():
    result = _run("inspect", EXAMPLE, "--json", "--target", "edge", "--target", "bitfusion")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["opset"] == 17 and len(data["layers"]) >= 15  # the file's own opset, not its converted copy
    layer = data["layers"][0]
    for key in ("name", "op", "kind", "c_in", "c_out", "kernel", "stride", "groups", "feature_size", "params", "macs", "state"):
        assert key in layer
    assert data["totals"]["macs"] == sum(l["macs"] for l in data["layers"])
    for target in ("edge", "bitfusion"):
        totals = data["targets"][target]
        assert set(totals) == {"w8a8", "w4a4", "w2a2"}
        assert totals["w2a2"]["latency_ms"] <= totals["w4a4"]["latency_ms"] <= totals["w8a8"]["latency_ms"]
        assert layer["targets"][target]["w8a8"]["size_mb"] > 0
    assert data["targets"]["edge"]["w8a8"]["energy_mj"] is None
    assert data["targets"]["bitfusion"]["w8a8"]["energy_mj"] > 0


def test_table_for_a_light_model():
    result = _run("inspect", light_path("squeezenet"), "--target", "cloud")
    assert result.exit_code == 0
    assert "26 quantizable layers" in result.output and "total w8a8" in result.output


def test_missing_path(tmp_path):
    _assert_one_line_error(_run("inspect", tmp_path / "nope.onnx"), "not found")


def test_directory(tmp_path):
    _assert_one_line_error(_run("inspect", tmp_path), "directory")


def test_not_protobuf(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x96\x01garbage that is not a model" * 20)
    _assert_one_line_error(_run("inspect", path), "not (a valid )?(an )?ONNX model")


def test_truncated(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(EXAMPLE.read_bytes()[:1000])
    _assert_one_line_error(_run("inspect", path), "ONNX")


def test_missing_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model([1, 3, 4, 4]), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    _assert_one_line_error(_run("inspect", path), "w.bin")


def test_no_quantizable_layer(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model([1, 3, 4, 4], weight_as_input=True), path)
    _assert_one_line_error(_run("inspect", path), "no quantizable layer.*conv")


def test_dynamic_dims_without_input_shape(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(["N", 3, "H", "W"]), path)
    _assert_one_line_error(_run("inspect", path), "--input-shape x=")
    assert _run("inspect", path, "--input-shape", "x=1x3x8x8").exit_code == 0


def test_malformed_input_shape():
    _assert_one_line_error(_run("inspect", EXAMPLE, "--input-shape", "input=1xtwo"), "malformed --input-shape")


def test_unknown_input_name():
    _assert_one_line_error(_run("inspect", EXAMPLE, "--input-shape", "image=1x1x28x28"), "unknown input 'image'")


def test_unknown_target():
    _assert_one_line_error(_run("inspect", EXAMPLE, "--target", "tpu9"), "unknown target 'tpu9'.*edge")


def test_nothing_written_and_input_untouched(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(["N", 3, "H", "W"]), path)
    before = path.read_bytes()
    _run("inspect", path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_version_and_help():
    assert _run("--version").output.startswith("haqc, version")
    for command in ("inspect", "targets", "quantize", "eval", "compress"):
        assert _run(command, "--help").exit_code == 0
