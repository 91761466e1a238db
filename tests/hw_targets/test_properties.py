"""Physical properties the cost models must show: monotone in bits, roofline behaviour, the paper's edge/cloud split."""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haqc.precision import SEARCH_BITS

from hwt_helpers import REPO, TARGETS, conv, fc, mnist_mbv2, resnet50, grid_costs


EXAMPLE = REPO / "examples" / "mnist" / "mnist_mbv2.onnx"

SHAPES = [
    conv(0, 3, 32, 3, 2, 224),  # stem
    conv(1, 32, 32, 3, 1, 112, groups=32),  # depthwise, large map
    conv(2, 960, 960, 3, 1, 7, groups=960),  # depthwise, many channels
    conv(3, 256, 256, 3, 1, 14),  # dense 3x3
    conv(4, 64, 256, 1, 1, 56),  # pointwise
    conv(5, 1, 16, 3, 1, 28),  # tiny MNIST stem
    conv(6, 64, 128, 3, 2, 28, groups=4),  # grouped
    fc(7, 2048, 1000),
    fc(8, 128, 10),
]


def _assert_monotone(table: np.ndarray) -> None:
    """Lowering w (axis 1) or a (axis 2) by one never raises the cost."""
    assert np.all(np.diff(table, axis=1) >= 0)
    assert np.all(np.diff(table, axis=2) >= 0)


@pytest.mark.parametrize("name", ["edge", "cloud", "bitfusion"])
def test_cost_never_increases_when_a_bitwidth_decreases(name):
    table = grid_costs(TARGETS[name], SHAPES + mnist_mbv2())
    for array in table:
        if array is not None:
            _assert_monotone(array)
    assert np.all(np.diff(table.weight_bytes, axis=1) > 0)  # size strictly follows weight bits
    assert np.all(np.diff(table.weight_bytes, axis=2) == 0)  # ... and ignores activation bits


@settings(max_examples=60, deadline=None)
@given(
    c=st.sampled_from([1, 3, 8, 17, 64, 250, 512]),
    c_out=st.sampled_from([1, 10, 16, 33, 96, 1000]),
    kernel=st.sampled_from([1, 3, 5, 7]),
    stride=st.sampled_from([1, 2]),
    hw=st.integers(1, 64),
    depthwise=st.booleans(),
)
def test_monotone_for_random_shapes(c, c_out, kernel, stride, hw, depthwise):
    layer = conv(0, c, c, kernel, stride, hw, groups=c) if depthwise else conv(0, c, c_out, kernel, stride, hw)
    for target in TARGETS.values():
        for array in grid_costs(target, [layer]):
            if array is not None:
                _assert_monotone(array)


def test_edge_compute_bound_layer_compute_time_scales_with_w_times_a():
    edge = TARGETS["edge"]
    layer = conv(0, 256, 256, 3, 1, 14)
    base = edge.breakdown(layer, 8, 8)
    assert base["compute_s"] > base["memory_s"]  # compute-bound at w8a8
    assert base["latency_s"] == base["compute_s"]
    for w in SEARCH_BITS:
        for a in SEARCH_BITS:
            assert edge.breakdown(layer, w, a)["compute_s"] == pytest.approx(base["compute_s"] * w * a / 64)
    # Compute-bound down to w4a4 (the roofline hands over to memory below that).
    assert edge.breakdown(layer, 4, 4)["latency_s"] == pytest.approx(base["latency_s"] / 4)


def test_edge_depthwise_layer_is_memory_bound_latency_follows_bytes_not_w_times_a():
    edge = TARGETS["edge"]
    layer = conv(0, 96, 96, 3, 1, 14, groups=96)
    for w in SEARCH_BITS:
        for a in SEARCH_BITS:
            parts = edge.breakdown(layer, w, a)
            assert parts["memory_s"] > parts["compute_s"]
            assert parts["latency_s"] == pytest.approx(parts["dram_bytes"] / edge.params.dram_bytes_per_s)
    # Weight bits barely matter (only the small weight bit-planes move), w x a not at all:
    w8a8 = edge.breakdown(layer, 8, 8)["latency_s"]
    assert edge.breakdown(layer, 2, 8)["latency_s"] == pytest.approx(w8a8, rel=0.05)
    w8a8, w4a4 = edge.breakdown(layer, 8, 8), edge.breakdown(layer, 4, 4)
    assert w8a8["latency_s"] / w4a4["latency_s"] == pytest.approx(w8a8["dram_bytes"] / w4a4["dram_bytes"])
    assert w8a8["latency_s"] / w4a4["latency_s"] < 2 < 64 / 16


