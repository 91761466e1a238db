"""Cost tables and HAQ's budget enforcement on hand-made tables."""
from __future__ import annotations

import numpy as np
import pytest
from search_helpers import additive_costs

from haqc.errors import EXIT_BUDGET_UNREACHABLE, BudgetUnreachableError
from haqc.search import BitSpace, CostTable, check_budget, enforce_budget, format_costs

N = 3
ALL8 = np.full(N, 8)
# HAQ's walk over 3 layers: last layer first, activation before weight.
HAQ_ORDER = [(2, "a"), (2, "w"), (1, "a"), (1, "w"), (0, "a"), (0, "w")] * 2


def lowered(k: int) -> tuple[list[int], list[int]]:
    w, a = ALL8.copy(), ALL8.copy()
    for layer, kind in HAQ_ORDER[:k]:
        (w if kind == "w" else a)[layer] -= 1
    return w.tolist(), a.tolist()


def unpinned(n: int = N, **kw) -> BitSpace:
    return BitSpace.build(n, pin_first=False, pin_last=False, **kw)


def test_cost_is_a_fancy_index_sum():
    rng = np.random.default_rng(0)
    latency, size = rng.random((4, 7, 7)), rng.random((4, 7, 7))
    table = CostTable({"latency": latency, "energy": None, "size": size})
    assert table.quantities == ("latency", "size")
    w, a = np.array([2, 5, 8, 3]), np.array([8, 2, 4, 7])
    expected = sum(latency[i, w[i] - 2, a[i] - 2] for i in range(4))
    assert table.cost(w, a)["latency"] == pytest.approx(expected)
    assert table.w8a8()["size"] == pytest.approx(size[:, 6, 6].sum())
    assert table.layer_cost(1, 5, 2) == {"latency": latency[1, 3, 0], "size": size[1, 3, 0]}
    with pytest.raises(ValueError, match="2..8"):
        table.cost(np.array([1, 2, 3, 4]), a)  # bits 1 would wrap to index -1
    with pytest.raises(ValueError, match="shape"):
        CostTable({"latency": np.zeros((4, 8, 8))})


def test_format_costs_share_a_unit():
    assert format_costs("latency", 1.2e-3, 1.53e-3) == ["1.2 ms", "1.53 ms"]
    assert format_costs("size", 2.5e6, 900e3) == ["2.5 MB", "0.9 MB"]
    assert format_costs("energy", 4e-10) == ["0.4 nJ"]


@pytest.mark.parametrize("k", range(len(HAQ_ORDER) + 1))
def test_lowers_last_layer_first_activation_before_weight(k):
    table = additive_costs(N)  # every lowering saves exactly 1: limit 48 - k needs k of them
    w, a = enforce_budget(table, {"latency": 48.0 - k}, unpinned(), ALL8, ALL8)
    assert (w.tolist(), a.tolist()) == lowered(k)


def test_within_budget_is_left_alone():
    w, a = enforce_budget(additive_costs(N), {"latency": 100.0}, unpinned(), np.array([3, 8, 5]), ALL8)
    assert w.tolist() == [3, 8, 5] and a.tolist() == [8, 8, 8]


def test_pins_are_never_lowered():
    space = BitSpace.build(N)  # first and last layer pinned at w8a8
    w, a = enforce_budget(additive_costs(N), {"latency": 44.0}, space, ALL8, ALL8)
    assert w.tolist() == [8, 6, 8] and a.tolist() == [8, 6, 8]


def test_layers_at_b_min_are_skipped():
    w, a = enforce_budget(additive_costs(N), {"latency": 33.0}, unpinned(), np.array([8, 8, 2]), np.array([8, 8, 2]))
    # 36 -> 33; layer 2 is at w2a2 and cannot go lower: the walk moves on to layer 1, then 0
    assert w.tolist() == [8, 7, 2] and a.tolist() == [7, 7, 2]


def test_non_contiguous_levels_step_to_the_next_supported():
    space = unpinned(w_bits=(2, 4, 8), a_bits=(4, 8))
    w, a = enforce_budget(additive_costs(N), {"latency": 40.0}, space, ALL8, ALL8)
    assert w.tolist() == [8, 8, 4] and a.tolist() == [8, 8, 4]  # 8 -> 4 twice in layer 2 saves 8


