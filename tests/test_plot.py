"""The report's whole curve (every evaluated policy, the non-dominated ones marked) and its plot."""
from __future__ import annotations

import dataclasses
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
    assert all(set(e) == {"accuracy", "divergence", "costs", "pareto"} for e in data["evaluated"])
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


def test_the_accuracy_axis_zooms_to_the_policies_that_matter(run):
    from haqc.plot import accuracy_range

    result, _ = run
    report = result.report
    # A probe at 2 bits scoring 10% would stretch a 0-100% axis; the axis keeps to fp32, w8a8 and the result.
    probe = {"accuracy": 0.1, "costs": dict(report.result.costs), "pareto": False}
    low, high = accuracy_range(dataclasses.replace(report, evaluated=[*report.evaluated, probe]))
    scored = [100 * s.accuracy for s in (report.fp32, report.w8a8, report.result)]
    assert low < min(scored) and high > max(scored)
    assert low > 50 and high - low < 10


def test_the_plot_states_the_numbers_and_a_measured_miss(run, tmp_path):
    from haqc.plot import write_plot
    from haqc.quantities import format_costs

    result, _ = run
    report = result.report
    limit = report.limits["latency"]
    missed = dataclasses.replace(report, result=dataclasses.replace(
        report.result, measured_latency_s=1.25 * limit, meets_budget=False))
    write_plot(missed, str(tmp_path / "miss.html"))
    page = (tmp_path / "miss.html").read_text()
    chosen = f"chosen {100 * report.result.accuracy_before_finetune:.2f}%"
    measured = f"measured {format_costs('latency', 1.25 * limit)[0]}: misses the budget"
    for text in (chosen, f"fp32 {100 * report.fp32.accuracy:.2f}%", f"w8a8 {100 * report.w8a8.accuracy:.2f}%",
                 "budget 5.511 ms (0.5x)", measured, "the result MISSES the budget"):
        assert text in page, text
    write_plot(report, str(tmp_path / "met.html"))
    page = (tmp_path / "met.html").read_text()
    assert "the result meets the budget" in page and "measured" not in page
