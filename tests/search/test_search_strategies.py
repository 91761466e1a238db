"""Strategies end to end on the synthetic problem: determinism, resume, baselines, and DDPG's quality."""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch
from search_helpers import Evaluator, FP32_ACCURACY, N_LAYERS, grid_table, synthetic_accuracy, synthetic_problem, w8a8

from haqc.errors import BudgetUnreachableError, InputError
from haqc.search import DDPGConfig, SearchProblem, STATE_FILE, QuantEnv, search
from haqc.search.budget import violations

SHORT = 10  # episodes: 2 of warm-up (clamped), then learning


def comparable(result):
    """Everything but the wall-clock time."""
    return {k: v for k, v in dataclasses.asdict(result).items() if k != "seconds"}


def test_ddpg_is_deterministic_per_seed():
    first = search(synthetic_problem(), "ddpg", SHORT, seed=7)
    again = search(synthetic_problem(), "ddpg", SHORT, seed=7)
    other = search(synthetic_problem(), "ddpg", SHORT, seed=8)
    assert comparable(first) == comparable(again)
    assert first.history != other.history
    assert first.episodes == SHORT == len(first.history) and first.meets_budget
    entry = first.history[0]
    assert set(entry) == {"episode", "reward", "accuracy", "divergence", "costs", "columns", "options"}
    assert len(entry["columns"]) == len(entry["options"]) == N_LAYERS


@pytest.mark.parametrize(("strategy", "interrupt_at"), [("ddpg", 6), ("random", 4), ("greedy", 3)])
def test_resume_after_interrupt_ends_like_an_uninterrupted_run(tmp_path, strategy, interrupt_at):
    reference = search(synthetic_problem(), strategy, SHORT, seed=1, workdir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        search(synthetic_problem(evaluate=Evaluator(interrupt_at=interrupt_at)), strategy, SHORT, seed=1,
               workdir=tmp_path / "b")
    saved = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert saved["env"]["evaluations"] == interrupt_at - 1  # the state of the last completed episode (or probe)
    evaluator = Evaluator()
    resumed = search(synthetic_problem(evaluate=evaluator), strategy, SHORT, seed=1,
                     workdir=tmp_path / "b", resume=True)
    assert comparable(resumed) == comparable(reference)
    assert evaluator.calls == reference.evaluations - (interrupt_at - 1)  # cached evaluations are not repeated


def test_resuming_a_finished_search_evaluates_nothing(tmp_path):
    done = search(synthetic_problem(), "ddpg", 4, seed=0, workdir=tmp_path)
    evaluator = Evaluator()
    again = search(synthetic_problem(evaluate=evaluator), "ddpg", 4, seed=0, workdir=tmp_path, resume=True)
    assert comparable(again) == comparable(done) and evaluator.calls == 0


def test_resume_without_state_starts_afresh(tmp_path):
    fresh = search(synthetic_problem(), "random", 3, seed=0, workdir=tmp_path / "new", resume=True)
    assert fresh.episodes == 3 and (tmp_path / "new" / STATE_FILE).exists()


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        (dict(problem=synthetic_problem(latency_fraction=0.6)), "budget"),
        (dict(seed=1), "seed"),
        (dict(strategy="random"), "strategy"),
        (dict(problem=synthetic_problem(pin_last=False)), "options"),
    ],
)
def test_resume_refuses_another_problem(tmp_path, change, differs):
    search(synthetic_problem(), "ddpg", 2, seed=0, workdir=tmp_path)
    args = dict(problem=synthetic_problem(), strategy="ddpg", seed=0) | change
    expected = f"`resume`: the `workdir` was made for another model or other options \\({differs}"
    with pytest.raises(InputError, match=expected):
        search(args["problem"], args["strategy"], 2, seed=args["seed"], workdir=tmp_path, resume=True)


def test_uniform_picks_the_highest_bitwidth_within_budget():
    problem = synthetic_problem(latency_fraction=0.5)
    result = search(problem, "uniform")
    assert result.evaluations == 1 and result.episodes == 1 and result.meets_budget
    env = QuantEnv(problem)
    widths = {b.w_bits for name, b in result.policy.items() if name not in ("layer0", f"layer{N_LAYERS - 1}")}
    assert len(widths) == 1
    (b,) = widths
    assert result.policy["layer0"].w_bits == 8  # pinned
    wider = env.space.pin(np.array([layer.uniform(b + 1) for layer in env.space.layers]))
    assert violations(problem.costs.cost(wider), problem.limits)
    assert b == 5  # latency ~ w * a: 5 * 5 / 64 fits in half, 6 * 6 / 64 does not


