"""Parallel evaluation: rounds of episodes, probes in batches, and the Ray pool (one local Ray per module).

The round logic is checked with ``InOrder`` (a pool's answers, computed in this process); the Ray pool
must give the same answers as ``InOrder`` of its size, and a pool of one the serial search's.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from search_helpers import Evaluator, ExitsAt, synthetic_accuracy, synthetic_problem

from haqc.errors import InputError, WorkerError
from haqc.search import STATE_FILE, DDPGConfig, search
from haqc.search.parallel import InOrder

SHORT = 10  # episodes: 2 of warm-up, then learning


def comparable(result):
    return {k: v for k, v in dataclasses.asdict(result).items() if k != "seconds"}


def run(strategy: str, parallel=None, seed: int = 5, evaluate=None, **options):
    problem = synthetic_problem(evaluate=evaluate)
    return search(dataclasses.replace(problem, parallel=parallel), strategy, SHORT, seed=seed, **options)


@pytest.mark.parametrize("strategy", ["ddpg", "random", "greedy", "ilp", "uniform"])
def test_a_round_of_one_is_the_serial_search(strategy):
    assert comparable(run(strategy, InOrder(synthetic_accuracy))) == comparable(run(strategy))


@pytest.mark.parametrize("strategy", ["random", "greedy", "ilp"])
def test_random_and_probing_strategies_do_not_depend_on_the_round_size(strategy):
    assert comparable(run(strategy, InOrder(synthetic_accuracy, workers=3))) == comparable(run(strategy))


def test_ddpg_in_rounds_acts_before_it_learns():
    rounds = run("ddpg", InOrder(synthetic_accuracy, workers=2))
    assert comparable(rounds) == comparable(run("ddpg", InOrder(synthetic_accuracy, workers=2)))
    assert rounds.history[:2] == run("ddpg").history[:2]  # warm-up: random actions, same draws
    assert rounds.history != run("ddpg").history  # afterwards the second episode of a round has not learned yet


def test_resume_in_rounds_ends_like_an_uninterrupted_run(tmp_path):
    pool, haq = InOrder(synthetic_accuracy, workers=2), DDPGConfig.haq()
    reference = run("ddpg", pool, config=haq)
    with pytest.raises(KeyboardInterrupt):  # the 6th evaluation: the second episode of the third round
        run("ddpg", InOrder(Evaluator(interrupt_at=6), workers=2), workdir=tmp_path, config=haq)
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert len(saved["history"]) == 4  # two complete rounds
    assert comparable(run("ddpg", pool, workdir=tmp_path, resume=True, config=haq)) == comparable(reference)
    with pytest.raises(InputError, match="episodes per round"):  # another round size takes another course
        run("ddpg", InOrder(synthetic_accuracy, workers=3), workdir=tmp_path, resume=True, config=haq)


@pytest.mark.parametrize("interrupt_at", [3, 6, 9])  # a probe, a warm-start episode, an agent's episode
def test_a_warm_started_search_resumed_in_rounds_ends_like_an_uninterrupted_run(tmp_path, interrupt_at):
    pool = InOrder(synthetic_accuracy, workers=2)
    reference = run("ddpg", pool)
    with pytest.raises(KeyboardInterrupt):
        run("ddpg", InOrder(Evaluator(interrupt_at=interrupt_at), workers=2), workdir=tmp_path)
    assert comparable(run("ddpg", pool, workdir=tmp_path, resume=True)) == comparable(reference)


# --- the Ray pool -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs) for the module; its workers import search_helpers like this test does."""
    ray = pytest.importorskip("ray")
    from haqc.workers import RayPool  # noqa: F401 -- fails here, not in every test, if the module is broken

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), before]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


def ray_run(strategy: str, workers: int, score=synthetic_accuracy, **options):
    from haqc.workers import RayPool

    with RayPool(score, workers) as pool:
        return run(strategy, pool, **options)


def test_ray_two_workers_same_seed_same_search_and_resume(ray_cluster, tmp_path):
    from haqc.workers import RayPool

    reference = run("ddpg", InOrder(synthetic_accuracy, workers=2))
    assert comparable(ray_run("ddpg", 2)) == comparable(reference)
    with pytest.raises(KeyboardInterrupt):
        run("ddpg", InOrder(Evaluator(interrupt_at=6), workers=2), workdir=tmp_path)
    with RayPool(synthetic_accuracy, 2) as pool:  # a second pool: same seed, same search; resumed, the same
        assert comparable(run("ddpg", pool)) == comparable(reference)
        assert comparable(run("ddpg", pool, workdir=tmp_path, resume=True)) == comparable(reference)
        assert comparable(run("ilp", pool)) == comparable(run("ilp"))


def test_ray_one_worker_is_the_serial_search(ray_cluster):
    assert comparable(ray_run("ddpg", 1)) == comparable(run("ddpg"))


def test_a_worker_that_dies_is_one_clear_error(ray_cluster, tmp_path):
    with pytest.raises(WorkerError, match="a search worker died") as err:
        ray_run("random", 2, score=ExitsAt(2), workdir=tmp_path)
    assert "\n" not in str(err.value) and err.value.exit_code == 5
    saved = torch.load(tmp_path / STATE_FILE, weights_only=True)  # the last complete round, nothing half-written
    assert len(saved["history"]) == 2 and not [p for p in tmp_path.iterdir() if p.name != STATE_FILE]


def test_a_worker_error_is_the_error_itself(ray_cluster):
    def bad(policy):
        raise InputError("the data does not fit the model")

    with pytest.raises(InputError, match="^the data does not fit the model$"):
        ray_run("random", 1, score=bad)
