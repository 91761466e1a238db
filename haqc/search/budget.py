"""Budget enforcement exactly as HAQ does it, for any mix of latency / energy / size limits.

After the agent has chosen every layer, the policy is made to fit: walk the
layers from last to first, lowering each one's activation bits by one
supported step and re-checking, then its weight bits and re-checking, and
repeat the walk until every limit holds. Limits are absolute (seconds, joules,
bytes); the pipeline resolves relative budgets against the all-8-bit cost first.

A list of formats (a measured target's ``w4-block32, w8a8, int8-dynamic,
w8-block32, fp32``) is ordered by precision, not by every cost: the least
precise is the smallest, not always the fastest. There a layer steps down to
the less precise option that saves most of what is over its limits (each
quantity relative to its limit), and the budget check tries the cheapest
policy of each limited quantity, not only the least precise one.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from haqc.costs import CostTable
from haqc.errors import BudgetUnreachableError
from haqc.precision import METHODS
from haqc.quantities import format_costs
from haqc.search.space import SearchSpace

logger = logging.getLogger(__name__)

# Costs are float sums; a policy within this relative slack of a limit meets it.
REL_TOLERANCE = 1e-9


def violations(costs: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    """The quantities whose cost exceeds its limit."""
    return [q for q, limit in limits.items() if costs[q] > limit * (1.0 + REL_TOLERANCE)]


def check_budget(table: CostTable, limits: Mapping[str, float], space: SearchSpace) -> None:
    """Raise BudgetUnreachableError if no limit can be met even alone (the least precise policy, and for
    each limited quantity its own cheapest one, miss it); call it before searching."""
    candidates = [space.cheapest(), *(cheapest_for(table, space, q) for q in limits), *_all_8_bit(table, space)]
    costs = [table.cost(c) for c in candidates]
    least = {q: min(c[q] for c in costs) for q in costs[0]}  # each quantity at the least any candidate costs
    if violations(least, limits):
        raise BudgetUnreachableError(unreachable_message(table, least, limits, space))


def cheapest_for(table: CostTable, space: SearchSpace, quantity: str) -> np.ndarray:
    """Each unpinned layer at its option of least ``quantity`` (pinned layers at their most precise)."""
    columns = [int(np.argmin(table.values[quantity][i, : len(layer.options)])) for i, layer in enumerate(space.layers)]
    return space.pin(np.array(columns, dtype=np.int64))


def enforce_budget(table: CostTable, limits: Mapping[str, float], space: SearchSpace,
                   columns: np.ndarray) -> np.ndarray:
    """Lower options HAQ's way (last layer first, activations before weights) until all limits hold."""
    chosen = np.array(columns, dtype=np.int64)
    while violations(table.cost(chosen), limits):
        lowered = False
        for i in reversed(range(space.n_layers)):
            if not space.free(i):
                continue
            layer, group = space.layers[i], space.group(i)
            steps = layer.enforcement_steps(int(chosen[i])) if layer.w_levels is not None else \
                _saving_step(table, group, int(chosen[i]), violations(table.cost(chosen), limits), limits)
            for below in steps:
                chosen[group], lowered = below, True
                if not violations(table.cost(chosen), limits):
                    return chosen
        if not lowered:  # every unpinned layer is at its cheapest: the cheapest policy, still over
            raise BudgetUnreachableError(unreachable_message(table, table.cost(chosen), limits, space))
    return chosen


def _all_8_bit(table: CostTable, space: SearchSpace) -> list[np.ndarray]:
    """The all-8-bit policy of each option family, where every unpinned layer declares it: a layer's
    cheapest options alone miss what chains of integer layers save together (the transitions)."""
    out = []
    for method in METHODS:
        try:
            columns = space.pin(table.indices(table.reference(method)))
        except ValueError:  # a layer has no such option
            continue
        if all(c < len(layer.options) for c, layer in zip(columns, space.layers)):
            out.append(columns)
    return out


def _saving_step(table: CostTable, group: list[int], column: int, over: list[str],
                 limits: Mapping[str, float]) -> list[int]:
    """The less precise option of the layers of ``group`` (a layer and those that share its weight) that
    saves most of the quantities ``over`` their limits (each relative to its limit), or none when no less
    precise option saves anything."""
    saving = [sum((table.values[q][group, j] - table.values[q][group, column]).sum() / limits[q] for q in over)
              for j in range(column)]
    best = int(np.argmin(saving)) if saving else None
    return [best] if best is not None and saving[best] < 0 else []


def unreachable_message(table: CostTable, cheapest: Mapping[str, float], limits: Mapping[str, float],
                        space: SearchSpace) -> str:
    """Why no policy meets ``limits``, and what would help: unpinning is advised only where the
    cheapest policy with no pinned layer meets every limit."""
    parts = []
    for quantity in violations(cheapest, limits):
        limit, cost = format_costs(quantity, limits[quantity], cheapest[quantity])
        parts.append(f"{quantity} budget {limit} is unreachable: the cheapest policy costs {cost}")
    return f"{'; '.join(parts)} ({space.describe_cheapest()}); {unpin_remedy(table, limits, space)}"


def unpin_remedy(table: CostTable, limits: Mapping[str, float], space: SearchSpace) -> str:
    """"relax the budget", with "or unpin ..." where unpinning the pinned layers would meet ``limits``."""
    unpinned = SearchSpace(space.layers, (False,) * space.n_layers, space.leaders)
    if not any(space.pinned) or violations(table.cost(unpinned.cheapest()), limits):
        return "relax the budget"
    return "relax the budget or unpin the first/last layer (`pin_first`, `pin_last`)"
