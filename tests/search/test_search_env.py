"""The Gymnasium-style environment: spaces, the step protocol, pins, rewards and the evaluation cache."""
from __future__ import annotations

import numpy as np
import pytest
from search_helpers import FP32_ACCURACY, N_LAYERS, Evaluator, synthetic_accuracy, synthetic_problem, w8a8

from haqc.errors import InputError
from haqc.layers import STATE_FEATURES
from haqc.precision import Option
from haqc.search import QuantEnv


def run_episode(env: QuantEnv, actions):
    obs, info = env.reset()
    steps = []
    for action in actions:
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, info))
        obs = next_obs
    return steps


def test_spaces_and_reset():
    env = QuantEnv(synthetic_problem())
    obs, info = env.reset()
    assert obs.shape == env.observation_space.shape == (len(STATE_FEATURES) + 2,)
    assert env.action_space.shape == (1,)
    assert env.observation_space.contains(obs) and info == {}
    assert obs[-2:].tolist() == [1.0, 1.0]  # weight step; the "previous action" of the first step


def test_linear_mode_takes_weights_then_activations_per_layer():
    env = QuantEnv(synthetic_problem(latency_fraction=1.0, pin_first=False, pin_last=False))
    actions = np.linspace(0.0, 1.0, 2 * N_LAYERS)
    steps = run_episode(env, actions)
    assert len(steps) == env.steps_per_episode == 2 * N_LAYERS
    for t, (obs, reward, terminated, truncated, info) in enumerate(steps):
        layer, is_weight = t // 2, t % 2 == 0
        assert info["layer"] == f"layer{layer}" and info["kind"] == ("weight" if is_weight else "activation")
        assert obs[:-2].tolist() == env.problem.state_matrix[layer].tolist()
        assert obs[-2] == float(is_weight)  # 1 on the weight step (HAQ's comment, not its inverted code)
        assert obs[-1] == pytest.approx(1.0 if t == 0 else actions[t - 1])
        assert env.observation_space.contains(obs)
        assert terminated == (t == len(steps) - 1) and not truncated
        assert reward == (0.0 if not terminated else info["outcome"].reward)
    outcome = steps[-1][4]["outcome"]
    chosen = [s[4]["bits"] for s in steps]
    assert outcome.policy == {f"layer{i}": Option(chosen[2 * i], chosen[2 * i + 1]) for i in range(N_LAYERS)}
    assert outcome.accuracy == synthetic_accuracy(outcome.policy)
    assert outcome.reward == pytest.approx(0.1 * (outcome.accuracy - FP32_ACCURACY) * 100)
    assert outcome.meets_budget


def test_pins_and_budget_apply_at_the_end():
    env = QuantEnv(synthetic_problem(latency_fraction=0.5))
    outcome = run_episode(env, [0.0] * env.steps_per_episode)[-1][4]["outcome"]
    assert outcome.policy["layer0"] == outcome.policy["layer5"] == Option(8, 8)
    assert {b.w_bits for n, b in outcome.policy.items() if n not in ("layer0", "layer5")} == {2}
    outcome = run_episode(env, [1.0] * env.steps_per_episode)[-1][4]["outcome"]
    assert outcome.meets_budget
    assert outcome.costs["latency"] <= env.problem.limits["latency"] < w8a8(env.problem.costs)["latency"]


def test_kmeans_mode_is_one_weight_step_per_layer():
    all8 = w8a8(synthetic_problem().costs)
    env = QuantEnv(synthetic_problem(kmeans=True, limits={"size": 0.5 * all8["size"]}))
    steps = run_episode(env, [0.5] * N_LAYERS)
    assert env.steps_per_episode == N_LAYERS
    assert all(s[4]["kind"] == "weight" and s[0][-2] == 1.0 for s in steps)
    outcome = steps[-1][4]["outcome"]
    assert all(b.a_bits is None for b in outcome.policy.values())
    assert outcome.costs["size"] <= 0.5 * all8["size"]


def test_repeated_policies_are_evaluated_once():
    evaluator = Evaluator()
    env = QuantEnv(synthetic_problem(evaluate=evaluator))
    for _ in range(3):
        run_episode(env, [0.3] * env.steps_per_episode)
    run_episode(env, [0.9] * env.steps_per_episode)
    assert evaluator.calls == env.evaluations == 2


def test_bad_limits_are_input_errors():
    with pytest.raises(InputError, match="energy budget needs a target that estimates energy"):
        synthetic_problem(limits={"energy": 1.0})
    with pytest.raises(InputError, match="positive"):
        synthetic_problem(limits={"latency": 0.0})


def test_evaluator_must_return_a_fraction():
    env = QuantEnv(synthetic_problem(evaluate=lambda policy: 90.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_episode(env, [0.5] * env.steps_per_episode)
