"""Cost tables and HAQ's budget enforcement on hand-made tables."""
from __future__ import annotations

import numpy as np
import pytest
from search_helpers import additive_costs, bits, columns, grid_table, w8a8

from haqc.costs import CostTable
from haqc.errors import EXIT_BUDGET_UNREACHABLE, BudgetUnreachableError
from haqc.precision import Option, grid
from haqc.quantities import format_costs
from haqc.search import SearchSpace, check_budget, enforce_budget

N = 3
ALL8 = np.full(N, 8)
# HAQ's walk over 3 layers: last layer first, activation before weight.
HAQ_ORDER = [(2, "a"), (2, "w"), (1, "a"), (1, "w"), (0, "a"), (0, "w")] * 2


def lowered(k: int) -> tuple[list[int], list[int]]:
    w, a = ALL8.copy(), ALL8.copy()
    for layer, kind in HAQ_ORDER[:k]:
        (w if kind == "w" else a)[layer] -= 1
    return w.tolist(), a.tolist()


def unpinned(table: CostTable) -> SearchSpace:
    return SearchSpace.build(table, pin_first=False, pin_last=False)


def enforce(table: CostTable, limits: dict, space: SearchSpace, w, a) -> tuple[list[int], list[int]]:
    """enforce_budget in (w, a) terms."""
    return bits(space, enforce_budget(table, limits, space, columns(space, w, a)))


def test_cost_is_a_fancy_index_sum():
    rng = np.random.default_rng(0)
    latency, size = rng.random((4, 7, 7)), rng.random((4, 7, 7))
    table = grid_table({"latency": latency, "energy": None, "size": size})
    assert table.quantities == ("latency", "size")
    w, a = np.array([2, 5, 8, 3]), np.array([8, 2, 4, 7])
    expected = sum(latency[i, w[i] - 2, a[i] - 2] for i in range(4))
    assert table.policy_cost([Option(int(x), int(y)) for x, y in zip(w, a)])["latency"] == pytest.approx(expected)
    assert w8a8(table)["size"] == pytest.approx(size[:, 6, 6].sum())
    assert table.layer_cost(1, table.index(1, Option(5, 2))) == {"latency": latency[1, 3, 0], "size": size[1, 3, 0]}
    with pytest.raises(ValueError, match="no option w1a8"):
        table.index(0, Option(1, 8))  # a width the table does not cost
    with pytest.raises(ValueError, match="shape"):
        CostTable(["a"], [grid(range(2, 9), range(2, 9))], {"latency": np.zeros((1, 50))})


def test_format_costs_share_a_unit():
    assert format_costs("latency", 1.2e-3, 1.53e-3) == ["1.2 ms", "1.53 ms"]
    assert format_costs("size", 2.5e6, 900e3) == ["2.5 MB", "0.9 MB"]
    assert format_costs("energy", 4e-10) == ["0.4 nJ"]


@pytest.mark.parametrize("k", range(len(HAQ_ORDER) + 1))
def test_lowers_last_layer_first_activation_before_weight(k):
    table = additive_costs(N)  # every lowering saves exactly 1: limit 48 - k needs k of them
    assert enforce(table, {"latency": 48.0 - k}, unpinned(table), ALL8, ALL8) == lowered(k)


def test_within_budget_is_left_alone():
    table = additive_costs(N)
    assert enforce(table, {"latency": 100.0}, unpinned(table), [3, 8, 5], ALL8) == ([3, 8, 5], [8, 8, 8])


def test_pins_are_never_lowered():
    table = additive_costs(N)
    space = SearchSpace.build(table)  # first and last layer pinned at w8a8
    assert enforce(table, {"latency": 44.0}, space, ALL8, ALL8) == ([8, 6, 8], [8, 6, 8])


