"""Constructs of real models outside the corpus, rebuilt faithfully with onnx.helper: an older int8
model (opset 11, a com.microsoft import, QLinearConv beside a float head), a voice-activity model
(Conv + LSTM whose states h / c are fixed at batch 1 beside ``input [seq_len, 576]``), a BERT-like
model with dynamic [b, s] inputs. Each command exits 0, or says one line with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from haqc.cli import main
from haqc.errors import InputError, library_error

RNG = np.random.default_rng(0)


def _old_int8(float_head: bool = True) -> onnx.ModelProto:
    """As ONNX Runtime's quantizer wrote them at opset 11: QuantizeLinear -> QLinearConv -> com.microsoft
    QLinearAdd -> DequantizeLinear, then a float MatMul head (or, without it, MatMulInteger)."""
    inits = [nh.from_array(np.float32(0.02), "x_s"), nh.from_array(np.uint8(128), "x_z"),
             nh.from_array(RNG.integers(-50, 50, (8, 3, 3, 3)).astype(np.int8), "w_q"),
             nh.from_array(np.float32(0.01), "w_s"), nh.from_array(np.int8(0), "w_z"),
             nh.from_array(np.float32(0.05), "y_s"), nh.from_array(np.uint8(128), "y_z"),
             nh.from_array(RNG.integers(-100, 100, (8,)).astype(np.int32), "b_q"),
             nh.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [h.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="q"),
             h.make_node("QLinearConv", ["xq", "x_s", "x_z", "w_q", "w_s", "w_z", "y_s", "y_z", "b_q"], ["yq"],
                         pads=[1, 1, 1, 1], name="qconv"),
             h.make_node("QLinearAdd", ["yq", "y_s", "y_z", "yq", "y_s", "y_z", "y_s", "y_z"], ["aq"], name="qadd",
                         domain="com.microsoft"),
             h.make_node("DequantizeLinear", ["aq", "y_s", "y_z"], ["y"], name="dq"),
             h.make_node("Relu", ["y"], ["r"], name="relu"),
             h.make_node("Reshape", ["r", "shape"], ["f"], name="flat")]
    if float_head:
        inits.append(nh.from_array(RNG.normal(size=(8 * 16 * 16, 10)).astype(np.float32), "fc_w"))
        nodes.append(h.make_node("MatMul", ["f", "fc_w"], ["out"], name="fc"))
    else:
        inits += [nh.from_array(RNG.integers(-100, 100, (8 * 16 * 16, 10)).astype(np.int8), "fc_q"),
                  nh.from_array(np.int8(0), "fc_z")]
        nodes += [h.make_node("DynamicQuantizeLinear", ["f"], ["fq", "fs", "fz"], name="dql"),
                  h.make_node("MatMulInteger", ["fq", "fc_q", "fz", "fc_z"], ["mi"], name="fc"),
                  h.make_node("Cast", ["mi"], ["out"], to=T.FLOAT, name="cast")]
    graph = h.make_graph(nodes, "old_int8", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 16, 16])],
                         [h.make_tensor_value_info("out", T.FLOAT, ["N", 10])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 11), h.make_opsetid("com.microsoft", 1)])
    model.ir_version = 6
    return model


def _vad(hidden: int = 128, channels: int = 64) -> onnx.ModelProto:
    """Conv + LSTM as a voice-activity model at opset 18: ``input [seq_len, 576]``, states ``h`` and ``c``
    ``[1, 1, hidden]`` (batch fixed at 1 on axis 1, layers on axis 0); outputs a probability per frame
    (Sigmoid, not classes) and the next states."""
    inits = [nh.from_array(np.array([0], np.int64), "ax0"),
             nh.from_array((RNG.normal(size=(channels, 576, 3)) * 0.05).astype(np.float32), "conv_w"),
             nh.from_array(np.zeros(channels, np.float32), "conv_b"),
             nh.from_array((RNG.normal(size=(1, 4 * hidden, channels)) * 0.1).astype(np.float32), "W"),
             nh.from_array((RNG.normal(size=(1, 4 * hidden, hidden)) * 0.1).astype(np.float32), "R"),
             nh.from_array(np.zeros((1, 8 * hidden), np.float32), "B"),
             nh.from_array(np.array([-1, hidden], np.int64), "flat"),
             nh.from_array((RNG.normal(size=(hidden, 1)) * 0.1).astype(np.float32), "head_w")]
    nodes = [h.make_node("Unsqueeze", ["input", "ax0"], ["x3"], name="unsqueeze"),
             h.make_node("Transpose", ["x3"], ["xt"], perm=[0, 2, 1], name="to_nct"),
             h.make_node("Conv", ["xt", "conv_w", "conv_b"], ["c1"], pads=[1, 1], name="conv"),
             h.make_node("Relu", ["c1"], ["r1"], name="relu"),
             h.make_node("Transpose", ["r1"], ["seq"], perm=[2, 0, 1], name="to_tnc"),
             h.make_node("LSTM", ["seq", "W", "R", "B", "", "h", "c"], ["Y", "hn", "cn"], hidden_size=hidden,
                         name="lstm"),
             h.make_node("Reshape", ["Y", "flat"], ["y2"], name="flatten"),
             h.make_node("MatMul", ["y2", "head_w"], ["logit"], name="head"),
             h.make_node("Sigmoid", ["logit"], ["output"], name="prob")]
    state = [1, 1, hidden]
    graph = h.make_graph(nodes, "vad", [h.make_tensor_value_info("input", T.FLOAT, ["seq_len", 576]),
                                        h.make_tensor_value_info("h", T.FLOAT, state),
                                        h.make_tensor_value_info("c", T.FLOAT, state)],
                         [h.make_tensor_value_info("output", T.FLOAT, ["seq_len", 1]),
                          h.make_tensor_value_info("hn", T.FLOAT, state), h.make_tensor_value_info("cn", T.FLOAT, state)],
                         inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def _bert_like() -> onnx.ModelProto:
    """input_ids and attention_mask [b, s], both dims dynamic: an embedding, a mask, a dense layer."""
    graph = h.make_graph(
        [h.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
         h.make_node("Cast", ["attention_mask"], ["mf"], to=T.FLOAT, name="cast"),
         h.make_node("Unsqueeze", ["mf", "ax"], ["m3"], name="unsqueeze"),
         h.make_node("Mul", ["e", "m3"], ["em"], name="mask"),
         h.make_node("MatMul", ["em", "w"], ["o"], name="dense")], "bert",
        [h.make_tensor_value_info("input_ids", T.INT64, ["b", "s"]),
         h.make_tensor_value_info("attention_mask", T.INT64, ["b", "s"])],
        [h.make_tensor_value_info("o", T.FLOAT, ["b", "s", 8])],
        [nh.from_array(RNG.normal(size=(100, 16)).astype(np.float32), "emb"),
         nh.from_array(RNG.normal(size=(16, 8)).astype(np.float32), "w"), nh.from_array(np.array([2], np.int64), "ax")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    return result.exit_code, result.output


def _one_line_error(code: int, output: str, text: str) -> None:
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], output


def test_old_int8_model_keeps_its_integer_ops_and_quantizes_the_rest(tmp_path):
    """onnx's IR-version table does not know com.microsoft's opset ('Unsupported opset-version.' killed
    inspect); the integer ops stay as they are, inspect says so and reports the file's own opset."""
    onnx.save(_old_int8(), tmp_path / "old.onnx")
    code, out = _run("inspect", tmp_path / "old.onnx", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["opset"] == 11 and [r["name"] for r in summary["layers"]] == ["fc"]
    assert summary["kept_float"]["QLinearConv"]["reason"].startswith("already quantized")
    np.savez(tmp_path / "calib.npz", x=RNG.random((8, 3, 16, 16), dtype=np.float32))
    code, out = _run("quantize", tmp_path / "old.onnx", "--bits", "w8a8", "--calib-data", tmp_path / "calib.npz",
                     "-o", tmp_path / "q.onnx")
    assert code == 0, out
    session = ort.InferenceSession(str(tmp_path / "q.onnx"))
    for batch in (1, 3):
        assert session.run(None, {"x": np.ones((batch, 3, 16, 16), np.float32)})[0].shape == (batch, 10)


def test_fully_quantized_model_is_refused_in_one_line_naming_its_ops(tmp_path):
    onnx.save(_old_int8(float_head=False), tmp_path / "int8.onnx")
    _one_line_error(*_run("inspect", tmp_path / "int8.onnx"), "already quantized (1 QLinearConv, 1 MatMulInteger)")


def test_inspect_reports_the_input_files_opset_not_its_converted_copy(tmp_path):
    model = _bert_like()
    model.opset_import[0].version = 15
    onnx.save(model, tmp_path / "m.onnx")
    code, out = _run("inspect", tmp_path / "m.onnx", "--input-shape", "input_ids=1x8",
                     "--input-shape", "attention_mask=1x8")
    assert code == 0 and "(opset 15)" in out.splitlines()[0], out


def test_lstm_states_fixed_at_batch_one_are_fed_one_sample_at_a_time(tmp_path):
    """The voice-activity model's h / c [1, 1, 128] took calibration's batch of 16 ('Got: 16 Expected: 1'
    from ONNX Runtime); every run now holds one sample of each input, as the states admit, and the
    Sigmoid output is scored by fidelity, not top-1."""
    onnx.save(_vad(), tmp_path / "vad.onnx")
    n = 12
    np.savez(tmp_path / "calib.npz", input=RNG.random((n, 576), dtype=np.float32),
             h=np.zeros((n, 1, 128), np.float32), c=np.zeros((n, 1, 128), np.float32))
    code, out = _run("quantize", tmp_path / "vad.onnx", "--bits", "w8a8", "--calib-data", tmp_path / "calib.npz",
                     "--data", tmp_path / "calib.npz", "-o", tmp_path / "q.onnx", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["quantized"]["metric"] == "sqnr-fidelity" and summary["quantized"]["label_free"]
    assert 0.5 < summary["quantized"]["accuracy"] <= 1.0
    session = ort.InferenceSession(str(tmp_path / "q.onnx"))
    state = np.zeros((1, 1, 128), np.float32)
    for frames in (1, 5):
        out = session.run(None, {"input": np.ones((frames, 576), np.float32), "h": state, "c": state})
        assert out[0].shape == (frames, 1) and out[1].shape == (1, 1, 128)


def test_inputs_fixing_different_batches_are_refused_in_one_line(tmp_path):
    model = _vad()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, tmp_path / "vad.onnx")
    np.savez(tmp_path / "calib.npz", input=RNG.random((8, 576), dtype=np.float32),
             h=np.zeros((8, 1, 128), np.float32), c=np.zeros((8, 1, 128), np.float32))
    _one_line_error(*_run("quantize", tmp_path / "vad.onnx", "--bits", "w8a8", "--calib-data",
                          tmp_path / "calib.npz", "-o", tmp_path / "q.onnx"), "fix different batch sizes on axis 0")


def test_analysis_shapes_come_from_the_data(tmp_path):
    """input_ids (16, 128) in the calibration file says s = 128: no --input-shape needed; without data,
    the dynamic dims are still asked for."""
    onnx.save(_bert_like(), tmp_path / "bert.onnx")
    np.savez(tmp_path / "calib.npz", input_ids=RNG.integers(0, 100, (16, 128)),
             attention_mask=np.ones((16, 128), np.int64))
    code, out = _run("quantize", tmp_path / "bert.onnx", "--bits", "w8a8", "--calib-data", tmp_path / "calib.npz",
                     "-o", tmp_path / "q.onnx")
    assert code == 0, out
    _one_line_error(*_run("inspect", tmp_path / "bert.onnx"), "have dynamic dimensions")


def test_library_errors_become_one_line_and_haqc_bugs_keep_their_traceback():
    """What onnx or ONNX Runtime raises names the library, the stage and the library's own words
    (ORT's shapes span lines: they are joined); any other exception is not converted."""
    try:
        onnx.helper.find_min_ir_version_for([h.make_opsetid("com.example", 99)])
    except ValueError as err:
        converted = library_error(err)
    assert isinstance(converted, InputError) and str(converted).startswith("onnx failed during ")
    assert "Unsupported opset-version." in str(converted)
    try:
        ort.InferenceSession(b"not a model")
    except Exception as err:  # noqa: BLE001
        converted = library_error(err)
    assert str(converted).startswith("ONNX Runtime failed during ") and "\n" not in str(converted)
    assert library_error(ValueError("a bug in haqc")) is None


@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_metric_top1_is_the_users_word_that_outputs_are_classes(tmp_path, command):
    """The VAD's one probability per frame cannot be classes: --metric top1 says so in one line."""
    onnx.save(_vad(hidden=8, channels=4), tmp_path / "vad.onnx")
    np.savez(tmp_path / "d.npz", input=RNG.random((4, 576), dtype=np.float32),
             h=np.zeros((4, 1, 8), np.float32), c=np.zeros((4, 1, 8), np.float32))
    extra = ["--bits", "w8a8", "-o", tmp_path / "q.onnx"] if command == "quantize" else ["--reference", tmp_path / "vad.onnx"]
    _one_line_error(*_run(command, tmp_path / "vad.onnx", "--data", tmp_path / "d.npz", "--metric", "top1", *extra),
                    "says the first output holds class scores")


def test_a_state_whose_batch_is_not_on_axis_0_is_refused_saying_how(tmp_path):
    """silero-vad's ``state [2, batch, 128]`` beside ``input [batch, 512]``: haqc feeds samples on axis 0,
    so the data's counts disagree; the line names the input, its dims and what to do."""
    nodes = [h.make_node("MatMul", ["input", "w"], ["m"], name="fc"),
             h.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),
             h.make_node("Add", ["m", "s"], ["y"])]
    graph = h.make_graph(nodes, "vad", [h.make_tensor_value_info("input", T.FLOAT, ["batch", 16]),
                                        h.make_tensor_value_info("state", T.FLOAT, [2, "batch", 8])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["batch", 8])],
                         [nh.from_array(RNG.normal(size=(16, 8)).astype(np.float32), "w"),
                          nh.from_array(np.array([0], np.int64), "axes")])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "vad.onnx")
    np.savez(tmp_path / "calib.npz", input=RNG.random((6, 16), dtype=np.float32), state=np.zeros((2, 6, 8), np.float32))
    _one_line_error(*_run("quantize", tmp_path / "vad.onnx", "--bits", "w8a8", "--calib-data", tmp_path / "calib.npz",
                          "-o", tmp_path / "q.onnx"), "input 'state' [2, batch, 8] has its batch on an axis other than 0")


