"""The report's whole curve (every evaluated policy, the non-dominated ones marked) and its plot."""
from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT

import haqc
from haqc.report import mark_frontier

MNIST = ROOT / "examples" / "mnist"


def test_the_frontier_is_the_set_no_other_point_dominates():
    points = [{"accuracy": a, "costs": {"latency": l, "size": s}} for a, l, s in
              [(0.9, 1.0, 5.0), (0.8, 1.0, 5.0), (0.95, 2.0, 5.0), (0.95, 2.0, 6.0), (0.5, 0.5, 9.0)]]
    marked = [p["pareto"] for p in mark_frontier(points, ["latency", "size"])]
    assert marked == [True, False, True, False, True]
    assert [p["pareto"] for p in mark_frontier(points, ["latency"])] == [True, False, True, True, True]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plot")
    result = haqc.compress(str(MNIST / "mnist_mbv2.onnx"), budgets={"latency": "0.5x"}, data=str(MNIST / "val.npz"),
                           calib_data=str(MNIST / "calib.npz"), episodes=6, report=str(out / "r.json"))
    return result, out


def test_every_evaluated_policy_is_in_the_report_with_its_frontier(run):
    result, out = run
    data = json.loads((out / "r.json").read_text())
    assert len(data["evaluated"]) == result.search.evaluations
    assert all(set(e) == {"accuracy", "costs", "pareto"} for e in data["evaluated"])
    front = [e for e in data["evaluated"] if e["pareto"]]
    best = max(data["evaluated"], key=lambda e: e["accuracy"])
    cheapest = min(data["evaluated"], key=lambda e: e["costs"]["latency"])
    assert best["pareto"] or any(e["accuracy"] == best["accuracy"] for e in front)
    assert cheapest["pareto"] or any(e["costs"]["latency"] == cheapest["costs"]["latency"] for e in front)


@pytest.mark.parametrize("suffix", [".html", ".png"])
def test_the_plot_holds_the_curve_the_bits_and_the_reward(run, suffix):
    from haqc.plot import write_plot

    result, out = run
    path = out / f"p{suffix}"
    write_plot(result.report, str(path))
    if suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return
    page = path.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    # nothing to fetch when viewed: the only addresses are XML namespace names
    assert "http" not in re.sub(r'xmlns(:\w+)?="[^"]*"|<!DOCTYPE svg[^>]*>', "", page)
    write_plot(result.report, str(out / "again.html"))
    assert (out / "again.html").read_text() == page  # deterministic: no date in the page
    for text in ("accuracy against cost", "non-dominated", "budget 5.511 ms (0.5x)", "bits per layer",
                 "blocks.0.depthwise.conv", "reward over 6 episodes"):
        assert text in page, text
