"""Fine-tuning's losses, data split and loop on small inline models that are not classifiers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from haqc.finetune import FinetuneConfig, Teacher, output_losses, split_holdout, trained_part
from haqc.evaluation import Evaluator
from haqc.pipeline import prepare
from haqc.policy import uniform_policy
from haqc.precision import Option
from haqc.quantizer import QuantizeOptions, Quantizer, finetune_export
from haqc.data import Dataset


def _graph(tail: list[str], shape: list[int]):
    names = ["x", *[f"t{k}" for k in range(len(tail))]]
    nodes = [helper.make_node(op, [names[k]], [names[k + 1]]) for k, op in enumerate(tail)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, shape)])
    return helper.make_model(graph)


@pytest.mark.parametrize(("tail", "shape", "kind", "distilled"), [
    ([], [4, 3], "mse", "x"),  # logits without a Softmax: matched as values (evaluation's rule for classes)
    (["Relu", "Softmax"], [4, 3], "kl", "t0"),  # the Softmax's input: a float32 softmax saturates
    (["Relu", "Softmax", "Identity", "Flatten"], [4, 3], "kl", "t3/logits"),  # the shape-only ops again
    (["Relu", "LogSoftmax"], [4, 3], "kl", "t0"),
    (["Relu"], [4, 1, 6, 6], "mse", "t0"),  # a map
    (["Relu", "Sigmoid"], [4, 1, 6, 6], "mse", "t1"),  # a heatmap is not a distribution along its rows
    (["Relu", "Softmax"], [4, 5, 7], "kl", "t0"),  # a sequence of class scores
])
def test_each_output_gets_the_loss_that_fits_it(tail, shape, kind, distilled):
    teacher = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    model = onnx.shape_inference.infer_shapes(_graph(tail, shape))
    part = trained_part(model)
    assert [o.name for o in part.model.graph.output] == [distilled]
    (loss,) = output_losses(part, [Teacher(teacher)], 4, labelled=False)
    assert loss.kind == kind
    if kind == "mse":
        assert loss.variance == pytest.approx(float(np.var(teacher)))


def test_a_softmax_between_reshapes_is_distilled_from_logits_in_the_outputs_layout():
    """The canonical form of an old-opset softmax over [N, T, C] is a Softmax on [N * T, C] between two
    reshapes (ppocrv4_rec): its input keeps no samples on axis 0, so fine-tuning found nothing to train.
    The logits are put back into the output's layout by the same reshapes and distilled along C."""
    flat, back = (numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("flat", [-1, 7]), ("back", [-1, 5, 7])))
    w = np.random.default_rng(1).normal(size=(4, 7)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["r"]), helper.make_node("Reshape", ["r", "flat"], ["f"]),
         helper.make_node("Softmax", ["f"], ["p"], axis=1), helper.make_node("Reshape", ["p", "back"], ["y"])],
        "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 7])], [numpy_helper.from_array(w, "w"), flat, back])
    model = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])).model
    part = trained_part(model)
    x = np.random.default_rng(0).normal(size=(4, 5, 4)).astype(np.float32)
    from conftest import run_ort
    logits, = run_ort(part.model, {"x": x})
    np.testing.assert_allclose(logits, x @ w, rtol=1e-5, atol=1e-5)
    (loss,) = output_losses(part, [Teacher(logits)], 4, labelled=False)
    assert (loss.kind, loss.axis) == ("kl", -1)


def test_labels_train_only_the_first_output_and_odd_outputs_are_left_out():
    model = _graph(["Relu", "Softmax"], [4, 3])
    part = trained_part(model)
    assert [l.kind for l in output_losses(part, [Teacher(np.ones((4, 3), np.float32))], 4, True)] == ["ce"]
    assert output_losses(part, [Teacher(np.ones((4, 3), np.int64))], 4, False) == []
    assert output_losses(part, [Teacher(np.ones((1, 3), np.float32))], 4, False) == []  # not per sample


