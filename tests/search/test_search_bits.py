"""Action binning (HAQ's equal-width bins) and the supported-bitwidth space."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from haqc.errors import InputError
from haqc.search import BitSpace, action_to_bits
from haqc.search.bits import lower, snap

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


def test_space_keeps_the_table_range_and_pins():
    space = BitSpace.build(4, w_bits=(1, 2, 4, 8, 16), a_bits=(4, 8))
    assert space.w_levels == (2, 4, 8) and space.a_levels == (4, 8)
    w, a = space.pin(np.full(4, 2), np.full(4, 4))
    assert w.tolist() == [8, 2, 2, 8] and a.tolist() == [8, 4, 4, 8]
    assert [x.tolist() for x in space.cheapest()] == [[8, 2, 2, 8], [8, 4, 4, 8]]
    assert space.describe_cheapest() == "w2a4 everywhere except pinned layers"
    free = BitSpace.build(4, pin_first=False, pin_last=False)
    assert not any(free.pinned) and free.describe_cheapest() == "w2a2 everywhere"
    with pytest.raises(InputError, match="no weight bitwidth in 2..8"):
        BitSpace.build(4, w_bits=(1, 16))


def test_kmeans_space_costs_activations_at_8():
    space = BitSpace.build(3, activations=False)
    assert space.a_levels == (8,)
    assert space.describe_cheapest() == "w2 everywhere except pinned layers"
