"""``haqc eval``: output formats, label-free mode, and user errors as one line with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import EXAMPLE
from onnx import TensorProto, helper, numpy_helper

from haqc.cli import main


def _linear(weight: np.ndarray, batch: int | str = "N") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def files(tmp_path):
    """model.onnx (identity classifier), reversed.onnx, fixed1.onnx; val.npz (accuracy 0.75), nolabels.npz."""
    onnx.save(_linear(np.eye(4)), tmp_path / "model.onnx")
    onnx.save(_linear(np.eye(4)[::-1]), tmp_path / "reversed.onnx")
    onnx.save(_linear(np.eye(4), batch=1), tmp_path / "fixed1.onnx")
    x = np.random.default_rng(0).uniform(0, 1, (8, 4))  # float64 on purpose: cast on load
    x[np.arange(8), np.arange(8) % 4] = 2.0
    labels = np.arange(8) % 4
    labels[:2] = 3
    np.savez(tmp_path / "val.npz", x=x, labels=labels)
    np.savez(tmp_path / "nolabels.npz", x=x)
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


def _assert_user_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_text_output(files):
    result = _run(files / "model.onnx", "--data", files / "val.npz")
    assert result.exit_code == 0, result.output
    assert "top-1 accuracy 0.7500 on 8 samples in" in result.output


def test_json_output(files):
    result = _run(files / "model.onnx", "--data", files / "val.npz", "--json", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"model", "data", "accuracy", "samples", "seconds", "label_free", "metric"}
    assert out["accuracy"] == 0.75 and out["samples"] == 8 and out["metric"] == "top1" and not out["label_free"]


def test_label_free_with_reference(files):
    """Logits no Softmax ends are scored by top-1 agreement only when --metric top1 says they are classes."""
    result = _run(files / "model.onnx", "--data", files / "nolabels.npz", "--reference", files / "model.onnx",
                  "--metric", "top1")
    assert result.exit_code == 0, result.output
    assert f"agreement with {files / 'model.onnx'} (label-free) 1.0000 on 8 samples" in result.output
    out = json.loads(_run(files / "reversed.onnx", "--data", files / "nolabels.npz", "--reference",
                          files / "model.onnx", "--json", "--metric", "top1").output)
    assert out["accuracy"] == 0.0 and out["label_free"] and out["metric"] == "top1-agreement"
    out = json.loads(_run(files / "reversed.onnx", "--data", files / "nolabels.npz", "--reference",
                          files / "model.onnx", "--json").output)
    assert 0.0 <= out["accuracy"] < 1.0 and out["metric"] == "sqnr-fidelity"


def test_fixed_batch_model(files):
    result = _run(files / "fixed1.onnx", "--data", files / "val.npz", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["accuracy"] == 0.75


def test_input_shape_fixes_the_batch(files):
    result = _run(files / "model.onnx", "--data", files / "val.npz", "--input-shape", "x=1x4", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["accuracy"] == 0.75


def test_metric_plugin(files, monkeypatch):
    (files / "cli_metric.py").write_text("def first_logit(outputs, labels):\n    return float(outputs[0, 0])\n")
    monkeypatch.syspath_prepend(str(files))
    result = _run(files / "model.onnx", "--data", files / "val.npz", "--metric", "cli_metric:first_logit")
    assert result.exit_code == 0, result.output
    assert "metric cli_metric:first_logit 2.0000 on 8 samples" in result.output


def test_no_labels_no_reference(files):
    result = _run(files / "model.onnx", "--data", files / "nolabels.npz")
    _assert_user_error(result, "has no labels; pass --reference")


def test_missing_data_file(files):
    _assert_user_error(_run(files / "model.onnx", "--data", files / "nope.npz"), "nope.npz: file not found")


def test_missing_model(files):
    _assert_user_error(_run(files / "nope.onnx", "--data", files / "val.npz"), "model file not found")


def test_wrong_shape(files):
    np.savez(files / "bad.npz", x=np.zeros((8, 5), np.float32))
    _assert_user_error(_run(files / "model.onnx", "--data", files / "bad.npz"),
                       "input 'x' has shape [8, 5] but the model expects [N, 4]")


def test_label_out_of_range(files):
    np.savez(files / "bad.npz", x=np.zeros((2, 4), np.float32), labels=np.array([0, 4]))
    _assert_user_error(_run(files / "model.onnx", "--data", files / "bad.npz"), "label 4 is outside [0, 4)")


def test_bad_metric(files):
    _assert_user_error(_run(files / "model.onnx", "--data", files / "val.npz", "--metric", "nomodule"),
                       "malformed --metric 'nomodule'")


def test_batch_size_against_fixed_batch(files):
    _assert_user_error(_run(files / "fixed1.onnx", "--data", files / "val.npz", "--batch-size", "4"),
                       "fixed at 1, so --batch-size 4 cannot run")


def test_reference_with_other_inputs(files):
    graph = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "g",
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), files / "other.onnx")
    _assert_user_error(
        _run(files / "model.onnx", "--data", files / "nolabels.npz", "--reference", files / "other.onnx"),
        "the reference model has input 'y'",
    )


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the example model has not been trained yet")
def test_example():
    result = _run(EXAMPLE, "--data", EXAMPLE.parent / "val.npz", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["samples"] == 1000 and out["accuracy"] >= 0.97