def test_ilp_finds_the_exact_optimum_of_its_sensitivity_model():
    """Probes with one layer lowered at a time (weights, then activations), then the integer program:
    on the synthetic problem (drops add up exactly) it is the best policy there is, found exhaustively."""
    problem = synthetic_problem(latency_fraction=0.5)
    ilp = search(problem, "ilp")
    free = N_LAYERS - 2
    assert ilp.meets_budget and ilp.evaluations <= free * (6 + 6) + 1
    assert ilp.accuracy >= search(synthetic_problem(latency_fraction=0.5), "greedy").accuracy
    assert ilp.policy["layer1"].w_bits >= 6 and ilp.policy["layer3"].a_bits >= 6  # the sensitive layers
    env = QuantEnv(synthetic_problem(latency_fraction=0.5))
    # Exhaustive check on the layers that matter: no affordable single change of one layer scores higher.
    best = ilp.accuracy
    for i in range(1, N_LAYERS - 1):
        for option in env.space.layers[i].options:
            policy = {**ilp.policy, f"layer{i}": option}
            cost = problem.costs.policy_cost(list(policy.values()))
            if cost["latency"] <= problem.limits["latency"]:
                assert synthetic_accuracy(policy) <= best + 1e-12


def test_ilp_bounds_each_layer_on_a_target_that_takes_the_maximum():
    latency = np.broadcast_to(np.add.outer(np.arange(2, 9), np.arange(2, 9)).astype(float), (N_LAYERS, 7, 7))
    problem = synthetic_problem(limits={"latency": 12.0})
    maxed = SearchProblem(problem.layer_names, problem.state_matrix,
                          grid_table({"latency": latency}, combine=np.max), {"latency": 12.0},
                          Evaluator(), FP32_ACCURACY, pin_first=False, pin_last=False)
    result = search(maxed, "ilp")
    assert result.meets_budget and max(o.w_bits + o.a_bits for o in result.policy.values()) == 12


def test_ilp_is_exact_with_transitions_and_a_fitted_affine_total():
    """A measured target's table: fp32 / w8a8 per layer, chained integer layers saving the conversion
    between them (transitions), the model total scale * sum + rest. The ILP's policy is the best of
    all 2^6 policies under the budget, with costs as CostTable.cost states them."""
    import itertools

    from haqc.costs import CostTable, Transition
    from haqc.precision import FP32, Option

    int8 = Option(8, 8)
    fp32_t, int8_t = np.array([3.0, 2.0, 5.0, 4.0, 2.0, 1.0]), np.array([2.5, 1.9, 3.0, 3.5, 1.9, 0.8])
    drops = np.array([0.0, 0.02, 0.01, 0.03, 0.005, 0.0])
    saved = [Transition(i, i + 1, {"latency": np.array([[-0.7, 0.0], [0.0, 0.0]])}) for i in range(5)]
    table = CostTable([f"layer{i}" for i in range(6)], [(int8, FP32)] * 6,
                      {"latency": np.stack([int8_t, fp32_t], axis=1)}, transitions=saved,
                      combine=lambda per_layer: 0.8 * float(np.sum(per_layer)) + 1.5)

    def accuracy(policy):
        return FP32_ACCURACY - sum(d for d, o in zip(drops, policy.values()) if o == int8)

    limit = 0.8 * (fp32_t.sum() - 4.0) + 1.5
    problem = SearchProblem([f"layer{i}" for i in range(6)], np.zeros((6, 8), np.float32), table,
                            {"latency": limit}, Evaluator(accuracy), FP32_ACCURACY, pin_first=False, pin_last=False)
    result = search(problem, "ilp")
    feasible = [c for c in itertools.product((0, 1), repeat=6) if table.cost(np.array(c))["latency"] <= limit + 1e-9]
    best = max(accuracy({f"layer{i}": table.options[i][c[i]] for i in range(6)}) for c in feasible)
    assert result.meets_budget and result.accuracy == pytest.approx(best)


def test_random_gets_as_many_episodes_as_ddpg():
    ddpg = search(synthetic_problem(), "ddpg", SHORT, seed=0)
    rand = search(synthetic_problem(), "random", SHORT, seed=0)
    assert rand.episodes == ddpg.episodes == len(rand.history) == SHORT
    assert rand.evaluations <= SHORT and rand.meets_budget