def test_a_saturated_softmax_still_trains():
    """Distilled through a float32 softmax's probabilities (their log clamped at 1e-12), a head that reads
    1.0 for one class has no gradient at all (ppocrv4_rec's CTC head on noise: no held-out step ever
    improved); distilled from the logits it does, and Adam takes a full step on it."""
    from haqc.finetune import OutputLoss, _output_loss

    target = torch.tensor([[40.0, 0.0, -5.0]])
    logits = torch.tensor([[30.0, 2.0, -5.0]], requires_grad=True)
    _output_loss(logits, target, OutputLoss(0, "kl", -1), temperature=1.0).backward()
    assert float(logits.grad.abs().sum()) > 0
    through = torch.tensor([[30.0, 2.0, -5.0]], requires_grad=True)
    probs, teacher = torch.softmax(through, -1), torch.softmax(target, -1)
    student = torch.log_softmax(torch.log(probs.clamp_min(1e-12)), -1)
    reference = torch.log_softmax(torch.log(teacher.clamp_min(1e-12)), -1)
    (reference.exp() * (reference - student)).sum().backward()
    assert float(through.grad.abs().sum()) == 0


def test_the_held_out_part_is_seeded_and_apart():
    fit, held = split_holdout(1000, 0.1, seed=3)
    assert len(held) == 100 and len(fit) == 900 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(held, split_holdout(1000, 0.1, seed=3)[1])
    fit, held = split_holdout(20, 0.1, seed=0)  # too small to spare a held-out batch: scored on all of it
    assert torch.equal(fit, held) and len(fit) == 20


def _detector(seed: int = 0):
    """A tiny multi-output model: a sigmoid heatmap [N, 1, 12, 12], 'boxes' [N, 2, 12, 12] and
    'landmarks' [N, 4, 12, 12] from two convolutions, with fixed random weights."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    inits = [init("w1", [8, 3, 3, 3], 0.3), init("b1", [8], 0.1), init("w2", [8, 8, 3, 3], 0.2), init("b2", [8], 0.1),
             init("wh", [1, 8, 1, 1], 0.5), init("wb", [2, 8, 1, 1], 5.0), init("wl", [4, 8, 1, 1], 0.05)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "wh"], ["h"], name="heat"),
             helper.make_node("Sigmoid", ["h"], ["heatmap"]),
             helper.make_node("Conv", ["r2", "wb"], ["boxes"], name="boxes"),
             helper.make_node("Conv", ["r2", "wl"], ["landmarks"], name="landmarks")]
    n = "N"
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 12, 12])],
                              [helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, [n, 1, 12, 12]),
                               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 2, 12, 12]),
                               helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, [n, 4, 12, 12])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_label_free_fine_tuning_of_a_detector_ends_no_worse_than_it_started():
    """Every output is distilled, each by its error relative to fp32's variance (the boxes' scale,
    100x the landmarks', does not drown them); the best held-out step is kept, so the outputs end
    no further from fp32 than the quantized model's, and the label-free signal no lower."""
    prepared = prepare(_detector())
    rng = np.random.default_rng(1)
    train = Dataset({"x": rng.normal(size=(160, 3, 12, 12)).astype(np.float32)})
    val = Dataset({"x": rng.normal(size=(64, 3, 12, 12)).astype(np.float32)})
    quantizer = Quantizer.calibrated(prepared, train, QuantizeOptions())
    policy = uniform_policy(prepared.layers, Option(4, 6))
    before = quantizer.export(policy)
    after = finetune_export(quantizer, policy, train, FinetuneConfig(epochs=8, batch_size=32, seed=0))
    reference = Evaluator(val, reference=prepared.model)
    fp32 = reference.reference_outputs

    def errors(model):
        from haqc.evaluation import make_session, run_batches
        out = run_batches(make_session(model), val)
        return [float(np.mean((out[0][k] - fp32[0][k]) ** 2) / np.var(fp32[0][k])) for k in range(3)]

    was, now = errors(before), errors(after)
    assert sum(now) <= sum(was), (was, now)
    assert reference.evaluate(after).accuracy >= reference.evaluate(before).accuracy


