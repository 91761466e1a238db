"""Evaluation: accuracy, label-free agreement, plugin metrics, batching, fixed-batch models, the example."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, run_ort
from onnx import TensorProto, helper, numpy_helper

from haqc.data import Dataset, load_dataset
from haqc.prepared import input_specs
from haqc.errors import InputError
from haqc.evaluation import (
    BATCH_ELEMENTS,
    FIDELITY,
    FIDELITY_DB,
    TOP1,
    TOP1_AGREEMENT,
    Evaluator,
    batch_size_for,
    selection_sources,
    sqnr_db,
    load_metric,
    make_session,
    num_classes,
    fidelity,
    integer_kernels,
    predictions,
    sqnr_db,
)

N = 20


def _linear(weight: np.ndarray, batch: int | str = "N", name: str = "x") -> onnx.ModelProto:
    """logits = x @ weight: a classifier whose predictions are known from its weight."""
    k, c = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [name, "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


IDENTITY = _linear(np.eye(4))
REVERSED = _linear(np.eye(4)[::-1])  # predicts 3 - argmax(x)


def _data(labels: bool = True) -> Dataset:
    """N samples whose argmax is i % 4; labels right for 3 of every 4 samples (accuracy 0.75)."""
    x = np.random.default_rng(0).uniform(0, 1, (N, 4)).astype(np.float32)
    top = np.arange(N) % 4
    x[np.arange(N), top] = 2.0
    y = top.copy()
    y[::4] = (y[::4] + 1) % 4
    return Dataset({"x": x}, y if labels else None, "--data test")


def test_top1_accuracy():
    result = Evaluator(_data()).evaluate(IDENTITY)
    assert result.accuracy == pytest.approx(0.75) and result.samples == N
    assert not result.label_free and result.metric_name == TOP1 and result.seconds > 0


@pytest.mark.parametrize("as_", ["proto", "bytes", "path", "session"])
def test_model_sources(tmp_path, as_):
    path = tmp_path / "m.onnx"
    onnx.save(IDENTITY, path)
    model = {"proto": IDENTITY, "bytes": IDENTITY.SerializeToString(), "path": path,
             "session": make_session(IDENTITY)}[as_]
    assert Evaluator(_data()).evaluate(model).accuracy == pytest.approx(0.75)


def test_predictions_match_ort():
    ds = _data()
    expected = run_ort(REVERSED, {"x": ds.inputs["x"]})[0]
    np.testing.assert_array_equal(predictions(make_session(REVERSED), ds), expected)


def test_integer_kernels_are_what_onnx_runtime_fuses(example):
    """The example's w8a8 export runs every Conv as QLinearConv and its Gemm as QGemm on this CPU; the fp32
    model runs none."""
    from haqc.policy import uniform_policy
    from haqc.precision import Option
    from haqc.quantizer import QuantizeOptions, Quantizer

    prepared = example["prepared"]
    quantized = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions()).export(
        uniform_policy(prepared.layers, Option(8, 8)))
    kernels = integer_kernels(quantized)
    ops = [layer.op for layer in prepared.layers]
    assert kernels["QLinearConv"] == ops.count("Conv") and kernels["QGemm"] == ops.count("Gemm")
    assert integer_kernels(prepared.model) == {}


def test_make_session_bad_model():
    with pytest.raises(InputError, match="ONNX Runtime cannot load model"):
        make_session(b"not a model")


def test_label_free_identical_model_agrees_fully():
    ev = Evaluator(_data(labels=False), reference=IDENTITY, metric=TOP1)  # the user says: class scores
    result = ev.evaluate(IDENTITY)
    assert result.accuracy == 1.0 and result.label_free and result.metric_name == TOP1_AGREEMENT
    assert ev.evaluate(REVERSED).accuracy == 0.0  # 3 - i == i never holds for integers


def test_the_reference_is_scored_from_its_cached_outputs(monkeypatch):
    """Scoring the reference model itself (compress's and quantize's fp32 row) reads the outputs the
    evaluator cached from it: the same score and a zero divergence, without running it again (on
    light resnet50 with 256 images that run was 31 s)."""
    for labels, metric in ((True, None), (False, TOP1), (False, FIDELITY)):
        ev = Evaluator(_data(labels), reference=IDENTITY, metric=metric)
        again = ev.evaluate(onnx.ModelProto.FromString(IDENTITY.SerializeToString()))  # a copy: run
        runs = []
        monkeypatch.setattr("haqc.evaluation.run_batches", lambda *a, **k: runs.append(a))
        cached = ev.evaluate(IDENTITY)
        monkeypatch.undo()
        assert not runs and cached.samples == N
        assert (cached.accuracy, cached.divergence, cached.metric_name) == (again.accuracy, 0.0, again.metric_name)
        assert again.divergence == 0.0


def test_label_free_needs_reference():
    with pytest.raises(InputError, match="has no labels; pass --reference"):
        Evaluator(_data(labels=False))


def test_labels_win_over_reference():
    result = Evaluator(_data(), reference=REVERSED).evaluate(IDENTITY)
    assert result.accuracy == pytest.approx(0.75) and not result.label_free


@pytest.mark.parametrize("batch_size", [1, 7, None, N, 1000])
def test_batching_equivalence(batch_size):
    ds = _data()
    assert Evaluator(ds, batch_size).evaluate(IDENTITY).accuracy == pytest.approx(0.75)
    np.testing.assert_array_equal(predictions(make_session(IDENTITY), ds, batch_size), ds.inputs["x"])


@pytest.mark.parametrize("fixed", [1, 3])
def test_fixed_batch_models(fixed):
    model = _linear(np.eye(4), batch=fixed)
    session = make_session(model)
    assert batch_size_for(session, _data()) == fixed
    ds = _data()
    np.testing.assert_array_equal(predictions(session, ds), ds.inputs["x"])  # N % 3 != 0: last batch padded
    assert Evaluator(ds).evaluate(model).accuracy == pytest.approx(0.75)
    with pytest.raises(InputError, match=f"fixed at {fixed}, so --batch-size 8 cannot run"):
        Evaluator(ds, batch_size=8).evaluate(model)


def test_default_and_bad_batch_sizes():
    session = make_session(IDENTITY)
    few, many = (Dataset({"x": np.zeros((n, 4), np.float32)}) for n in (10, 10_000))
    assert batch_size_for(session, few) == 10 and batch_size_for(session, many) == 256
    with pytest.raises(InputError, match="--batch-size must be a positive integer"):
        batch_size_for(session, few, 0)


def test_the_default_batch_holds_at_most_the_element_budget_of_big_samples():
    images = Dataset({"x": np.zeros((64, 3, 48, 192), np.float32), "scale": np.float32(1)})
    assert images.sample_elements == 3 * 48 * 192 + 1
    assert batch_size_for(make_session(IDENTITY), images) == BATCH_ELEMENTS // images.sample_elements == 18
    huge = Dataset({"x": np.zeros((2, 3, 640, 640), np.float32)})
    assert batch_size_for(make_session(IDENTITY), huge) == 1


def test_model_data_mismatch():
    with pytest.raises(InputError, match="has input 'y', which --data test does not hold"):
        Evaluator(_data()).evaluate(_linear(np.eye(4), name="y"), "other.onnx")
    with pytest.raises(InputError, match=r"expects input 'x' of shape \[N, 5\]"):
        Evaluator(_data()).evaluate(_linear(np.eye(5)[:, :4]))


def test_outputs_need_sample_axis():
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)], "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
    )
    scalar = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InputError, match=r"first output has shape \[\] for a batch of 20, with no axis that holds the "
                                         r"samples; top-1 and --metric score outputs per sample"):
        Evaluator(_data()).evaluate(scalar)


def test_a_metric_gets_a_time_major_output_with_its_samples_first():
    """A CRNN's [steps, batch, classes] output (a CTC head) was refused: the metric now receives it as
    [batch, steps, classes], every batch's samples in order."""
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Tile", ["u", "reps"], ["t"])], "steps",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, "N", 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes"),
         numpy_helper.from_array(np.array([3, 1, 1], np.int64), "reps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32)
    seen = []

    def metric(outputs, labels):
        seen.append(outputs)
        return 1.0

    ds = Dataset({"x": x}, np.zeros(N, np.int64), "--data test")
    Evaluator(ds, metric=metric, batch_size=7).evaluate(model)
    np.testing.assert_array_equal(seen[0], np.repeat(x[:, None, :], 3, axis=1))


def test_top1_needs_one_prediction_per_sample():
    ds = Dataset({"x": np.zeros((N, 4), np.float32)}, np.zeros(N, np.int64), "--data test")
    assert Evaluator(ds).evaluate(_linear(np.eye(4)[:, :1])).accuracy == 1.0  # [N, 1] still has a class axis
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "unsq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1])],
        [numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )
    per_position = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(InputError, match=r"shape \[20, 4, 1\], so its top-1 .* do not line up with 20 targets"):
        Evaluator(ds).evaluate(per_position)


def test_num_classes():
    assert num_classes(IDENTITY) == 4
    assert num_classes(_linear(np.eye(4))) == 4
    dynamic = _linear(np.eye(4))
    dynamic.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "C"
    assert num_classes(dynamic) is None


# -- metric plugins ---------------------------------------------------------------------------

@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "import numpy as np\n"
        "seen = []\n"
        "def top2(outputs, labels):\n"
        "    seen.append(labels)\n"
        "    top = np.argsort(outputs, axis=-1)[:, -2:]\n"
        "    return float((top == labels[:, None]).any(axis=1).mean())\n"
        "def mean_logit(outputs, labels):\n"
        "    seen.append(labels)\n"
        "    return float(outputs.mean())\n"
        "def broken(outputs, labels):\n"
        "    return 'high'\n"
        "NOT_CALLABLE = 3\n"
    )
    (tmp_path / "bad_plugin.py").write_text("raise ImportError('needs scipy')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    yield
    import sys

    for name in ("my_metrics", "bad_plugin"):
        sys.modules.pop(name, None)


def test_metric_plugin(plugin):
    import my_metrics

    result = Evaluator(_data(), metric="my_metrics:top2").evaluate(IDENTITY)
    assert result.metric_name == "my_metrics:top2" and not result.label_free
    assert 0.75 <= result.accuracy <= 1.0
    np.testing.assert_array_equal(my_metrics.seen[-1], _data().labels)


def test_metric_plugin_label_free(plugin):
    import my_metrics

    classes = _softmax(np.eye(4)[::-1])  # class scores: the reference's top-1 are the targets
    result = Evaluator(_data(labels=False), metric="my_metrics:top2", reference=classes).evaluate(classes)
    assert result.accuracy == 1.0 and result.label_free
    np.testing.assert_array_equal(my_metrics.seen[-1], 3 - np.arange(N) % 4)
    Evaluator(_data(labels=False), metric="my_metrics:mean_logit").evaluate(IDENTITY)
    assert my_metrics.seen[-1] is None


def test_metric_callable_directly():
    result = Evaluator(_data(), metric=lambda out, labels: 0.5).evaluate(IDENTITY)
    assert result.accuracy == 0.5 and result.metric_name == "<lambda>"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("my_metrics", "malformed --metric 'my_metrics'; write module:function"),
        (":top2", "malformed --metric"),
        ("my_metrics:", "malformed --metric"),
        ("no_such_module_xyz:f", "cannot import --metric module 'no_such_module_xyz'"),
        ("bad_plugin:f", r"cannot import --metric module 'bad_plugin' \(needs scipy\)"),
        ("my_metrics:nope", "has no attribute 'nope'"),
        ("my_metrics:NOT_CALLABLE", "is not callable \\(it is int\\)"),
    ],
)
def test_bad_metric_specs(plugin, spec, message):
    with pytest.raises(InputError, match=message):
        load_metric(spec)