def test_the_same_depthwise_layer_is_compute_bound_on_cloud_at_w8a8():
    layer = conv(0, 96, 96, 3, 1, 14, groups=96)
    parts = TARGETS["cloud"].breakdown(layer, 8, 8)
    assert parts["compute_s"] > parts["memory_s"]


def test_bitfusion_w8a8_compute_is_16x_w2a2_on_a_compute_bound_layer():
    bf = TARGETS["bitfusion"]
    layer = conv(0, 256, 256, 3, 1, 14)  # reduction 2304 = 9 * 256: whole tiles at every width
    w8a8, w2a2 = bf.breakdown(layer, 8, 8), bf.breakdown(layer, 2, 2)
    assert w8a8["compute_s"] > w8a8["memory_s"]
    assert w8a8["compute_s"] == pytest.approx(16 * w2a2["compute_s"])
    assert w8a8["latency_s"] == pytest.approx(16 * w2a2["compute_s"])
    assert bf.breakdown(layer, 4, 4)["compute_s"] == pytest.approx(4 * w2a2["compute_s"])
    # Energy per multiply-add follows the fused width too: the core part is 16x as well.
    assert w8a8["core_energy_j"] == pytest.approx(16 * w2a2["core_energy_j"])


def _saved_8_to_4(target, layers) -> np.ndarray:
    table = grid_costs(target, layers).latency_s
    return table[:, 8 - 2, 8 - 2] - table[:, 4 - 2, 4 - 2]


def _rank_flips(edge_saved: np.ndarray, cloud_saved: np.ndarray) -> list[tuple[int, int]]:
    """Layer pairs (i, j) that edge ranks i > j and cloud ranks j > i by latency saved."""
    n = len(edge_saved)
    return [
        (i, j) for i in range(n) for j in range(n) if edge_saved[i] > edge_saved[j] and cloud_saved[i] < cloud_saved[j]
    ]


def test_edge_and_cloud_disagree_on_a_mobilenet_v2_built_by_hand():
    layers = mnist_mbv2()
    edge_saved = _saved_8_to_4(TARGETS["edge"], layers)
    cloud_saved = _saved_8_to_4(TARGETS["cloud"], layers)
    assert _rank_flips(edge_saved, cloud_saved)
    # The paper's mechanism: on edge a depthwise layer is memory-bound and only its
    # activation bits move bytes, so 8 -> 4 saves a smaller share than on cloud.
    depthwise = [i for i, layer in enumerate(layers) if layer.kind == "depthwise"]
    edge_share = edge_saved / grid_costs(TARGETS["edge"], layers).latency_s[:, 6, 6]
    cloud_share = cloud_saved / grid_costs(TARGETS["cloud"], layers).latency_s[:, 6, 6]
    assert np.all(edge_share[depthwise] < 0.5)
    assert np.all(cloud_share[depthwise] > edge_share[depthwise])


def test_edge_and_cloud_disagree_on_the_bundled_example():
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE.relative_to(REPO)} is not there yet")
    load = pytest.importorskip("haqc.passes.load")
    canonicalize = pytest.importorskip("haqc.passes.canonicalize")
    extract = pytest.importorskip("haqc.passes.extract")
    layers = extract.extract_layers(canonicalize.canonicalize(load.load_model(EXAMPLE))).layers
    assert any(layer.kind == "depthwise" for layer in layers)
    flips = _rank_flips(_saved_8_to_4(TARGETS["edge"], layers), _saved_8_to_4(TARGETS["cloud"], layers))
    assert flips, "edge and cloud rank every pair of layers the same way"


def test_costing_resnet50_at_every_bitwidth_pair_is_fast():
    layers = resnet50()
    assert len(layers) == 54
    for target in TARGETS.values():
        start = time.process_time()  # CPU time: other processes on a shared machine do not count
        table = grid_costs(target, layers)
        elapsed = time.process_time() - start
        assert table.latency_s.shape == (54, 7, 7)
        assert elapsed < 0.1, f"{target.name}: cost_table took {elapsed:.3f} s"