def test_a_model_of_ai_onnx_ml_ops_only_is_refused_in_one_line(tmp_path):
    """sklearn-onnx's logistic regression imports ai.onnx.ml alone (no default domain: 'opset 1' before)."""
    graph = h.make_graph([h.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.0], scale=[2.0])], "ml",
                         [h.make_tensor_value_info("x", T.FLOAT, [None, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [None, 4])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 3
    onnx.save(model, tmp_path / "ml.onnx")
    _one_line_error(*_run("inspect", tmp_path / "ml.onnx"), "imports no standard ONNX operators (only: ai.onnx.ml)")


def test_a_state_fixed_at_batch_one_given_once_is_refused_saying_how(tmp_path):
    """h [1, 1, 128] saved as the model takes it (one row) beside 12 frames: the line says to save one row
    per sample."""
    onnx.save(_vad(), tmp_path / "vad.onnx")
    np.savez(tmp_path / "calib.npz", input=RNG.random((12, 576), dtype=np.float32),
             h=np.zeros((1, 1, 128), np.float32), c=np.zeros((1, 1, 128), np.float32))
    _one_line_error(*_run("quantize", tmp_path / "vad.onnx", "--bits", "w8a8", "--calib-data", tmp_path / "calib.npz",
                          "-o", tmp_path / "q.onnx"), "save one row per sample, shape [12, 1, 128]")
