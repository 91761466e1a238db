"""The measured ort-cpu target: layers timed in ONNX Runtime, cached, and fitted to whole-model timings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from haqc.errors import InputError
from haqc.hw_targets import load_target
from haqc.hw_targets.ort_cpu import INT8, OrtTarget
from haqc.passes.isolate import LayerSubgraphs
from haqc.pipeline import cost_table, prepare
from haqc.precision import FP32
from tests.conftest import EXAMPLE


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HAQC_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def prepared():
    return prepare(EXAMPLE)


def test_every_layer_is_timed_and_the_model_total_is_fitted_to_whole_model_timings(prepared, fresh_cache):
    target = OrtTarget(batch=8)
    table = cost_table(prepared, target, "linear")
    assert table.quantities == ("latency", "size")  # no energy model: absent, not 0
    kinds = set()
    for layer, row, declared, values in zip(prepared.layers, table.options, table.declared, table.values["latency"]):
        assert set(row) == set(target.capabilities().of(layer).options)  # each format its kind is offered, timed
        kinds.add(layer.kind)
        assert row[declared - 1] == FP32  # the most precise last, as pinned layers get it
        if INT8 not in row[:declared]:  # w8a8 is dropped only where it is slower than fp32 (even alone)
            assert values[row.index(INT8)] >= values[row.index(FP32)]
        assert np.all(values[: len(row)] > 0)
    assert {"conv", "depthwise", "fc"} <= kinds  # the example's Gemm head is timed at its MatMul formats too
    whole = [json.loads(p.read_text()) for p in (fresh_cache / "measurements").glob("*.json")]
    fits = [w["seconds"] for w in whole if w["what"].startswith("whole model")]
    geometries = {LayerSubgraphs(prepared.model, prepared.layers).geometry(l, 8) for l in prepared.layers}
    assert len(fits) == 1 and len(whole) == 1 + len(geometries)  # one entry per layer geometry, one for the model
    fp32 = table.policy_cost([FP32] * table.n_layers)["latency"]
    int8 = table.policy_cost([INT8] * table.n_layers)["latency"]
    per_layer = [np.sum(table.per_layer("latency", table.indices([o] * table.n_layers))) for o in (FP32, INT8)]
    assert table.transitions and all(t.values["latency"].min() < 0 for t in table.transitions)  # chains save
    if abs(per_layer[0] - per_layer[1]) > 0.05 * per_layer[0] and (fits[0][0] - fits[0][1]) / (per_layer[0] - per_layer[1]) > 0:
        np.testing.assert_allclose([fp32, int8], fits[0], rtol=1e-9)  # the fit reproduces both whole models
    else:  # one offset for both: the mean gap
        np.testing.assert_allclose(fp32 - per_layer[0], int8 - per_layer[1], rtol=1e-9)


def test_a_second_run_measures_nothing(prepared, fresh_cache, monkeypatch):
    first = cost_table(prepared, OrtTarget(), "linear")
    monkeypatch.setattr(OrtTarget, "time_models", lambda *a: pytest.fail("measured again instead of reading the cache"))
    second = cost_table(prepared, OrtTarget(), "linear")
    assert second.digest() == first.digest()
    # Another thread count is other hardware: it is not read from these entries.
    with pytest.raises(pytest.fail.Exception):
        cost_table(prepared, OrtTarget(threads=2), "linear")


def test_a_read_only_cache_costs_a_measurement_not_the_result(prepared, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("HAQC_CACHE_DIR", str(blocked))
    table = cost_table(prepared, OrtTarget(), "linear")
    assert table.n_layers == len(prepared.layers)


def test_registered_and_clear_about_what_it_cannot_do(prepared):
    target = load_target("ort-cpu")
    assert isinstance(target, OrtTarget) and target.name == "ort-cpu" and target.batch == 1
    with pytest.raises(InputError, match="measures layers in their own subgraphs"):
        target.cost_table(prepared.layers)
    with pytest.raises(InputError, match="k-means"):
        cost_table(prepared, target, "kmeans")
    with pytest.raises(InputError, match="execution provider 'NoSuch' is not in this onnxruntime build"):
        OrtTarget(provider="NoSuch")


class _Scripted(OrtTarget):
    """A measured target whose timings are scripted, call by call (seconds per model timed), and
    whose cost table is the edge target's (the estimates the search works with)."""

    def __init__(self, timings):
        super().__init__()
        self.timings, self.calls = list(timings), 0

    def measured_table(self, layers, subgraphs, method="linear"):
        return load_target("edge").cost_table(layers, method)

    def time_models(self, models, feeds):
        self.calls += 1
        return self.timings.pop(0)


