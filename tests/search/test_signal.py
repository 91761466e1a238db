"""The search's signal that does not saturate: probes read the divergence, the reward may too.

The synthetic model here saturates as the issue's classifier did: its top-1 stays at 100% until the
summed noise passes a threshold, so one lowered layer alone always reads 100%. Its divergence is the
summed noise power of the layers (sensitivity * 4^-bits each), which a probe does see.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from haqc.errors import InputError
from haqc.policy import Policy
from haqc.search import QuantEnv, search
from haqc.search.score import Score, as_score
from search_helpers import N_LAYERS, synthetic_problem

SENSITIVITY = np.array([1.0, 40.0, 1.0, 40.0, 1.0, 1.0])  # layers 1 and 3 matter


def noise(policy: Policy) -> float:
    """Summed output noise power of the policy: each layer's sensitivity * 4^-bits per tensor."""
    total = 0.0
    for s, option in zip(SENSITIVITY, policy.values()):
        a = option.a_bits if option.a_bits is not None else 16
        total += s * (4.0 ** -option.w_bits + 4.0 ** -a)
    return total


def saturating(policy: Policy) -> Score:
    """Top-1 1.0 until the noise passes a threshold, then it falls; the divergence is the noise."""
    d = noise(policy)
    return Score(1.0 if d < 0.1 else max(0.0, 1.0 - 3 * (d - 0.1)), d)


def metric_only(policy: Policy) -> float:
    return saturating(policy).metric


def test_scores_check_their_range_and_numbers_become_scores():
    assert as_score(0.5) == Score(0.5) and as_score(Score(0.5, 0.1)) == Score(0.5, 0.1)
    assert Score(1.0).fidelity == 1.0 and Score(1.0, 0.0).fidelity == 1.0
    assert math.isclose(Score(1.0, 0.5).fidelity, math.exp(-0.5))
    for bad in (dict(metric=1.5), dict(metric=float("nan")), dict(metric=0.5, divergence=-1.0),
                dict(metric=0.5, divergence=float("nan"))):
        with pytest.raises(ValueError):
            Score(**bad)


def test_probes_read_the_divergence_where_the_metric_saturates():
    env = QuantEnv(synthetic_problem(latency_fraction=0.5, evaluate=saturating, fp32_accuracy=1.0))
    top = env.space.most_precise()
    probe = top.copy()
    probe[1] = env.space.layers[1].column(5, 8)  # the sensitive layer's weights at the probe width
    metric, loss = env.accuracies([probe])[0], env.losses([probe])[0]
    assert metric == 1.0  # the saturated metric sees nothing
    assert loss == pytest.approx(noise(env.policy(probe)))  # the divergence does
    blind = QuantEnv(synthetic_problem(latency_fraction=0.5, evaluate=metric_only, fp32_accuracy=1.0))
    assert blind.losses([probe]) == [0.0]  # without a divergence: the metric's drop


@pytest.mark.parametrize("strategy", ["greedy", "ilp"])
def test_probing_strategies_beat_uniform_on_a_saturating_model(strategy):
    """With the divergence, the probes rank the layers the metric cannot: the sensitive layers stay wide,
    and the policy keeps more of the metric than uniform's at the same budget."""
    uniform = search(synthetic_problem(latency_fraction=0.5, evaluate=saturating, fp32_accuracy=1.0), "uniform")
    probed = search(synthetic_problem(latency_fraction=0.5, evaluate=saturating, fp32_accuracy=1.0), strategy)
    assert probed.meets_budget and uniform.meets_budget
    assert probed.accuracy >= uniform.accuracy
    bits = [o.w_bits for o in probed.policy.values()]
    assert min(bits[1], bits[3]) >= max(bits[2], bits[4])  # the sensitive layers keep at least the others' width


def test_divergence_is_the_loss_not_the_noise_floor():
    """Greedy's loss model grows 4x per bit below the probe width for divergences (noise power)."""
    result = search(synthetic_problem(latency_fraction=0.5, evaluate=saturating, fp32_accuracy=1.0), "greedy")
    assert result.evaluations == 2 * (N_LAYERS - 2) + 1
    assert all(e["divergence"] is not None for e in result.evaluated)


@pytest.mark.parametrize("reward", ["metric", "divergence", "both"])
def test_rewards(reward):
    env = QuantEnv(synthetic_problem(evaluate=saturating, fp32_accuracy=1.0, reward=reward))
    score = Score(0.9, 0.2)
    lost = {"metric": 0.1, "divergence": 1 - math.exp(-0.2), "both": 0.1 + 1 - math.exp(-0.2)}[reward]
    assert env.reward(score) == pytest.approx(-0.1 * 100 * lost)
    assert env.reward(Score(0.9)) == pytest.approx(-0.1 * 100 * 0.1)  # no divergence: the metric


def test_a_saved_search_keeps_its_divergences(tmp_path):
    """The checkpoint (torch's weights_only load) and the workdir's score file both keep the divergence."""
    problem = synthetic_problem(evaluate=saturating, fp32_accuracy=1.0, reward="both")
    first = search(problem, "ddpg", 4, seed=0, workdir=tmp_path)
    again = search(problem, "ddpg", 4, seed=0, workdir=tmp_path, resume=True)
    assert again.history == first.history and all(h["divergence"] > 0 for h in again.history)
    env = QuantEnv(problem)
    env.load_state_dict(QuantEnv(problem).state_dict() | {"cache": {(0,) * N_LAYERS: (0.5, 0.25)}, "evaluations": 1})
    assert env.scores([np.zeros(N_LAYERS, dtype=np.int64)]) == [Score(0.5, 0.25)]


def test_unknown_reward_is_refused():
    with pytest.raises(InputError, match="unknown reward"):
        synthetic_problem(reward="loss")
