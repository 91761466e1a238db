"""HAQ's reward for the candidates that can matter: the search's best policies, each fine-tuned briefly,
and the best after it exported (``--finalists``)."""
from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, EXAMPLE_DIR
from haqc.cli import main
from haqc.pipeline import pick_finalist
from haqc.search import search
from search_helpers import synthetic_problem


def test_the_best_after_a_short_finetune_wins_among_budget_meeting_policies():
    problem = synthetic_problem(latency_fraction=0.5)
    result = search(problem, "random", 12, seed=0)
    ranked = sorted({tuple(h["columns"]): h for h in sorted(result.history, key=lambda h: -h["reward"])
                     if h["costs"]["latency"] <= problem.limits["latency"]}.values(), key=lambda h: -h["reward"])
    third = ranked[2]
    tried = []

    def tuned(policy):  # the third-best before tuning is the best after it
        tried.append(policy)
        return 0.99 if [o.name for o in policy.values()] == third["options"] else 0.5

    picked = pick_finalist(problem.costs, result, tuned, 4, problem.limits, pin_first=True, pin_last=True)
    assert len(tried) == 4 and [f["options"] for f in picked.finalists] == [h["options"] for h in ranked[:4]]
    assert [o.name for o in picked.policy.values()] == third["options"]
    assert picked.accuracy == third["accuracy"] and picked.costs == third["costs"]
    assert [f["tuned"] for f in picked.finalists].count(0.99) == 1
    one = pick_finalist(problem.costs, dataclasses.replace(result, history=ranked[:1]), tuned, 4, problem.limits,
                        pin_first=True, pin_last=True)
    assert one.finalists == [] and one.policy == result.policy  # one candidate: nothing to choose


def test_compress_reports_its_finalists_and_needs_training_data(tmp_path):
    report = tmp_path / "r.json"
    data = ["--data", str(EXAMPLE_DIR / "calib.npz"), "--calib-data", str(EXAMPLE_DIR / "calib.npz")]  # 256 digits
    ok = CliRunner().invoke(main, ["compress", str(EXAMPLE), *data, "--latency", "0.5x", "--strategy", "random",
                                   "--episodes", "4", "--finalists", "3", "--finalist-steps", "2", "--lr", "1e-3",
                                   "--train-data", str(EXAMPLE_DIR / "calib.npz"), "--finetune-epochs", "1",
                                   "--report", str(report), "--no-plot", "--quiet"])
    assert ok.exit_code == 0, ok.output
    searched = json.loads(report.read_text())["search"]
    assert 2 <= len(searched["finalists"]) <= 3
    assert all(set(f) == {"options", "accuracy", "tuned"} for f in searched["finalists"])
    policy = json.loads(report.read_text())["policy"]
    best = max(searched["finalists"], key=lambda f: f["tuned"])
    assert [entry["option"] for entry in policy] == best["options"]  # the edge target measures nothing to correct
    bad = CliRunner().invoke(main, ["compress", str(EXAMPLE), *data, "--latency", "0.5x", "--finalists", "2"])
    assert bad.exit_code == 2 and "needs --train-data" in bad.output