def test_layers_at_b_min_are_skipped():
    table = additive_costs(N)
    w, a = enforce(table, {"latency": 33.0}, unpinned(table), [8, 8, 2], [8, 8, 2])
    # 36 -> 33; layer 2 is at w2a2 and cannot go lower: the walk moves on to layer 1, then 0
    assert w == [8, 7, 2] and a == [7, 7, 2]


def test_non_contiguous_levels_step_to_the_next_supported():
    table = additive_costs(N, w_bits=(2, 4, 8), a_bits=(4, 8))
    w, a = enforce(table, {"latency": 40.0}, unpinned(table), ALL8, ALL8)
    assert w == [8, 8, 4] and a == [8, 8, 4]  # 8 -> 4 twice in layer 2 saves 8


def test_several_limits_must_all_hold():
    table = additive_costs(N, size=True)  # size = sum of w
    # only size is over (24 > 21): HAQ's walk still lowers activations on its way to the weights
    assert enforce(table, {"latency": 48.0, "size": 21.0}, unpinned(table), ALL8, ALL8) == lowered(6)
    # latency needs 8 lowerings, size only 1: the stricter one decides
    w, a = enforce(table, {"latency": 40.0, "size": 23.0}, unpinned(table), ALL8, ALL8)
    assert (w, a) == lowered(8)
    costs = table.policy_cost([Option(x, y) for x, y in zip(w, a)])
    assert costs["latency"] <= 40.0 and costs["size"] <= 23.0


def test_a_limit_equal_to_the_cost_holds():
    table = additive_costs(N, scale=0.1)  # float sums: 3 * 1.6 may not equal 4.8 exactly
    limit = w8a8(table)["latency"]
    w, _ = enforce(table, {"latency": limit * (1 - 1e-12)}, unpinned(table), ALL8, ALL8)
    assert w == [8, 8, 8]


def test_unreachable_budget_names_the_cheapest_cost():
    table = additive_costs(N, scale=1e-3)  # seconds: w8a8 = 48 ms, cheapest with pins = 16 + 4 + 16 = 36 ms
    with pytest.raises(BudgetUnreachableError) as err:
        check_budget(table, {"latency": 0.030}, SearchSpace.build(table))
    assert str(err.value) == (
        "latency budget 30 ms is unreachable: the cheapest policy costs 36 ms "
        "(w2a2 everywhere except pinned layers); relax the budget or unpin the first/last layer (`pin_first`, "
        "`pin_last`)"
    )
    assert err.value.exit_code == EXIT_BUDGET_UNREACHABLE
    check_budget(table, {"latency": 0.036}, SearchSpace.build(table))  # exactly reachable


def test_unpinning_is_advised_only_where_it_meets_the_budget():
    table = additive_costs(N, scale=1e-3)  # w2a2 everywhere, nothing pinned: 12 ms
    with pytest.raises(BudgetUnreachableError) as err:
        check_budget(table, {"latency": 0.011}, SearchSpace.build(table))
    assert str(err.value).endswith("(w2a2 everywhere except pinned layers); relax the budget")


def test_unreachable_lists_every_violated_quantity():
    table = additive_costs(N, scale=1e-9, size=True)  # cheapest: 12 ns, 6 bytes
    with pytest.raises(BudgetUnreachableError) as err:
        check_budget(table, {"latency": 11e-9, "size": 5.0}, unpinned(table))
    assert str(err.value) == (
        "latency budget 11 ns is unreachable: the cheapest policy costs 12 ns; "
        "size budget 5 B is unreachable: the cheapest policy costs 6 B (w2a2 everywhere); relax the budget"
    )


def test_enforcement_raises_rather_than_loop_forever():
    with pytest.raises(BudgetUnreachableError, match="cheapest policy costs 12"):
        table = additive_costs(N)
        enforce(table, {"latency": 10.0}, unpinned(table), ALL8, ALL8)