def test_metric_must_return_a_float(plugin):
    with pytest.raises(InputError, match="returned 'high'; it must return a finite float"):
        Evaluator(_data(), metric="my_metrics:broken").evaluate(IDENTITY)


# -- the bundled example ----------------------------------------------------------------------

@pytest.mark.skipif(not EXAMPLE.exists(), reason="the example model has not been trained yet")
def test_example_accuracy():
    model = onnx.load(EXAMPLE)
    val = load_dataset(EXAMPLE.parent / "val.npz", input_specs(model), num_classes=num_classes(model))
    result = Evaluator(val).evaluate(model)
    assert result.samples == 1000 and result.accuracy >= 0.97


def _scalar_score_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)], "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_label_free_outputs_that_are_not_logits_score_fidelity_against_the_reference():
    """A scalar score or a 3-D map is scored by clipped SQNR against the reference: 1 when equal,
    lower as noise grows, bounded in [0, 1]; 2-D logits keep top-1 agreement."""
    ds = Dataset({"x": np.random.default_rng(0).standard_normal((N, 4)).astype(np.float32)})
    scalar = _scalar_score_model()
    evaluator = Evaluator(ds, reference=scalar)
    result = evaluator.evaluate(scalar)
    assert (result.metric_name, result.accuracy, result.samples) == (FIDELITY, 1.0, N)
    # 2-D rows are classes only where a Softmax makes them, or the user says so (metric TOP1).
    assert Evaluator(ds, reference=_linear(np.eye(4))).metric_name == FIDELITY
    assert Evaluator(ds, reference=_linear(np.eye(4)), metric=TOP1).metric_name == TOP1_AGREEMENT
    assert Evaluator(ds, reference=_softmax(np.eye(4))).metric_name == TOP1_AGREEMENT
    # One score per sample ([N, 1], a voice-activity probability) is no class: argmax would always agree.
    single = Evaluator(ds, reference=_linear(np.ones((4, 1))))
    assert single.metric_name == FIDELITY
    assert single.evaluate(_linear(np.full((4, 1), 1.5))).accuracy < 1.0
    maps = Evaluator(ds, reference=_map(1.0), batch_size=7)
    assert maps.metric_name == FIDELITY
    assert 1.0 > maps.evaluate(_map(1.03)).accuracy > maps.evaluate(_map(1.5)).accuracy >= 0.0


