"""A workdir's score file: a second search with the same setup reads the scores instead of evaluating."""
from __future__ import annotations

import dataclasses
import json

import pytest
from search_helpers import synthetic_accuracy, synthetic_problem

from haqc.errors import InputError
from haqc.search import search
from haqc.search.parallel import InOrder
from haqc.search.store import Stored, store_path


class Counting:
    """The synthetic accuracy, counting the policies it is asked for."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, policy) -> float:
        self.calls += 1
        return synthetic_accuracy(policy)


def _stored_search(tmp_path, fraction: float, strategy: str = "ilp", setup: str = "a" * 64):
    counting = Counting()
    problem = synthetic_problem(latency_fraction=fraction)
    kept = Stored(InOrder(counting), store_path(tmp_path, setup), setup)
    result = search(dataclasses.replace(problem, parallel=kept), strategy, episodes=3)
    return result, counting.calls, kept


def test_a_second_budget_reads_the_probes_and_finds_what_a_fresh_search_finds(tmp_path):
    first, first_calls, _ = _stored_search(tmp_path, 0.5)
    assert first_calls == first.evaluations > 0
    second, second_calls, kept = _stored_search(tmp_path, 0.6)
    fresh = search(synthetic_problem(latency_fraction=0.6), "ilp")
    assert second.policy == fresh.policy and second.accuracy == fresh.accuracy
    assert second.evaluations == fresh.evaluations  # the search's own count: policies it scored
    assert second_calls == fresh.evaluations - kept.reused and kept.reused >= first.evaluations - 1
    saved = json.loads(store_path(tmp_path, "a" * 64).read_text())
    assert saved["setup"] == "a" * 64 and len(saved["scores"]) == first_calls + second_calls


def test_another_strategy_reuses_what_it_shares_with_the_first(tmp_path):
    """ddpg's warm start plays greedy's probes: after greedy, it evaluates only its own episodes."""
    greedy, _, _ = _stored_search(tmp_path, 0.5, "greedy")
    ddpg, calls, kept = _stored_search(tmp_path, 0.5, "ddpg")
    fresh = search(synthetic_problem(latency_fraction=0.5), "ddpg", episodes=3)
    assert ddpg.policy == fresh.policy and ddpg.history == fresh.history
    assert kept.reused >= greedy.evaluations - 1 and calls == ddpg.evaluations - kept.reused


def test_another_setup_gets_its_own_file_and_a_damaged_file_is_refused_in_one_line(tmp_path):
    _stored_search(tmp_path, 0.5, setup="a" * 64)
    _, calls, kept = _stored_search(tmp_path, 0.5, setup="b" * 64)
    assert kept.reused == 0 and calls > 0 and len(list(tmp_path.glob("scores-*.json"))) == 2
    store_path(tmp_path, "c" * 64).write_text("{not json")
    with pytest.raises(InputError, match=r"is not a score file of this run's setup .*delete it or use another workdir"):
        _stored_search(tmp_path, 0.5, setup="c" * 64)
