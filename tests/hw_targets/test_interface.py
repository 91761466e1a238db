"""The Target interface: scalar and vectorized costs agree, and the shared conventions hold."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from haqc.errors import InputError
from haqc.hw_targets import LayerCost, Target, cost_summary, weight_bytes
from haqc.precision import SEARCH_BITS, Option
from haqc.hw_targets.base import FLOAT_EXEC_BITS

from hwt_helpers import TARGETS, conv, fc, mnist_mbv2, grid_costs


LAYERS = [conv(0, 3, 16, 3, 2, 32), conv(1, 64, 64, 3, 1, 14, groups=64), conv(2, 64, 128, 1, 1, 14), fc(3, 512, 10)]


@pytest.mark.parametrize("name", ["edge", "cloud", "bitfusion"])
def test_cost_table_matches_scalar_costs(name):
    target = TARGETS[name]
    table = grid_costs(target, LAYERS)
    assert table.latency_s.shape == (len(LAYERS), 7, 7)
    for i, layer in enumerate(LAYERS):
        for w in SEARCH_BITS:
            for a in SEARCH_BITS:
                c = target.cost(layer, w, a)
                assert table.latency_s[i, w - 2, a - 2] == pytest.approx(c.latency_s, rel=1e-12)
                assert table.weight_bytes[i, w - 2, a - 2] == pytest.approx(c.weight_bytes, rel=1e-12)
                if c.energy_j is None:
                    assert table.energy_j is None
                else:
                    assert table.energy_j[i, w - 2, a - 2] == pytest.approx(c.energy_j, rel=1e-12)


def test_energy_is_explicitly_unknown_on_the_overlays_and_known_on_bitfusion():
    layer = LAYERS[2]
    assert TARGETS["edge"].cost(layer, 8, 8).energy_j is None
    assert grid_costs(TARGETS["cloud"], LAYERS).energy_j is None
    assert TARGETS["bitfusion"].cost(layer, 8, 8).energy_j > 0


def test_weight_bytes_are_packed_bits_plus_a_float32_scale_per_output_channel():
    layer = LAYERS[2]  # 64 -> 128 pointwise: 8192 weights
    for target in TARGETS.values():
        assert target.cost(layer, 4, 8).weight_bytes == 8192 * 4 / 8 + 128 * 4
        assert target.cost(layer, 4, 8).weight_bytes == weight_bytes(layer, 4)


@pytest.mark.parametrize("marker", [None, 32])
def test_float_layers_run_at_16_bit_and_are_stored_as_float32(marker):
    layer = LAYERS[2]
    for target in TARGETS.values():
        c = target.cost(layer, marker, marker)
        as16 = target.layer_cost(layer, FLOAT_EXEC_BITS, FLOAT_EXEC_BITS)
        assert c.latency_s == as16.latency_s
        assert c.energy_j == as16.energy_j
        assert c.weight_bytes == layer.params * 4
        assert c.latency_s >= target.cost(layer, 8, 8).latency_s


@pytest.mark.parametrize("bits", [0, 17, 2.5, True, "8"])
def test_bad_bitwidths_are_input_errors(bits):
    with pytest.raises(InputError, match="bitwidth"):
        TARGETS["edge"].cost(LAYERS[0], bits, 8)


def test_policy_cost_is_the_fancy_index_sum_of_the_table():
    layers = mnist_mbv2()
    rng = np.random.default_rng(0)
    w = rng.integers(2, 9, len(layers))
    a = rng.integers(2, 9, len(layers))
    for target in TARGETS.values():
        table = target.cost_table(layers)
        total = table.policy_cost([Option(int(wb), int(ab)) for wb, ab in zip(w, a)])
        costs = [target.cost(layer, int(wb), int(ab)) for layer, wb, ab in zip(layers, w, a, strict=True)]
        assert total["latency"] == pytest.approx(sum(c.latency_s for c in costs))
        assert total["size"] == pytest.approx(sum(c.weight_bytes for c in costs))
        if "energy" in total:
            assert total["energy"] == pytest.approx(sum(c.energy_j for c in costs))


def test_cost_summary_shape_and_units():
    layers = mnist_mbv2()
    summary = cost_summary(TARGETS["bitfusion"].cost_table(layers))
    assert set(summary) == {"per_layer", "total", "offered"}
    assert len(summary["per_layer"]) == len(layers)
    for key in ("w8a8", "w4a4", "w2a2"):
        entry = summary["total"][key]
        assert set(entry) == {"latency_ms", "energy_mj", "size_mb"}
        assert entry["latency_ms"] == pytest.approx(sum(p[key]["latency_ms"] for p in summary["per_layer"]))
        assert entry["energy_mj"] == pytest.approx(sum(p[key]["energy_mj"] for p in summary["per_layer"]))
    c = TARGETS["bitfusion"].cost(layers[3], 4, 4)
    assert summary["per_layer"][3]["w4a4"] == pytest.approx(
        {"latency_ms": c.latency_s * 1e3, "energy_mj": c.energy_j * 1e3, "size_mb": c.weight_bytes / 1e6}
    )
    edge = cost_summary(TARGETS["edge"].cost_table(layers), settings=(Option(8, 8),))
    assert list(edge["total"]) == ["w8a8"]
    assert edge["total"]["w8a8"]["energy_mj"] is None


def test_cost_summary_shows_every_option_a_measured_target_costs():
    """ort-cpu's layers have options by kind (a conv: w8a8, fp32; a MatMul: five) and drop w8a8
    where it timed no faster: every costed option is shown, with what the search may choose."""
    from haqc.costs import CostTable
    from haqc.precision import FP32, IntFormat

    w8a8, w4b = Option(8, 8), Option(IntFormat(4, block=32))
    ms = lambda *v: [x * 1e-3 for x in v]  # noqa: E731
    table = CostTable(["conv", "fc"], [(FP32, w8a8), (w4b, w8a8, FP32)],
                      {"latency": np.array([ms(2.0, 3.0, 0), ms(0.5, 0.7, 1.0)])}, declared=[1, 3], kinds=["conv", "fc"])
    summary = cost_summary(table)
    assert [list(p) for p in summary["per_layer"]] == [["fp32", "w8a8"], ["w4-block32", "w8a8", "fp32"]]
    assert summary["per_layer"][0]["w8a8"]["latency_ms"] == pytest.approx(3.0)
    assert summary["offered"] == [["fp32"], ["w4-block32", "w8a8", "fp32"]]
    assert set(summary["total"]) == {"fp32", "w8a8"} and summary["total"]["w8a8"]["latency_ms"] == pytest.approx(3.7)


class _Pipelined(Target):
    """A plugin that says a model's latency is its slowest layer (a layer-pipelined dataflow device)."""

    name = "pipelined"
    description = "test"

    def layer_cost(self, layer, w_bits, a_bits):
        return LayerCost(
            latency_s=layer.macs * w_bits * a_bits * 1e-12, energy_j=None, weight_bytes=weight_bytes(layer, w_bits)
        )

    def combine(self, per_layer):
        return float(np.max(per_layer))


