"""The Python API is the real one: ``import haqc`` gives inspect / quantize / evaluate / compress,
paths or in-memory models and arrays in, typed results out, every default from one config."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, ROOT, run_ort

import haqc
import haqc.pipeline
from haqc.api import CompressConfig, QuantizeConfig
from haqc.cli import main
from haqc.cli.compress import format_summary
from haqc.costs import LayerCost
from haqc.errors import InputError
from haqc.hw_targets import Target, weight_bytes
from haqc.layers import Layer
from haqc.pipeline import prepare
from haqc.precision import FP32, Option
from haqc.report import Report

MNIST = ROOT / "examples" / "mnist"
# Validation images for the searches whose checks do not depend on how many are scored (the report's
# schema and form, the options and costs a target's own numbers give): every probe and episode of
# compress scores each of them, and all 1,000 made these tests a minute each on two cores.
VAL_SUBSET = 200


def _arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(MNIST / name) as data:
        return {k: data[k] for k in data.files}


def _val_subset(folder, n: int = VAL_SUBSET):
    """The first ``n`` validation images, as arrays and as the .npz file holding them."""
    arrays = {k: v[:n] for k, v in _arrays("val.npz").items()}
    np.savez(folder / "val.npz", **arrays)
    return arrays, folder / "val.npz"


def test_compress_takes_paths_or_a_model_proto_and_arrays_and_gives_the_same_report(tmp_path):
    val, val_path = _val_subset(tmp_path)
    by_path = haqc.compress(str(EXAMPLE), target="edge", budgets={"latency": "0.5x"}, data=str(val_path),
                            episodes=5)
    assert isinstance(by_path.report, Report) and isinstance(by_path.model, onnx.ModelProto)
    first = json.loads(by_path.to_json())
    assert first["schema"] == 1 and first["result"]["meets_budget"] and first["search"]["episodes"] == 5
    in_memory = haqc.compress(onnx.load(str(EXAMPLE)), target="edge", budgets={"latency": "0.5x"},
                              data=val, episodes=5)
    second = json.loads(in_memory.to_json())
    assert second["model"] == "<in-memory model>"
    for report in (first, second):
        report.pop("model"), report.pop("seconds"), report.pop("stages"), report["search"].pop("seconds")
    assert first == second


def test_keywords_override_a_config_and_unknown_ones_are_refused():
    config = CompressConfig(budgets={"latency": "0.5x"}, episodes=3)
    with pytest.raises(InputError, match="unknown parameter `episode`"):
        haqc.compress(str(EXAMPLE), config, episode=4)
    with pytest.raises(InputError, match="`data`"):  # errors name the API's parameters
        haqc.compress(str(EXAMPLE), config)


def test_quantize_and_evaluate_in_memory():
    model = onnx.load(str(EXAMPLE))
    result = haqc.quantize(model, bits="w8a8", calib_data=_arrays("calib.npz"), data=_arrays("val.npz"))
    assert result.output is None and result.layers == 24 and result.quantized.accuracy > 0.95
    scored = haqc.evaluate(result.model, _arrays("val.npz"))
    assert scored.accuracy == pytest.approx(result.quantized.accuracy)
    summary = haqc.inspect(model, targets=["edge"])
    assert summary["totals"]["layers"] == 24 and "edge" in summary["targets"]


class ThreeOptions(Target):
    """A hand-written target that runs regular convolutions at fp32, w8a8 or w4a8 and everything
    else at fp32 or w8a8: a choice that is no grid of widths."""

    name = "three-options"
    description = "fp32 / w8a8 / w4a8 convolutions"

    def options(self, layer: Layer, method: str = "linear") -> tuple[Option, ...]:
        if layer.kind == "conv":
            return (Option(4, 8), Option(8, 8), FP32)
        return (Option(8, 8), FP32)

    def layer_cost(self, layer: Layer, w_bits: int, a_bits: int) -> LayerCost:
        return LayerCost(layer.macs * (w_bits + a_bits) * 1e-12, None, weight_bytes(layer, w_bits))


@pytest.mark.parametrize("strategy", ["ddpg", "greedy", "uniform", "ilp"])
def test_a_target_with_its_own_options_searches_exports_and_reports(strategy, tmp_path):
    target = ThreeOptions()
    out = tmp_path / "model.onnx"
    _, val_path = _val_subset(tmp_path)
    result = haqc.compress(str(EXAMPLE), target=target, budgets={"latency": "0.9x"}, data=str(val_path),
                           calib_data=str(MNIST / "calib.npz"), strategy=strategy, episodes=4, output=str(out))
    report = result.report
    layers = prepare(str(EXAMPLE)).layers
    for layer in layers:
        assert report.policy[layer.name] in target.options(layer)
    assert report.policy[layers[0].name] == FP32 and report.policy[layers[-1].name] == FP32  # pinned: most precise
    assert any(o == Option(4, 8) for o in report.policy.values())  # 0.9x needs some w4a8
    assert report.result.meets_budget
    # The report's costs are the target's own numbers for the chosen options.
    expected = sum(target.cost(l, report.policy[l.name].w_bits, report.policy[l.name].a_bits).latency_s
                   for l in layers)
    assert report.result.costs["latency"] == pytest.approx(expected, rel=1e-12)
    assert [row.costs["latency"] for row in report.layers] == pytest.approx(
        [target.cost(l, report.policy[l.name].w_bits, report.policy[l.name].a_bits).latency_s for l in layers])
    exported = onnx.load(str(out))
    float_layers = [l.name for l in layers if report.policy[l.name] == FP32]
    names = {n.name for n in exported.graph.node}
    assert all(not any(n.startswith(f"{layer}/") for n in names) for layer in float_layers)
    x = _arrays("val.npz")["input"][:3]
    assert run_ort(exported, {"input": x})[0].shape == (3, 10)
    saved = json.loads(result.to_json())
    assert {e["option"] for e in saved["policy"]} <= {"fp32", "w8a8", "w4a8"}


def test_a_workdir_keeps_scores_for_the_next_budget_and_only_for_the_same_setup(tmp_path, caplog):
    """A budget sweep in one workdir pays for greedy's probes once (they are the same at budgets whose probe
    width, the widest uniform width that meets them, is the same: 3 bits at 0.5x and 0.55x on the example);
    other data gets its own score file."""
    val = {k: v[:300] for k, v in _arrays("val.npz").items()}
    common = dict(target="edge", data=val, calib_data=str(MNIST / "calib.npz"), strategy="greedy", finetune_epochs=0)
    haqc.compress(str(EXAMPLE), budgets={"latency": "0.5x"}, workdir=tmp_path, **common)
    with caplog.at_level("INFO", logger="haqc.pipeline"):
        swept = haqc.compress(str(EXAMPLE), budgets={"latency": "0.55x"}, workdir=tmp_path, **common)
    fresh = haqc.compress(str(EXAMPLE), budgets={"latency": "0.55x"}, **common)
    assert swept.search.policy == fresh.search.policy and swept.search.accuracy == fresh.search.accuracy
    probes = fresh.search.evaluations - 1  # greedy: two probes per unpinned layer, then its policy
    assert f"{probes} of the {fresh.search.evaluations} policies scored were read from" in caplog.text
    assert swept.report.search.stored == probes and fresh.report.search.stored == 0
    assert json.loads(swept.to_json())["search"]["stored"] == probes
    fewer = {k: v[:200] for k, v in val.items()}
    haqc.compress(str(EXAMPLE), budgets={"latency": "0.6x"}, workdir=tmp_path,
                  **{**common, "data": fewer, "strategy": "uniform"})
    assert len(list(tmp_path.glob("scores-*.json"))) == 2


def test_the_search_scores_a_subset_of_the_data_and_the_report_every_sample(monkeypatch):
    """``search_samples``: each candidate is scored on a seeded subset (the search's cost on a big model),
    the report's scores on every sample; by default the subset is sized by the model's MACs, so a
    model whose evaluation is cheap is searched on all of its data."""
    val = {k: v[:300] for k, v in _arrays("val.npz").items()}
    common = dict(target="edge", budgets={"latency": "0.5x"}, data=val, calib_data=str(MNIST / "calib.npz"),
                  strategy="uniform", finetune_epochs=0)
    full = haqc.compress(str(EXAMPLE), **common)
    subset = haqc.compress(str(EXAMPLE), search_samples=60, **common)
    assert full.report.search.samples is None and subset.report.search.samples == 60
    assert subset.search.policy == full.search.policy  # uniform: the same policy, scored two ways
    assert subset.report.result.accuracy == full.report.result.accuracy  # on all 300 samples
    assert subset.report.fp32.accuracy == full.report.fp32.accuracy
    searched = [h["accuracy"] for h in subset.report.history]
    assert all(abs(a * 60 - round(a * 60)) < 1e-9 for a in searched)  # scores of 60 samples
    assert "on 60 samples each" in format_summary(subset.report) and "samples each" not in format_summary(full.report)
    assert json.loads(subset.to_json())["search"]["samples"] == 60
    stages = json.loads(subset.to_json())["stages"]  # where the time went, in the order it was spent
    assert list(stages) == ["prepare", "costs and data", "calibrate", "reference", "search", "score w8a8 and result",
                            "export"] and all(s >= 0 for s in stages.values())

    macs = sum(layer.macs for layer in prepare(str(EXAMPLE)).layers)
    monkeypatch.setattr(haqc.pipeline, "SEARCH_MACS", 40 * macs)  # a model 7.5x costlier than it is
    assert haqc.compress(str(EXAMPLE), **common).report.search.samples == 40
    monkeypatch.setattr(haqc.pipeline, "SEARCH_MACS", macs)
    assert haqc.compress(str(EXAMPLE), **common).report.search.samples == haqc.pipeline.MIN_SEARCH_SAMPLES
    with pytest.raises(InputError, match="`search_samples` must be at least 1"):
        haqc.compress(str(EXAMPLE), search_samples=0, **common)


def test_each_cli_default_is_its_config_field():
    """The CLI's options are built from the config dataclasses: the same default everywhere."""
    inverted = {"per_tensor": "per_channel", "no_pin_first": "pin_first", "no_pin_last": "pin_last"}
    for command, config in (("compress", CompressConfig()), ("quantize", QuantizeConfig())):
        fields = {f.name for f in dataclasses.fields(config)}
        checked = 0
        for param in main.get_command(None, command).params:
            name = inverted.get(param.name, param.name)
            if name not in fields or param.multiple:
                continue
            default = getattr(config, name)
            assert (not param.default if name in inverted.values() else param.default) == default, (command, name)
            checked += 1
        assert checked >= (14 if command == "compress" else 9)


def test_errors_name_the_parameter_below_the_cli_and_the_flag_in_it(tmp_path):
    with pytest.raises(InputError, match="`calib_data`"):
        haqc.quantize(str(EXAMPLE), bits="w4a8")
    result = CliRunner().invoke(main, ["quantize", str(EXAMPLE), "--bits", "w4a8", "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 2 and "--calib-data" in result.output and "`" not in result.output


def test_python_api_doc_examples_run(tmp_path, monkeypatch):
    """Every ```python block of docs/python_api.md runs, in order, from the repository root."""
    text = (ROOT / "docs" / "python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(ROOT)
    namespace: dict = {"OUT": str(tmp_path)}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)


def test_a_target_plugin_author_imports_no_onnx_or_torch():
    """``import haqc.hw_targets`` (what a plugin imports) loads neither (the layer rule: tests/test_layers.py)."""
    code = "import sys, haqc.hw_targets; print(sorted(m for m in ('onnx', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_file_larger_than_the_targets_size_says_why(tmp_path):
    """The edge FPGA stores a 5-bit weight in 5 bits, ONNX in an INT8 container: a size budget met by the
    target's count was followed by a larger file and no word on why (captcha-whisperer: 2.41 MB met, 3.77
    MB written)."""
    from haqc.cli.compress import container_note

    val = {k: v[:100] for k, v in _arrays("val.npz").items()}
    common = dict(target="edge", data=val, calib_data=val, strategy="uniform", finetune_epochs=0, format="packed")
    odd = haqc.compress(str(EXAMPLE), budgets={"size": "0.7x"}, output=str(tmp_path / "odd.onnx"), **common)
    widths = {o.w_bits for o in odd.report.policy.values()} - {2, 4, 8}
    assert widths and odd.report.output_mb * 1e6 > 1.1 * odd.report.result.costs["size"]
    assert container_note(odd.report).startswith("  the file is larger than the target's")
    eight = haqc.compress(str(EXAMPLE), budgets={"size": "1.0x"}, output=str(tmp_path / "eight.onnx"), **common)
    assert container_note(eight.report) is None
    latency = haqc.compress(str(EXAMPLE), budgets={"latency": "0.8x"}, output=str(tmp_path / "lat.onnx"), **common)
    assert {o.w_bits for o in latency.report.policy.values()} - {2, 4, 8}  # odd widths, but no size budget
    assert container_note(latency.report) is None