def test_a_model_the_executor_cannot_run_is_quantized_without_fine_tuning(caplog):
    """An op ONNX Runtime runs but haqc's PyTorch executor does not (Softsign here; slanet_table's Loop in
    the corpus) leaves fine-tuning out, said once before any work: compress ran its whole search
    and then failed on it."""
    import haqc

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Softsign", ["y"], ["out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((64, 16)).astype(np.float32)}
    with caplog.at_level("WARNING"):
        quantized = haqc.quantize(model, bits="w4a8", calib_data=data, data=data, train_data=data)
        compressed = haqc.compress(model, budgets={"size": "0.8x"}, strategy="uniform", data=data, train_data=data,
                                   pin_first=False, pin_last=False)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fine-tuning skipped")]
    assert len(skipped) == 2 and "'Softsign' (node" in skipped[0]
    assert quantized.finetuned is None and quantized.kept is None
    assert compressed.report.result.accuracy_finetuned is None and compressed.report.result.meets_budget



def test_a_training_batch_holds_at_most_the_activation_budget():
    """dnsmos_sig_bak_ovr's layers read and write 83M activation elements per 9 s clip: 64 clips a step
    grew past 20 GB; the batch is cut to what ACTIVATION_BYTES holds, and small models keep theirs."""
    from dataclasses import replace

    from conftest import EXAMPLE
    from haqc.finetune import ACTIVATION_BYTES, BYTES_PER_ELEMENT, training_batch

    layers = prepare(str(EXAMPLE)).layers
    assert training_batch(layers, 64) == 64  # the example: a few thousand elements a digit
    big = [replace(layer, input_elems=40_000_000, output_elems=43_000_000) for layer in layers[:1]]
    batch = training_batch(big, 64)
    assert batch == ACTIVATION_BYTES // (BYTES_PER_ELEMENT * 83_000_000) == 6
    assert training_batch([replace(big[0], input_elems=10**10)], 64) == 1  # one sample at least


