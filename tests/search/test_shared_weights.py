"""Layers that read one weight (an LSTM unrolled over time steps, tied embeddings) take one option together,
and the weight counts once in the model's size: captcha-whisperer's CRNN got 5-bit and 4-bit widths for one
LSTM weight at different steps, and its size counted the weight 20 times (274 MB "fp32" for a 19 MB file)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import haqc
from haqc.hw_targets import load_target, weight_bytes
from haqc.pipeline import cost_table, prepare
from haqc.precision import FP32

STEPS, WIDTH = 8, 96


def _unrolled() -> onnx.ModelProto:
    """x -> MatMul(own weight) -> STEPS x (MatMul(shared) + Tanh) -> MatMul(own weight)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32), n)
             for n in ("w_in", "w_shared", "w_out")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h_in"], name="in")]
    x = "h_in"
    for t in range(STEPS):
        nodes += [helper.make_node("MatMul", [x, "w_shared"], [f"m{t}"], name=f"step{t}"),
                  helper.make_node("Tanh", [f"m{t}"], [f"h{t}"])]
        x = f"h{t}"
    nodes.append(helper.make_node("MatMul", [x, "w_out"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "unrolled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shared_weight_counts_once_in_the_size():
    prepared = prepare(_unrolled())
    table = cost_table(prepared, load_target("edge"), "linear")
    fp32 = table.policy_cost([FP32] * table.n_layers)
    assert fp32["size"] == pytest.approx(3 * WIDTH * WIDTH * 4)
    steps = [i for i, l in enumerate(prepared.layers) if l.name.startswith("step")]
    assert [table.leaders[i] for i in steps] == [steps[0]] * STEPS


@pytest.mark.parametrize("strategy", ["ddpg", "greedy", "ilp", "random"])
def test_layers_sharing_a_weight_take_one_option(strategy, tmp_path):
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((32, WIDTH)).astype(np.float32)}
    result = haqc.compress(_unrolled(), target="edge", budgets={"size": "0.85x"}, data=data, calib_data=data,
                           strategy=strategy, episodes=4, finetune_epochs=0, output=str(tmp_path / "m.onnx"))
    policy = result.report.policy
    assert len({policy[f"step{t}"] for t in range(STEPS)}) == 1
    layers = prepare(_unrolled()).layers
    stored = {l.weight: weight_bytes(l, policy[l.name].w_bits) for l in layers}  # each weight once
    assert result.report.result.costs["size"] == pytest.approx(sum(stored.values()))
    assert result.report.result.meets_budget