def test_a_target_that_combines_by_maximum_is_enforced_by_its_maximum():
    """A layer-pipelined target's latency is its slowest layer: the search must check that, not
    the sum (which would lower bits the budget does not ask for); size still sums."""
    latency = np.broadcast_to(np.add.outer(np.arange(2, 9), np.arange(2, 9)).astype(float), (N, 7, 7)).copy()
    latency[0] *= 2  # layer 0 is the bottleneck: 32 at w8a8, the others 16
    size = np.broadcast_to(np.arange(2, 9, dtype=float)[:, None], (7, 7)).copy()[None].repeat(N, axis=0)
    table = grid_table({"latency": latency, "size": size}, combine=np.max)
    assert w8a8(table) == {"latency": 32.0, "size": 24.0}
    w, a = enforce(table, {"latency": 28.0}, unpinned(table), ALL8, ALL8)
    # HAQ's walk lowers every layer one step in turn; it stops once the bottleneck meets
    # 2 * (w + a) <= 28, after one round.
    assert (w, a) == ([7, 7, 7], [7, 7, 7])
    assert table.policy_cost([Option(x, y) for x, y in zip(w, a)])["latency"] == 28.0
    summed = grid_table({"latency": latency, "size": size})
    w, a = enforce(summed, {"latency": 28.0}, unpinned(summed), ALL8, ALL8)
    assert summed.policy_cost([Option(x, y) for x, y in zip(w, a)])["latency"] <= 28.0
    assert sum(w) + sum(a) < 7 * 6  # the sum asks for far more


def test_transitions_add_to_the_consumer_and_to_the_model_but_not_to_a_layers_own_cost():
    from haqc.costs import CostTable, Transition
    from haqc.precision import FP32, Option

    options = [(Option(8, 8), FP32)] * 3
    latency = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    chain = Transition(0, 1, {"latency": np.array([[-0.5, 0.0], [0.0, 0.0]])})
    table = CostTable(["a", "b", "c"], options, {"latency": latency}, transitions=[chain])
    assert table.cost(np.array([0, 0, 0]))["latency"] == 2.5  # a and b chained: the conversion is saved
    assert table.cost(np.array([0, 1, 0]))["latency"] == 4.0
    assert table.layer_cost(1, 0)["latency"] == 1.0
    plain = CostTable(["a", "b", "c"], options, {"latency": latency})
    assert plain.digest() != table.digest()
    with pytest.raises(ValueError, match="transition 0 -> 1"):
        CostTable(["a", "b", "c"], options, {"latency": latency},
                  transitions=[Transition(0, 1, {"latency": np.zeros((3, 2))})])


def test_a_format_list_ordered_by_precision_reaches_a_budget_its_least_precise_option_misses():
    """A measured target's formats are ordered by precision: w4-block32 is the smallest but slower than
    w8a8 (MatMulNBits dequantizes in float). A latency budget only w8a8 meets is reachable, and the
    enforcement steps a layer down to the option that saves latency, not merely the next one down."""
    from haqc.precision import FP32, IntFormat

    options = (Option(IntFormat(4, block=32)), Option(8, 8), Option(IntFormat(8, block=32)), FP32)
    n = 4
    table = CostTable([f"l{i}" for i in range(n)], [options] * n,
                      {"latency": np.tile([3.0, 1.0, 4.0, 2.0], (n, 1)), "size": np.tile([1.0, 2.0, 2.2, 8.0], (n, 1))})
    space = SearchSpace.build(table, pin_first=False, pin_last=False)
    limits = {"latency": 1.5 * n}
    check_budget(table, limits, space)  # the least precise policy costs 3n: reachable all the same
    fitted = enforce_budget(table, limits, space, space.most_precise())
    assert table.cost(fitted)["latency"] <= limits["latency"] and set(fitted) <= {1, 3}
    with pytest.raises(BudgetUnreachableError, match="latency budget .* the cheapest policy costs 4"):
        check_budget(table, {"latency": 0.5 * n}, space)