@pytest.mark.parametrize("fixed", [1, 2])
def test_a_model_that_fixes_its_batch_trains_whole_batches(monkeypatch, fixed):
    """A model whose input and reshapes fix the batch at one runs one sample at a time; a step adds
    up a batch of them, so it follows the data, not one sample's noise (hello_deepa_npm and cntk_mnist
    trained one sample a step), and the outputs end closer to fp32's. At a fixed batch of two, an odd
    sample left over is not fed (it would not fit the model's reshapes)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 12)).astype(np.float32) / 4, "w1"),
             numpy_helper.from_array(np.array([fixed, 12], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((12, 5)).astype(np.float32) / 3, "w2")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "w2"], ["y"])],
        "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [fixed, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [fixed, 5])], inits)
    prepared = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    train = Dataset({"x": rng.normal(size=(193, 16)).astype(np.float32)})
    val = Dataset({"x": rng.normal(size=(64, 16)).astype(np.float32)})
    quantizer = Quantizer.calibrated(prepared, train, QuantizeOptions())
    policy = uniform_policy(prepared.layers, Option(3, 8))
    steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), adam_step(self, *a, **k))[1])
    before = quantizer.export(policy)
    after = finetune_export(quantizer, policy, train, FinetuneConfig(epochs=20, batch_size=32, lr=1e-3, seed=0))
    assert 0 < len(steps) <= 20 * 6  # 176 fitted samples: 6 steps of 32 an epoch, not 176
    reference = Evaluator(val, reference=prepared.model)
    assert reference.evaluate(after).accuracy > reference.evaluate(before).accuracy


def test_a_detector_that_sorts_its_boxes_fine_tunes_the_graph_before_the_selection():
    """An end-to-end YOLO26 export ends in TopK + GatherElements, which haqc's executor does not run and
    which have no gradient to follow: fine-tuning skipped it. It now trains and distils the graph up to
    what the TopK selects from (what the label-free score compares), and the written model keeps its
    TopK, with the tuned weights."""
    import haqc

    rng = np.random.default_rng(5)
    boxes = rng.standard_normal((1, 8, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top", "index"], axis=1),
             helper.make_node("Unsqueeze", ["index", "axis"], ["index3"]),
             helper.make_node("Expand", ["index3", "shape"], ["index_b"]),
             helper.make_node("Unsqueeze", ["scores", "axis"], ["scores3"]),
             helper.make_node("Mul", ["scores3", "boxes"], ["weighted"]),
             helper.make_node("GatherElements", ["weighted", "index_b"], ["detections"], axis=1)]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 16)).astype(np.float32) / 2, "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32) / 4, "w2"),
             numpy_helper.from_array(np.array([3], np.int64), "k"), numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array([1, 1, 3], np.int64), "shape"), numpy_helper.from_array(boxes, "boxes")]
    graph = helper.make_graph(nodes, "sorted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((64, 6)).astype(np.float32)}
    train = {"x": rng.standard_normal((256, 6)).astype(np.float32)}
    result = haqc.quantize(model, bits="w3a8", calib_data=data, data=data, train_data=train, finetune_epochs=20)
    assert result.finetuned is not None and result.kept == "finetuned"
    assert result.finetuned.accuracy > result.quantized.accuracy
    assert [n.op_type for n in result.model.graph.node].count("TopK") == 1


def test_nothing_to_gain_is_not_trained(monkeypatch):
    """Light resnet50's random weights end in a softmax that is one-hot in float32: the held-out KL starts
    at exactly 0, no step can score better, and the longer patience spent the whole 300 s budget for
    nothing. Such a fine-tune takes no step."""
    rng = np.random.default_rng(0)
    w = np.zeros((4, 5), np.float32)
    w[:, 0] = 1000 + rng.standard_normal(4).astype(np.float32)  # class 0 wins by thousands on positive inputs
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])],
                              "onehot", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(w, "w")])
    prepared = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    train = Dataset({"x": (np.abs(rng.standard_normal((64, 4))) + 0.5).astype(np.float32)})
    quantizer = Quantizer.calibrated(prepared, train, QuantizeOptions())
    steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), adam_step(self, *a, **k))[1])
    finetune_export(quantizer, uniform_policy(prepared.layers, Option(8, 8)), train, FinetuneConfig(epochs=5, seed=0))
    assert steps == []


def test_a_time_major_output_is_trained_with_its_samples_on_axis_1():
    """A CRNN's output is [steps, batch, classes] (captcha-whisperer's, a CTC head): the fp32 outputs of
    the training batches, 18 samples then a remainder, did not concatenate on axis 0, and fine-tuning
    ended in a numpy traceback after the whole search. Each output's samples are found on whichever axis
    holds them and moved first, so it trains, and its score moves from the quantized model's."""
    import haqc

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"]),  # [N, T, C]
             helper.make_node("Transpose", ["z"], ["logits"], perm=[1, 0, 2])]  # [T, N, C]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 16)).astype(np.float32) / 2, "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32) / 4, "w2")]
    graph = helper.make_graph(nodes, "time_major", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [7, "N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((40, 7, 6)).astype(np.float32)}
    train = {"x": rng.standard_normal((250, 7, 6)).astype(np.float32)}  # not a multiple of any batch
    result = haqc.quantize(model, bits="w3a8", calib_data=data, data=data, train_data=train, finetune_epochs=10)
    assert result.finetuned is not None and result.finetuned.accuracy != result.quantized.accuracy
    assert result.kept == "finetuned"


def test_a_fine_tune_that_trains_nothing_reports_no_fine_tuned_model(caplog):
    """captcha-whisperer with 108 training samples: "no output can be trained against ... skipped", and
    the summary still printed a "finetuned" row, equal to the quantized one and marked written."""
    import haqc

    rng = np.random.default_rng(4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("ReduceSum", ["h"], ["total"], keepdims=0)], "scalar",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((16, 6)).astype(np.float32)}
    result = haqc.quantize(model, bits="w4a8", calib_data=data, data=data, train_data=data, finetune_epochs=2)
    assert "fine-tuning skipped" in caplog.text
    assert result.finetuned is None and result.kept is None and result.quantized is not None
