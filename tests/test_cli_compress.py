"""haqc compress end to end on the bundled example: report, re-apply, determinism, resume, exit codes."""
from __future__ import annotations

import dataclasses
import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, EXAMPLE_DIR, run_ort
from haqc.cli import main
from haqc.errors import InputError
from haqc.evaluation import Evaluator

DATA = ["--data", EXAMPLE_DIR / "val.npz", "--calib-data", EXAMPLE_DIR / "calib.npz"]


def _compress(*args, input=EXAMPLE):
    return CliRunner().invoke(main, ["compress", str(input), *[str(a) for a in (*DATA, *args)]])


def _error_line(result) -> str:
    lines = [l for l in result.output.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_report_schema_and_reapplied_policy(tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = _compress("--latency", "0.6x", "--strategy", "random", "--episodes", "3", "-o", out, "--report", report,
                       "--plot", tmp_path / "p.html", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["schema"] == 1
    for key in ("model", "target", "constraints", "fp32", "w8a8", "result", "policy", "search", "label_free"):
        assert key in data
    for key in ("accuracy", "latency_ms", "energy_mj", "size_mb"):
        assert key in data["fp32"] and key in data["w8a8"] and key in data["result"]
    assert data["result"]["meets_budget"] is True
    assert data["result"]["latency_ms"] <= 0.6 * data["w8a8"]["latency_ms"] + 1e-9
    assert set(data["search"]) >= {"strategy", "episodes", "best_episode", "seconds", "evaluations"}
    assert data["search"]["evaluations"] <= 3 and data["label_free"] is False
    assert len(data["policy"]) == 24 and (tmp_path / "p.html").read_text().startswith("<!doctype html>")
    # The written model runs in ONNX Runtime and scores what the report says.
    val = np.load(EXAMPLE_DIR / "val.npz")
    logits = run_ort(out, {"input": val["input"]})[0]
    assert np.mean(logits.argmax(-1) == val["labels"]) == pytest.approx(data["result"]["accuracy"])
    # The CI step: re-apply the stored policy with haqc quantize.
    again = tmp_path / "again.onnx"
    result = CliRunner().invoke(main, ["quantize", str(EXAMPLE), "--policy", str(report), *map(str, DATA),
                                       "-o", str(again), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["quantized"]["accuracy"] == pytest.approx(data["result"]["accuracy_before_finetune"])


def test_quantize_fine_tunes_with_learned_clips(tmp_path):
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(main, ["quantize", str(EXAMPLE), "--bits", "w4a4", *map(str, DATA), "--train-data",
                                       str(EXAMPLE_DIR / "calib.npz"), "--finetune-epochs", "1", "--trainable-clip", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["finetuned"]["accuracy"] > 0.9
    # keep-if-not-worse: the written weights are the fine-tuned ones exactly when they score no lower
    better = summary["finetuned"]["accuracy"] >= summary["quantized"]["accuracy"]
    assert summary["kept"] == ("finetuned" if better else "quantized")
    assert out.exists()


def _strip_timing(report: dict) -> dict:
    report = dict(report)
    report.pop("seconds"), report.pop("stages")
    report["search"] = {k: v for k, v in report["search"].items() if k != "seconds"}
    return report


def test_same_seed_same_policy_and_report(tmp_path):
    reports = []
    for i in range(2):
        result = _compress("--latency", "0.5x", "--episodes", "4", "--seed", "7", "--json")
        assert result.exit_code == 0, result.output
        reports.append(_strip_timing(json.loads(result.output)))
    assert reports[0] == reports[1]


def test_interrupt_exits_130_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    args = ("--latency", "0.5x", "--episodes", "6", "--seed", "3", "--json")
    full = _compress(*args, "--workdir", tmp_path / "full")
    assert full.exit_code == 0, full.output
    real = Evaluator.evaluate
    calls = {"n": 0}

    def flaky(self, model, name="the model"):
        calls["n"] += 1
        if calls["n"] == 5:  # fp32, then the warm start's probes: the 4th is interrupted
            raise KeyboardInterrupt
        return real(self, model, name)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    interrupted = _compress(*args, "--workdir", tmp_path / "w")
    assert interrupted.exit_code == 130
    assert (tmp_path / "w" / "search_state.pt").exists()
    monkeypatch.setattr(Evaluator, "evaluate", real)
    resumed = _compress(*args, "--workdir", tmp_path / "w", "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = json.loads(full.output), json.loads(resumed.output)
    assert a["policy"] == b["policy"] and a["history"] == b["history"]


def test_resume_with_other_options_is_refused(tmp_path):
    assert _compress("--latency", "0.5x", "--episodes", "2", "--workdir", tmp_path, "--quiet").exit_code == 0
    result = _compress("--latency", "0.6x", "--episodes", "2", "--workdir", tmp_path, "--resume", "--quiet")
    assert result.exit_code == 2 and "--resume" in _error_line(result)


def test_unreachable_budget_exits_3():
    result = _compress("--latency", "0.01x", "--quiet")
    assert result.exit_code == 3
    assert re.search(r"latency budget .* unreachable: the cheapest policy costs", _error_line(result))


def test_accuracy_drop_exits_4_and_still_writes(tmp_path):
    out = tmp_path / "m.onnx"
    result = _compress("--latency", "0.35x", "--strategy", "uniform", "--max-accuracy-drop", "0.1", "-o", out, "--quiet")
    assert result.exit_code == 4
    assert "--max-accuracy-drop" in _error_line(result) and out.exists()


@pytest.mark.parametrize(
    "args, pattern",
    [
        (("--latency", "fast"), "latency"),
        (("--latency", "-2ms"), "latency"),
        (("--latency", "5MB"), "latency"),
        (("--energy", "0.5x"), "energy"),  # edge has no energy model
        (("--latency", "0.5x", "--episodes", "0"), "--episodes"),
        (("--latency", "0.5x", "--target", "nope"), "unknown target"),
        (("--latency", "0.5x", "--threads", "2"), "configure the measured ort-cpu target, not 'edge'"),
        (("--latency", "0.5x", "--target", "ort-cpu", "--execution-provider", "NoSuch"),
         "execution provider 'NoSuch' is not in this onnxruntime build"),
        ((), "budget"),
    ],
)
def test_bad_options_exit_2(args, pattern):
    result = _compress(*args, "--quiet")
    assert result.exit_code == 2
    assert re.search(pattern, _error_line(result))


def test_workers_without_ray_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    result = _compress("--latency", "0.5x", "--workers", "2")
    assert result.exit_code == 2 and "--workers" in _error_line(result) and '.[ray]' in _error_line(result)


def test_output_rules(tmp_path):
    result = _compress("--latency", "0.5x", "-o", EXAMPLE)
    assert result.exit_code == 2 and "is the input model" in _error_line(result)
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"keep")
    result = _compress("--latency", "0.5x", "-o", existing)
    assert result.exit_code == 2 and "--force" in _error_line(result)
    assert existing.read_bytes() == b"keep"
    result = _compress("--latency", "0.5x", "-o", tmp_path / "missing" / "m.onnx")
    assert result.exit_code == 2 and "does not exist" in _error_line(result)


def test_every_run_that_writes_a_model_draws_its_plot_beside_it(tmp_path):
    result = _compress("--latency", "0.6x", "--strategy", "uniform", "-o", tmp_path / "m.onnx", "--quiet")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "m.html").read_text()
    assert page.startswith("<!doctype html>") and "accuracy against cost" in page
    result = _compress("--latency", "0.6x", "--strategy", "uniform", "-o", tmp_path / "n.onnx", "--no-plot", "--quiet")
    assert result.exit_code == 0 and not (tmp_path / "n.html").exists()
    result = _compress("--latency", "0.6x", "--plot", tmp_path / "p.html", "--no-plot")
    assert result.exit_code == 2 and "contradict" in _error_line(result)
    result = _compress("--latency", "0.6x", "--plot", tmp_path / "p.svg")
    assert result.exit_code == 2 and ".html or .png" in _error_line(result)


def test_the_summary_says_where_each_file_went_and_no_bar_reaches_a_log(tmp_path):
    out, report, workdir = tmp_path / "m.onnx", tmp_path / "r.json", tmp_path / "wd"
    result = _compress("--latency", "0.6x", "--strategy", "uniform", "-o", out, "--report", report,
                       "--workdir", workdir)
    assert result.exit_code == 0, result.output
    wrote = [l.strip() for l in result.output.splitlines() if l.strip().startswith("wrote ")]
    assert wrote == [f"wrote {out} (qdq, {out.stat().st_size / 1e6:.4f} MB)", f"wrote {report} (report)",
                     f"wrote {out.with_suffix('.html')} (plot)", f"wrote {workdir} (search state)"]
    assert "\r" not in result.output and "|" not in result.output  # CliRunner's stderr is no terminal: no bars


def test_kmeans_size_setting(tmp_path):
    report = tmp_path / "r.json"
    result = _compress("--method", "kmeans", "--size", "0.4x", "--strategy", "random", "--episodes", "2",
                       "-o", tmp_path / "m.onnx", "--report", report, "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["result"]["meets_budget"] and all(p["a_bits"] is None for p in data["policy"])


def test_energy_budget_on_bitfusion():
    result = _compress("--target", "bitfusion", "--energy", "0.9x", "--strategy", "greedy", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["result"]["energy_mj"] <= 0.9 * data["w8a8"]["energy_mj"] + 1e-12


def test_ddpg_overrides_and_search_finetune_steps():
    ok = _compress("--latency", "0.5x", "--episodes", "2", "--ddpg", "actor_lr=3e-4", "--ddpg", "hidden=64",
                   "--ddpg", "warm_start=false",
                   "--search-finetune-steps", "2", "--trainable-clip", "--train-data", EXAMPLE_DIR / "calib.npz",
                   "--finetune-epochs", "1", "--quiet")
    assert ok.exit_code == 0, ok.output
    for bad, pattern in ((("--ddpg", "foo=1"), "KEY=VALUE"), (("--ddpg", "hidden=big"), "hidden takes an int"),
                         (("--ddpg", "warm_start=maybe"), "warm_start takes true or false"),
                         (("--search-finetune-steps", "2"), "needs --train-data")):
        result = _compress("--latency", "0.5x", *bad, "--quiet")
        assert result.exit_code == 2 and re.search(pattern, _error_line(result))


def test_ddpg_overrides_take_each_fields_type_and_haq_names_the_published_agent():
    from haqc.cli.compress import parse_strategy_config
    from haqc.search import DDPGConfig
    from haqc.search.strategies.ilp import IlpConfig

    assert parse_strategy_config("ddpg", ("haq",)) == DDPGConfig.haq()
    assert parse_strategy_config("ddpg", ("haq", "warm_start=true")) == dataclasses.replace(DDPGConfig.haq(), warm_start=True)
    got = parse_strategy_config("ddpg", ("warm_start=0", "sigma_final=none", "hidden=64", "tau=0.02"))
    assert got == dataclasses.replace(DDPGConfig(), warm_start=False, sigma_final=None, hidden=64, tau=0.02)
    assert parse_strategy_config("ilp", ("probes=modelled",)) == IlpConfig(probes="modelled")
    for strategy, items, pattern in (("ilp", ("probes=some",), "probes takes one of all, modelled"),
                                     ("greedy", ("x=1",), "takes no configuration"),
                                     ("ddpg", ("fast",), "DDPGConfig has no such preset")):
        with pytest.raises(InputError, match=pattern):
            parse_strategy_config(strategy, items)


def test_outputs_get_normal_permissions(tmp_path):
    from haqc.io import atomic_write_text

    path = tmp_path / "r.json"
    atomic_write_text(path, "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    path.chmod(0o640)
    atomic_write_text(path, "{}")
    assert path.stat().st_mode & 0o777 == 0o640


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_measured_target_checks_the_result_against_its_own_timing(tmp_path):
    """On ort-cpu compress times the written model beside fp32 and w8a8; meets_budget holds only if
    the measured latency meets the limit too. The output format is recorded with the file's size."""
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = _compress("--target", "ort-cpu", "--latency", "1.0x", "--strategy", "random", "--episodes", "2",
                       "--format", "qonnx", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    assert "measured ms" in result.output and "(qonnx," in result.output
    data = json.loads(report.read_text())
    for key in ("fp32", "w8a8", "result"):
        assert data[key]["measured_latency_ms"] > 0 and data[key]["energy_mj"] is None
    limit_ms = data["w8a8"]["latency_ms"]
    # A relative budget (1.0x w8a8) is checked against the w8a8 model timed beside the result.
    measured_ok = data["result"]["measured_latency_ms"] <= 1.0 * data["w8a8"]["measured_latency_ms"] * (1 + 1e-9)
    assert data["result"]["meets_budget"] == (data["result"]["latency_ms"] <= limit_ms * (1 + 1e-9) and measured_ok)
    assert data["format"] == "qonnx" and data["output_mb"] == pytest.approx(out.stat().st_size / 1e6)
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    val = np.load(EXAMPLE_DIR / "val.npz")
    wrapped = cleanup_model(ModelWrapper(str(out)), override_inpsize=64)
    logits = execute_onnx(wrapped, {wrapped.graph.input[0].name: val["input"][:64]})[wrapped.graph.output[0].name]
    assert np.mean(logits.argmax(-1) == val["labels"][:64]) > 0.9


@pytest.mark.parametrize(("fmt", "containers"), [("qdq", {"INT8"}), ("packed", {"INT4"})])
def test_quantize_formats_store_weights_in_their_containers_and_run(tmp_path, fmt, containers):
    out = tmp_path / f"{fmt}.onnx"
    result = CliRunner().invoke(main, ["quantize", str(EXAMPLE), "--bits", "w4a8", *map(str, DATA), "--format", fmt,
                                       "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["format"] == fmt
    import onnx
    from onnx import TensorProto

    model = onnx.load(out)
    stored = {TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer if t.name.endswith("/q")
              and "/w" in t.name}
    assert stored == containers
    val = np.load(EXAMPLE_DIR / "val.npz")
    logits = run_ort(out, {"input": val["input"]})[0]
    assert np.mean(logits.argmax(-1) == val["labels"]) == pytest.approx(summary["quantized"]["accuracy"])