def _softmax(weight: np.ndarray) -> onnx.ModelProto:
    """softmax(x @ weight), flattened: class scores the graph itself says are classes."""
    model = _linear(weight)
    model.graph.node[0].output[0] = "z"
    model.graph.node.extend([helper.make_node("Softmax", ["z"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])])
    return model


def test_regression_heads_are_not_classes():
    """Three scores per clip (a speech-quality model) and a face net's three heads (probability, box,
    landmarks): 2-D, but no Softmax makes them classes, so every output is scored by fidelity; the
    user may still say the first is classes."""
    ds = Dataset({"x": np.random.default_rng(0).standard_normal((N, 4)).astype(np.float32)})
    scores = _linear(np.random.default_rng(1).standard_normal((4, 3)))
    assert Evaluator(ds, reference=scores).metric_name == FIDELITY
    heads = _linear(np.eye(4))
    heads.graph.node.extend([helper.make_node("Sigmoid", ["logits"], ["prob"]),
                             helper.make_node("Mul", ["logits", "logits"], ["box"])])
    heads.graph.output.insert(0, helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4]))
    heads.graph.output.append(helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4]))
    evaluator = Evaluator(ds, reference=heads)
    assert evaluator.metric_name == FIDELITY and evaluator.evaluate(heads).accuracy == 1.0
    noisy = onnx.ModelProto()
    noisy.CopyFrom(heads)
    noisy.graph.node[-1].op_type = "Add"  # the box head changes; the other two do not
    assert 0.0 < evaluator.evaluate(noisy).accuracy < 1.0
    with pytest.raises(InputError, match="says the first output holds class scores"):
        Evaluator(ds, reference=_linear(np.ones((4, 1))), metric=TOP1)