def test_greedy_meets_the_budget_with_few_evaluations():
    uniform = search(synthetic_problem(latency_fraction=0.5), "uniform")
    greedy = search(synthetic_problem(latency_fraction=0.5), "greedy")
    assert greedy.meets_budget
    assert greedy.evaluations <= 2 * (N_LAYERS - 2) + 1  # two probes per unpinned layer (weights, activations), then the result
    assert greedy.accuracy > uniform.accuracy  # it keeps the sensitive layers wide


def test_greedy_takes_free_lowerings_when_no_probe_moves_the_score():
    """Probes that lose nothing (a saturated softmax, as on light resnet50 with random weights) make every
    lowering free: greedy still meets the budget, with no division-by-zero warning on the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = search(synthetic_problem(latency_fraction=0.5, evaluate=Evaluator(lambda policy: FP32_ACCURACY)),
                        "greedy")
    assert result.meets_budget and result.accuracy == FP32_ACCURACY


def test_ddpg_beats_uniform_when_layers_differ_in_sensitivity():
    problem = synthetic_problem(latency_fraction=0.5)
    uniform = search(problem, "uniform")
    ddpg = search(synthetic_problem(latency_fraction=0.5), "ddpg", 60, seed=0)
    assert ddpg.meets_budget
    assert ddpg.accuracy >= uniform.accuracy
    best = ddpg.history[ddpg.best_episode]
    assert best["reward"] == max(h["reward"] for h in ddpg.history) == ddpg.reward


def test_ddpg_starts_from_greedys_policy_and_the_ilp_on_its_probes():
    problem = synthetic_problem(latency_fraction=0.5)
    greedy = search(problem, "greedy")
    ddpg = search(synthetic_problem(latency_fraction=0.5), "ddpg", SHORT, seed=0)
    assert ddpg.history[0]["columns"] == greedy.history[0]["columns"]  # the same probes, the same policy
    assert ddpg.accuracy >= greedy.accuracy and ddpg.episodes == SHORT
    probes = 2 * (N_LAYERS - 2)  # each unpinned layer's weights alone, then its activations alone
    assert ddpg.evaluations <= probes + SHORT
    haq = search(synthetic_problem(latency_fraction=0.5), "ddpg", SHORT, seed=0, config=DDPGConfig.haq())
    assert haq.evaluations <= SHORT  # the published agent probes nothing


def test_progress_is_reported_after_each_episode():
    calls = []
    search(synthetic_problem(), "random", 5, seed=0, progress=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5]
    rewards = [c[1] for c in calls]
    assert rewards == sorted(rewards) and set(calls[-1][2]) == {"latency", "size"}


def test_unreachable_budget_fails_before_any_evaluation():
    evaluator = Evaluator()
    with pytest.raises(BudgetUnreachableError, match="latency budget .* is unreachable"):
        search(synthetic_problem(latency_fraction=0.01, evaluate=evaluator), "ddpg", SHORT)
    assert evaluator.calls == 0


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown search strategy 'anneal'"):  # (ilp exists now)
        search(synthetic_problem(), "anneal")
    with pytest.raises(InputError, match="at least one episode"):
        search(synthetic_problem(), "ddpg", 0)
    with pytest.raises(InputError, match="`resume` needs the `workdir`"):
        search(synthetic_problem(), "ddpg", resume=True)


def test_kmeans_search_returns_float_activations():
    problem = synthetic_problem(kmeans=True, limits={"size": 0.4 * w8a8(synthetic_problem().costs)["size"]})
    result = search(problem, "ddpg", SHORT, seed=0)
    assert result.meets_budget and all(b.a_bits is None for b in result.policy.values())
    assert all(name.startswith("kmeans") for h in result.history for name in h["options"])
    assert np.mean([b.w_bits for b in result.policy.values()]) < 8


def test_ilp_at_ddpgs_probing_cost_solves_greedys_loss_model():
    """IlpConfig(probes="modelled"): the integer program on two probes per layer, for comparisons at equal
    evaluations; every width probed (the default) costs 12 per layer on a 2..8 grid."""
    from haqc.search.strategies.ilp import IlpConfig

    full = search(synthetic_problem(latency_fraction=0.5), "ilp")
    cheap = search(synthetic_problem(latency_fraction=0.5), "ilp", config=IlpConfig(probes="modelled"))
    assert cheap.evaluations == 2 * (N_LAYERS - 2) + 1 < full.evaluations == 12 * (N_LAYERS - 2) + 1
    assert cheap.meets_budget and full.meets_budget


def test_what_native_code_prints_during_the_integer_program_is_discarded(capfd):
    """HiGHS printed a debug line between compress's progress bars; the terminal keeps everything else."""
    from haqc.search.ilp import native_stdout_silenced

    with native_stdout_silenced():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n"