def test_a_target_can_say_how_layer_costs_combine():
    target = _Pipelined()
    table = target.cost_table(LAYERS)  # the default, looping implementation
    assert "energy" not in table.quantities
    total = table.policy_cost([Option(8, 8)] * 4)
    assert total["latency"] == max(target.cost(layer, 8, 8).latency_s for layer in LAYERS)
    assert total["size"] == sum(weight_bytes(layer, 8) for layer in LAYERS)
    summary = cost_summary(target.cost_table(LAYERS))
    assert summary["total"]["w8a8"]["latency_ms"] == pytest.approx(total["latency"] * 1e3)


def test_hw_targets_imports_no_onnx_torch_or_other_haqc_layers():
    """Modelled targets know shapes and bits only: importing them must not pull in ONNX, torch, passes, search or
    CLI (the measured ort-cpu target, a module of its own, imports ONNX Runtime when it is loaded)."""
    code = "import json, sys, haqc.hw_targets as t; t.load_target('edge');print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {m if m.startswith("haqc.") else m.split(".")[0] for m in json.loads(out.stdout)}
    loaded |= {".".join(m.split(".")[:2]) for m in loaded if m.startswith("haqc.")}
    assert not loaded & {"onnx", "onnxruntime", "torch", "haqc.passes", "haqc.search", "haqc.cli"}
    assert "haqc.hw_targets" in loaded