def _map(scale: float) -> onnx.ModelProto:
    """x [N, 4] -> scale * x as [N, 4, 1]: an output with samples on axis 0 that is not class logits."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Unsqueeze", ["m", "axes"], ["y"])], "map",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1])],
        [numpy_helper.from_array(np.array(scale, np.float32), "k"), numpy_helper.from_array(np.array([2], np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fidelity_is_bounded_and_sqnr_is_the_usual_ratio():
    ref = [[np.ones((4, 3), np.float32)]]
    assert fidelity(ref, ref) == 1.0
    assert fidelity([[np.full((4, 3), 1.1, np.float32)]], ref) == pytest.approx(20 / FIDELITY_DB)
    assert fidelity([[np.full((4, 3), np.nan, np.float32)]], ref) == 0.0
    assert fidelity([[np.array([1, 2])]], [[np.array([1, 3])]]) == 0.5  # integer outputs: equal elements
    assert sqnr_db(np.full(4, 1.1), np.ones(4)) == pytest.approx(20.0)


def test_every_evaluation_with_a_reference_measures_the_divergence_in_the_same_pass():
    """The search's unsaturating signal: 0 for the reference's own outputs, growing with the noise where
    top-1 stays at 100%; KL of the class distributions for class scores (logits or a Softmax's
    probabilities), the noise-to-signal power ratio for other outputs; None without a reference."""
    ds = _data()
    nudged = [_linear(np.eye(4) * s + 0.02 * k) for k, s in enumerate((1.0, 1.05, 1.3))]
    for reference, classes in ((IDENTITY, "logits"), (_softmax(np.eye(4)), "probabilities")):
        ev = Evaluator(ds, reference=reference)
        assert ev.class_output == classes
        assert ev.evaluate(reference).divergence == 0.0
    ev = Evaluator(_data(labels=False), reference=IDENTITY, metric=TOP1)
    results = [ev.evaluate(m) for m in nudged]
    assert [r.accuracy for r in results] == [1.0, 1.0, 1.0]  # top-1 saturates...
    assert 0.0 < results[1].divergence < results[2].divergence  # ...the divergence does not
    logits = np.concatenate(run_ort(IDENTITY, {"x": ds.inputs["x"]}))
    shifted = np.concatenate(run_ort(nudged[2], {"x": ds.inputs["x"]}))
    p, q = (np.exp(z) / np.exp(z).sum(-1, keepdims=True) for z in (logits, shifted))
    assert results[2].divergence == pytest.approx(np.mean(np.sum(p * np.log(p / q), -1)), rel=1e-4)
    maps = Evaluator(Dataset({"x": ds.inputs["x"]}), reference=_map(1.0))
    assert maps.class_output is None
    assert maps.evaluate(_map(1.1)).divergence == pytest.approx(0.01, rel=1e-3)  # |0.1 y|^2 / |y|^2
    assert Evaluator(ds).evaluate(IDENTITY).divergence is None


def _sorted_detector(w: np.ndarray) -> onnx.ModelProto:
    """Scores per anchor, the top three anchors' boxes gathered by TopK's indices (a YOLO26 export's
    tail), and a plain second output."""
    boxes = np.arange(24, dtype=np.float32).reshape(1, 8, 3) / 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top", "index"], axis=1),
             helper.make_node("Unsqueeze", ["index", "axis"], ["index3"]),
             helper.make_node("Expand", ["index3", "shape"], ["index_b"]),
             helper.make_node("Mul", ["scores", "one"], ["scaled"]),
             helper.make_node("Unsqueeze", ["scaled", "axis"], ["scaled3"]),
             helper.make_node("Mul", ["scaled3", "boxes"], ["weighted"]),
             helper.make_node("GatherElements", ["weighted", "index_b"], ["detections"], axis=1),
             helper.make_node("Relu", ["scores"], ["plain"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([3], np.int64), "k"),
             numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array([1, 1, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(boxes, "boxes")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 3, 3]),
                               helper.make_tensor_value_info("plain", TensorProto.FLOAT, ["N", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_ordered_by_topk_is_compared_where_it_is_selected_from():
    """A detector's boxes sorted by score reorder under any noise: its w8a8 kept every detection of a
    YOLO26 export and scored 3 dB on the sorted output. The float tensors the TopK branch reads from
    the inputs are compared instead (here the scores, and the boxes weighted by them), the plain
    output as before; a model that does not compute them is refused in one line."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    reference = _sorted_detector(w)
    assert selection_sources(reference) == {0: ["weighted", "scores"]}
    noisy = _sorted_detector(w + 0.01 * rng.standard_normal((4, 8)).astype(np.float32))
    data = Dataset({"x": rng.standard_normal((64, 4)).astype(np.float32)})
    evaluator = Evaluator(data, reference=reference)
    names = ("weighted", "scores", "plain")

    def tensors(model):
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names[:2])
        return dict(zip(["detections", "plain", *names[:2]], run_ort(exposed, {"x": data.inputs["x"]})))

    ref, out = tensors(reference), tensors(noisy)
    expected = np.mean([min(max(sqnr_db(out[n], ref[n]), 0), FIDELITY_DB) / FIDELITY_DB
                        for n in names])
    assert evaluator.evaluate(noisy).accuracy == pytest.approx(expected)
    assert evaluator.evaluate(reference).accuracy == 1.0
    other = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["detections"]), helper.make_node("Relu", ["detections"], ["plain"])],
        "other", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("plain", TensorProto.FLOAT, ["N", 8])], [numpy_helper.from_array(w, "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="does not compute 'weighted'.*pass --metric"):
        evaluator.evaluate(other)
    with pytest.raises(InputError, match="is a session.*pass the model itself"):
        evaluator.evaluate(make_session(noisy))