def test_several_limits_must_all_hold():
    table = additive_costs(N, size=True)  # size = sum of w
    # only size is over (24 > 21): HAQ's walk still lowers activations on its way to the weights
    w, a = enforce_budget(table, {"latency": 48.0, "size": 21.0}, unpinned(), ALL8, ALL8)
    assert (w.tolist(), a.tolist()) == lowered(6)
    # latency needs 8 lowerings, size only 1: the stricter one decides
    w, a = enforce_budget(table, {"latency": 40.0, "size": 23.0}, unpinned(), ALL8, ALL8)
    assert (w.tolist(), a.tolist()) == lowered(8)
    costs = table.cost(w, a)
    assert costs["latency"] <= 40.0 and costs["size"] <= 23.0


def test_a_limit_equal_to_the_cost_holds():
    table = additive_costs(N, scale=0.1)  # float sums: 3 * 1.6 may not equal 4.8 exactly
    limit = table.cost(ALL8, ALL8)["latency"]
    w, _ = enforce_budget(table, {"latency": limit * (1 - 1e-12)}, unpinned(), ALL8, ALL8)
    assert w.tolist() == [8, 8, 8]


def test_unreachable_budget_names_the_cheapest_cost():
    table = additive_costs(N, scale=1e-3)  # seconds: w8a8 = 48 ms, cheapest with pins = 16 + 4 + 16 = 36 ms
    with pytest.raises(BudgetUnreachableError) as err:
        check_budget(table, {"latency": 0.030}, BitSpace.build(N))
    assert str(err.value) == (
        "latency budget 30 ms is unreachable: the cheapest policy costs 36 ms "
        "(w2a2 everywhere except pinned layers); relax the budget or unpin the first/last layer"
    )
    assert err.value.exit_code == EXIT_BUDGET_UNREACHABLE
    check_budget(table, {"latency": 0.036}, BitSpace.build(N))  # exactly reachable


def test_unreachable_lists_every_violated_quantity():
    table = additive_costs(N, scale=1e-9, size=True)  # cheapest: 12 ns, 6 bytes
    with pytest.raises(BudgetUnreachableError) as err:
        check_budget(table, {"latency": 11e-9, "size": 5.0}, unpinned())
    assert str(err.value) == (
        "latency budget 11 ns is unreachable: the cheapest policy costs 12 ns; "
        "size budget 5 B is unreachable: the cheapest policy costs 6 B (w2a2 everywhere); relax the budget"
    )


def test_enforcement_raises_rather_than_loop_forever():
    with pytest.raises(BudgetUnreachableError, match="cheapest policy costs 12"):
        enforce_budget(additive_costs(N), {"latency": 10.0}, unpinned(), ALL8, ALL8)


def test_a_target_that_combines_by_maximum_is_enforced_by_its_maximum():
    """A layer-pipelined target's latency is its slowest layer: the search must check that, not
    the sum (which would lower bits the budget does not ask for); size still sums."""
    latency = np.broadcast_to(np.add.outer(np.arange(2, 9), np.arange(2, 9)).astype(float), (N, 7, 7)).copy()
    latency[0] *= 2  # layer 0 is the bottleneck: 32 at w8a8, the others 16
    size = np.broadcast_to(np.arange(2, 9, dtype=float)[:, None], (7, 7)).copy()[None].repeat(N, axis=0)
    table = CostTable({"latency": latency, "size": size}, combine=np.max)
    assert table.w8a8() == {"latency": 32.0, "size": 24.0}
    w, a = enforce_budget(table, {"latency": 28.0}, unpinned(), ALL8, ALL8)
    # HAQ's walk lowers every layer one step in turn; it stops once the bottleneck meets
    # 2 * (w + a) <= 28, after one round.
    assert (w.tolist(), a.tolist()) == ([7, 7, 7], [7, 7, 7])
    assert table.cost(w, a)["latency"] == 28.0
    summed = CostTable({"latency": latency, "size": size})
    w, a = enforce_budget(summed, {"latency": 28.0}, unpinned(), ALL8, ALL8)
    assert summed.cost(w, a)["latency"] <= 28.0 and w.sum() + a.sum() < 7 * 6  # the sum asks for far more
