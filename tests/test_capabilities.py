"""Target capabilities: declared as data, derived from a measured device's facts, shown to the user."""
from __future__ import annotations

import numpy as np
import pytest

from haqc.capabilities import Capabilities, OpCapability
from haqc.errors import InputError
from haqc.hw_targets import load_target
from haqc.hw_targets.declarative import target_from_mapping
from haqc.hw_targets.ort_cpu import OrtTarget
from haqc.layers import Layer
from haqc.precision import Option
from haqc.runner.facts import int_dot

# /proc/cpuinfo flags of three real CPUs (abridged to what decides the integer dot product).
HASWELL = frozenset("fpu sse4_2 avx avx2 fma bmi2".split())
CASCADE_LAKE = frozenset("fpu sse4_2 avx avx2 avx512f avx512bw avx512_vnni".split())
ALDER_LAKE = frozenset("fpu sse4_2 avx avx2 avx_vnni".split())
NEOVERSE_N1 = frozenset("fp asimd asimdhp asimddp".split())
CORTEX_A53 = frozenset("fp asimd crc32".split())

FC = Layer(index=0, name="fc", op="Gemm", kind="fc", c_in=16, c_out=16, kernel=(1, 1), stride=(1, 1), groups=1,
           feature_size=1, out_feature_size=1, rows=1, reduction=16, params=256, macs=256, input_elems=16,
           output_elems=16, weight="fc.w", input="fc.x")


@pytest.mark.parametrize(("flags", "machine", "want"), [
    (HASWELL, "x86_64", "avx2"), (CASCADE_LAKE, "x86_64", "vnni"), (ALDER_LAKE, "x86_64", "vnni"),
    (NEOVERSE_N1, "aarch64", "dotprod"), (CORTEX_A53, "aarch64", "none"), (frozenset(), "AMD64", "avx2")])
def test_integer_dot_product_from_cpu_flags(flags, machine, want):
    assert int_dot(flags, machine) == want


@pytest.mark.parametrize(("dot", "reduced"), [("avx2", True), ("vnni", False), ("dotprod", False), ("none", False)])
def test_ort_cpu_takes_its_range_from_the_device_it_measures(dot, reduced):
    """How the reduced range is tested without a CPU lacking VNNI: the target reads the device's facts
    (here replaced by an AVX2 machine's), never the host's flags."""
    target = OrtTarget()
    target.facts = {**target.facts, "int_dot": dot}
    caps = target.capabilities()
    assert caps.reduced_range is reduced
    assert caps.of(FC).weight_levels(8, 8) == (64 if reduced else 127)
    assert caps.of(FC).weight_levels(8, None) == 127  # weight-only layers run float kernels
    assert dot in caps.source


def test_fpga_targets_form_full_range_integers():
    for name in ("edge", "cloud", "bitfusion"):
        caps = load_target(name).capabilities()
        assert not caps.reduced_range and caps.of(FC).weight_levels(8, 8) == 127


def test_toml_declares_capabilities_per_kind():
    data = {"model": "bitserial", "dm": 8, "dk": 256, "dn": 8, "clock_hz": 2e8, "dram_bytes_per_s": 2e9, "batch": 1,
            "capabilities": {"reduced_range": True, "fc": {"options": ["w4a8", "w8a8", "fp32"], "reduced_range": False}}}
    target = target_from_mapping(data, origin="test", default_name="t")
    caps = target.capabilities()
    assert caps.conv.reduced_range and caps.depthwise.reduced_range and not caps.fc.reduced_range
    assert target.options(FC) == (Option(4, 8), Option(8, 8), Option())
    assert caps.to_dict()["fc"] == {"options": ["w4a8", "w8a8", "fp32"], "reduced_range": False}
    table = target.cost_table([FC])
    assert table.options[0][:3] == (Option(4, 8), Option(8, 8), Option()) and np.isfinite(table.values["latency"][0, :3]).all()


@pytest.mark.parametrize(("caps", "match"), [
    ({"wide_range": True}, "unknown capability 'wide_range'"),
    ({"conv": {"reduced_range": "yes"}}, "reduced_range must be true or false"),
    ({"fc": {"options": []}}, "options must be a non-empty list"),
    ({"fc": {"options": ["w9a8"]}}, "out of range"),
    ({"fc": 3}, "must be a table"),
])
def test_toml_capability_errors_are_one_line(caps, match):
    data = {"model": "bitserial", "dm": 8, "dk": 256, "dn": 8, "clock_hz": 2e8, "dram_bytes_per_s": 2e9, "batch": 1,
            "capabilities": caps}
    with pytest.raises(InputError, match=match):
        target_from_mapping(data, origin="test", default_name="t")


def test_describe_names_the_reduced_kinds():
    assert "full-range int8" in Capabilities().describe()
    reduced = Capabilities(conv=OpCapability(reduced_range=True), source="x")
    assert "+-64 on conv" in reduced.describe() and "(x)" in reduced.describe()


def test_full_range_exports_say_so_and_run_unfused_where_kernels_saturate(monkeypatch):
    """A full-range w8a8 export carries ``haqc.int8_weight_range=full``; a host whose u8s8 kernels add
    pairs in int16 (simulated here) then evaluates it with float kernels, so it scores what the target
    computes; a reduced-range export carries no mark and runs fused everywhere."""
    import haqc.evaluation as evaluation
    from haqc.passes.calibrate import calibrate
    from haqc.passes.quantize_linear import LinearQuantize
    from haqc.runner.facts import INT8_RANGE_KEY
    from tests.passes.test_quantize_linear import REDUCED, _residual_model

    model, layers = _residual_model()
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 8, 8))).astype(np.float32) + 2.0
    calibration = calibrate(model, layers, [{"x": x}])
    w8a8 = {layer.name: Option(8, 8) for layer in layers}
    full = LinearQuantize(layers, calibration, w8a8)(model)
    reduced = LinearQuantize(layers, calibration, w8a8, capabilities=REDUCED)(model)
    assert {p.key: p.value for p in full.metadata_props}.get(INT8_RANGE_KEY) == "full"
    assert INT8_RANGE_KEY not in {p.key for p in reduced.metadata_props}
    monkeypatch.setattr(evaluation, "_host_pair_sums_saturate", lambda: True)
    assert _qdq_unfused(evaluation.make_session(full)) and not _qdq_unfused(evaluation.make_session(reduced))
    monkeypatch.setattr(evaluation, "_host_pair_sums_saturate", lambda: False)
    assert not _qdq_unfused(evaluation.make_session(full))


def _qdq_unfused(session) -> bool:
    try:
        return session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    except RuntimeError:  # never set
        return False