def test_a_policy_that_measures_over_the_budget_is_lowered_until_it_fits(example):
    from haqc.pipeline import check_budgets, correct_by_measurement, search_policy
    from haqc.quantizer import QuantizeOptions, Quantizer

    prepared = example["prepared"]
    table = load_target("edge").cost_table(prepared.layers)
    limits = check_budgets(table, {"latency": "0.7x"}, "linear").measured(1.0)
    scored = []

    def score(policy):
        scored.append(policy)
        return 0.5

    searched = search_policy(prepared, table, limits, score, 1.0, strategy="uniform", episodes=1, seed=0,
                             pin_first=True, pin_last=True, reward_lambda=0.1, reward="metric", strategy_config=None, workdir=None,
                             resume=False)
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions())
    reference = {l.name: INT8 for l in prepared.layers}
    # First measured at 0.9x w8a8 (over 0.7x): lowered; then at 0.65x: kept.
    target = _Scripted([[0.9], [0.65]])
    corrected, seconds = correct_by_measurement(prepared, target, table, limits, searched, quantizer, reference, 1.0,
                                                score, pin_first=True, pin_last=True)
    assert target.calls == 2 and seconds == 0.65
    assert corrected.policy != searched.policy and scored[-1] == corrected.policy
    before, after = (table.policy_cost([r.policy[l.name] for l in prepared.layers])["latency"]
                     for r in (searched, corrected))
    assert after <= before * 0.7 / 0.9 * (1 + 1e-9)  # measured 0.9x for a 0.7x budget: estimate tightened so
    # Within the budget as measured: nothing changes and nothing is scored again.
    n = len(scored)
    kept, seconds = correct_by_measurement(prepared, _Scripted([[0.6]]), table, limits, searched, quantizer,
                                           reference, 1.0, score, pin_first=True, pin_last=True)
    assert kept is searched and seconds == 0.6 and len(scored) == n


def _compress(tmp_path, timings, budget):
    """compress on the example under a scripted measured target, writing model, report and plot."""
    import haqc

    out = tmp_path / "m.onnx"
    target = _Scripted(timings)
    data = str(EXAMPLE.parent / "val.npz")
    run = lambda: haqc.compress(str(EXAMPLE), target=target, budgets={"latency": budget}, data=data,  # noqa: E731
                                strategy="uniform", output=out, report=tmp_path / "r.json", plot=tmp_path / "p.html")
    return run, out, target


def test_a_measured_budget_is_one_figure_the_check_the_report_and_the_summary_use(tmp_path):
    from haqc.cli.compress import format_summary
    from haqc.quantities import format_costs

    # Timed: fp32 and w8a8 once (6.4 and 3.2 ms), then the result (2.5 ms).
    run, _, target = _compress(tmp_path, [[6.4e-3, 3.2e-3], [2.5e-3]], "0.9x")
    report = run().report
    assert target.calls == 2 and report.result.meets_budget
    assert report.limits["latency"] == pytest.approx(0.9 * 3.2e-3)  # against the all-8-bit model as measured
    assert report.constraints["latency"]["limit"] == "2.88 ms"
    assert (report.fp32.measured_latency_s, report.w8a8.measured_latency_s, report.result.measured_latency_s) == (
        6.4e-3, 3.2e-3, 2.5e-3)
    summary = format_summary(report)
    assert "latency <= 2.88 ms (0.9x, measured)" in summary
    estimated = format_costs("latency", 0.9 * report.w8a8.costs["latency"])[0]  # the cost table's figure
    assert estimated != "2.88 ms" and estimated not in summary


def test_a_measured_miss_exits_7_with_the_files_written(tmp_path):
    from haqc.errors import EXIT_BUDGET_MISSED, BudgetMissedError

    # Every policy measures 3.0 ms against a 1.6 ms limit (0.5x of 3.2): lowered three times, still over.
    run, out, _ = _compress(tmp_path, [[6.4e-3, 3.2e-3]] + [[3.0e-3]] * 4, "0.5x")
    with pytest.raises(BudgetMissedError) as err:
        run()
    assert err.value.exit_code == EXIT_BUDGET_MISSED == 7
    assert str(err.value).startswith("the result's measured latency 3 ms misses the budget 1.6 ms (0.5x); wrote ")
    assert all(p.exists() for p in (out, tmp_path / "r.json", tmp_path / "p.html"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["result"]["meets_budget"] is False and report["constraints"]["latency"]["limit"] == "1.6 ms"


def test_a_result_measured_slower_than_all_8_bit_is_not_chosen_under_a_budget_above_it(tmp_path, caplog):
    # 1.5x of 3.2 ms: the searched policy's 4.0 ms meets it, but the all-8-bit model is faster.
    run, _, _ = _compress(tmp_path, [[6.4e-3, 3.2e-3], [4.0e-3]], "1.5x")
    with caplog.at_level("WARNING"):
        report = run().report
    assert report.result.measured_latency_s == report.w8a8.measured_latency_s == 3.2e-3
    assert report.result.meets_budget and all(o == INT8 for o in report.policy.values())
    assert "slower than the all-8-bit model's 3.2 ms" in caplog.text
