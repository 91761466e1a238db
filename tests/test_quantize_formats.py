"""A policy mixing formats on the bundled example: it exports, fine-tunes and runs in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from haqc.evaluation import Evaluator, make_session, predictions
from haqc.finetune import FinetuneConfig
from haqc.precision import FP32, parse_option
from haqc.quantizer import QuantizeOptions, Quantizer


def _mixed(layers) -> dict:
    """k-means codebooks on the first third, integer QDQ on the middle, float (fp32, fp16) at the ends."""
    n = len(layers)
    policy = {}
    for i, layer in enumerate(layers):
        if i == 0 or i == n - 1:
            policy[layer.name] = FP32 if i == 0 else parse_option("fp16")
        elif i < n // 3:
            policy[layer.name] = parse_option("kmeans4")
        else:
            policy[layer.name] = parse_option("w4a8" if i % 2 else "w8a8")
    return policy


def test_kmeans_linear_and_float_layers_export_finetune_and_run(example):
    prepared = example["prepared"]
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    policy = _mixed(prepared.layers)
    assert {o.name for o in policy.values()} == {"fp32", "fp16", "kmeans4", "w4a8", "w8a8"}
    val = example["val"].subset(400, seed=0)
    evaluator = Evaluator(val)
    exported = quantizer.export(policy)
    onnx.checker.check_model(exported)
    ops = {n.op_type for n in exported.graph.node}
    assert {"QuantizeLinear", "Gather", "BitShift", "Cast"} <= ops  # QDQ, codebook expansion, fp16 island
    before = evaluator.evaluate(exported).accuracy
    # The torch simulation of the merged plan is what ONNX Runtime runs.
    simulated = quantizer.simulate(policy).module.eval()
    with torch.no_grad():
        sim = simulated(**{k: torch.from_numpy(v) for k, v in val.inputs.items()}).numpy().argmax(-1)
    assert np.mean(predictions(make_session(exported), val).argmax(-1) == sim) >= 0.99
    train = example["train"].subset(512, seed=0)
    tuned = quantizer.finetune(policy, train.inputs, train.labels, FinetuneConfig(epochs=1, lr=1e-3, holdout=0.0))
    onnx.checker.check_model(tuned)
    assert {n.op_type for n in tuned.graph.node} == ops  # the same formats, written again
    after = evaluator.evaluate(tuned).accuracy
    assert before >= 0.9 and after >= before - 0.01, (before, after)


@pytest.mark.parametrize("name", ["int8-dynamic", "w4-block32", "w4-weight-only", "kmeans3"])
def test_uniform_weight_formats_on_the_example_score(example, name):
    """Formats the example's layers can take (its Gemm head for the MatMul-only ones) keep top-1."""
    prepared = example["prepared"]
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    option = parse_option(name)
    matmul_only = name in ("int8-dynamic", "w4-block32")
    policy = {l.name: option if (l.op == "Gemm" or not matmul_only) else FP32 for l in prepared.layers}
    val = example["val"].subset(400, seed=0)
    evaluator = Evaluator(val)
    fp32 = evaluator.evaluate(prepared.model).accuracy
    assert evaluator.evaluate(quantizer.export(policy)).accuracy >= fp32 - 0.03
