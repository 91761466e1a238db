"""Action binning (HAQ's equal-width bins) and the space of options the search chooses from."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from search_helpers import additive_costs, columns

from haqc.costs import CostTable
from haqc.errors import InputError
from haqc.hw_targets import LayerCost, Target
from haqc.layers import Layer
from haqc.precision import FP32, Option, codebooks
from haqc.search import LayerChoices, SearchSpace, action_to_bits
from haqc.search.space import lower, snap

FULL = tuple(range(2, 9))


def test_edges_map_to_the_ends():
    assert action_to_bits(0.0, FULL) == 2
    assert action_to_bits(1.0, FULL) == 8
    assert action_to_bits(0.0, (3, 4, 5, 6)) == 3
    assert action_to_bits(1.0, (3, 4, 5, 6)) == 6


@pytest.mark.parametrize("levels", [FULL, (3, 4, 5, 6), (8,)])
def test_bins_have_equal_width(levels):
    n = len(levels)
    for k, bits in enumerate(levels):
        # bin k is [k/n, (k+1)/n): its start, interior and end all give the same width
        for a in (k / n, (k + 0.5) / n, (k + 1) / n - 1e-9):
            assert action_to_bits(a, levels) == bits, (a, bits)


def test_matches_haq_rounding_away_from_bin_edges():
    for a in np.linspace(0.01, 0.99, 97):
        if abs(a * 7 - round(a * 7)) > 1e-6:
            assert action_to_bits(a, FULL) == int(np.clip(np.round(2 - 0.5 + a * 7), 2, 8))


def test_non_contiguous_set_snaps_to_nearest_supported_not_above():
    levels = (2, 4, 8)
    chosen = [action_to_bits((k + 0.5) / 7, levels) for k in range(7)]  # bins of 2..8
    assert chosen == [2, 2, 4, 4, 4, 4, 8]
    assert snap(7, levels) == 4 and snap(1, levels) == 2
    assert lower(8, levels) == 4 and lower(4, levels) == 2 and lower(2, levels) is None


@given(st.floats(0, 1), st.floats(0, 1), st.sets(st.integers(2, 8), min_size=1))
def test_binning_is_monotone_and_supported(a, b, levels):
    levels = tuple(sorted(levels))
    lo, hi = sorted((a, b))
    assert action_to_bits(lo, levels) <= action_to_bits(hi, levels)
    assert action_to_bits(a, levels) in levels


LAYER = Layer(index=0, name="fc", op="Gemm", kind="fc", c_in=16, c_out=16, kernel=(1, 1), stride=(1, 1), groups=1,
              feature_size=1, out_feature_size=1, rows=1, reduction=16, params=256, macs=256, input_elems=16,
              output_elems=16, weight="fc.w", input="fc.x")


class _Widths(Target):
    name, description = "widths", "costs nothing"
    w_bits, a_bits = (1, 2, 4, 8, 16), (4, 8)

    def layer_cost(self, layer, w_bits, a_bits):
        return LayerCost(1.0, None, 1.0)


def test_default_options_keep_the_search_range():
    target = _Widths()
    options = target.options(LAYER)
    assert [o.name for o in options] == ["w2a4", "w2a8", "w4a4", "w4a8", "w8a4", "w8a8"]
    assert target.options(LAYER, "kmeans") == codebooks((2, 4, 8))
    target.w_bits = (1, 16)
    with pytest.raises(InputError, match="no weight bitwidth in 2..8"):
        target.options(LAYER)


def test_space_pins_the_most_precise_option():
    table = additive_costs(4, w_bits=(2, 4, 8), a_bits=(4, 8))
    space = SearchSpace.build(table)
    assert space.two_step and space.layers[0].w_levels == (2, 4, 8) and space.layers[0].a_levels == (4, 8)
    pinned = space.pin(columns(space, [2] * 4, [4] * 4))
    assert [o.name for o in space.options(pinned)] == ["w8a8", "w2a4", "w2a4", "w8a8"]
    assert space.options(space.cheapest()) == space.options(pinned)
    assert space.describe_cheapest() == "w2a4 everywhere except pinned layers"
    free = SearchSpace.build(additive_costs(4), pin_first=False, pin_last=False)
    assert not any(free.pinned) and free.describe_cheapest() == "w2a2 everywhere"


def test_kmeans_space_is_one_weight_step_per_layer():
    table = additive_costs(3, kmeans=True)
    space = SearchSpace.build(table)
    assert not space.two_step and space.by_width
    assert space.describe_cheapest() == "kmeans2 everywhere except pinned layers"
    assert [space.layers[1].pick(a) for a in (0.0, 0.5, 1.0)] == [0, 3, 6]  # HAQ's bins over 2..8


def test_an_option_list_is_binned_by_position_and_lowered_one_by_one():
    options = (Option(4, 8), Option(8, 8), FP32)
    choices = LayerChoices.of(options)
    assert not choices.grid and choices.w_levels is None
    assert [choices.pick(a) for a in (0.0, 0.33, 0.34, 0.67, 1.0)] == [0, 0, 1, 2, 2]
    assert list(choices.lowerings(2)) == [1] and list(choices.lowerings(0)) == []
    table = CostTable(["a", "b"], [options] * 2, {"latency": np.array([[1.0, 2.0, 4.0]] * 2)})
    space = SearchSpace.build(table, pin_first=False, pin_last=False)
    assert not space.two_step and not space.by_width
    assert [c.tolist() for c in space.uniform_candidates()] == [[2, 2], [1, 1], [0, 0]]
