"""Budget enforcement exactly as HAQ does it, for any mix of latency / energy / size limits.

After the agent has chosen every layer, the policy is made to fit: walk the
layers from last to first, lowering each one's activation bits by one
supported step and re-checking, then its weight bits and re-checking (an
option list: one option cheaper), and repeat the walk until every limit
holds. Limits are absolute (seconds, joules, bytes); the pipeline resolves
relative budgets against the all-8-bit cost first.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from haqc.costs import CostTable
from haqc.errors import BudgetUnreachableError
from haqc.quantities import format_costs
from haqc.search.space import SearchSpace

logger = logging.getLogger(__name__)

# Costs are float sums; a policy within this relative slack of a limit meets it.
REL_TOLERANCE = 1e-9


def violations(costs: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    """The quantities whose cost exceeds its limit."""
    return [q for q, limit in limits.items() if costs[q] > limit * (1.0 + REL_TOLERANCE)]


def check_budget(table: CostTable, limits: Mapping[str, float], space: SearchSpace) -> None:
    """Raise BudgetUnreachableError if even the cheapest policy misses a limit; call it before searching."""
    cheapest = table.cost(space.cheapest())
    if violations(cheapest, limits):
        raise BudgetUnreachableError(unreachable_message(table, cheapest, limits, space))


def enforce_budget(table: CostTable, limits: Mapping[str, float], space: SearchSpace,
                   columns: np.ndarray) -> np.ndarray:
    """Lower options HAQ's way (last layer first, activations before weights) until all limits hold."""
    chosen = np.array(columns, dtype=np.int64)
    while violations(table.cost(chosen), limits):
        lowered = False
        for i in reversed(range(space.n_layers)):
            if space.pinned[i]:
                continue
            for below in space.layers[i].enforcement_steps(int(chosen[i])):
                chosen[i], lowered = below, True
                if not violations(table.cost(chosen), limits):
                    return chosen
        if not lowered:  # every unpinned layer is at its cheapest: the cheapest policy, still over
            raise BudgetUnreachableError(unreachable_message(table, table.cost(chosen), limits, space))
    return chosen


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
    unpinned = SearchSpace(space.layers, (False,) * space.n_layers)
    if not any(space.pinned) or violations(table.cost(unpinned.cheapest()), limits):
        return "relax the budget"
    return "relax the budget or unpin the first/last layer (`pin_first`, `pin_last`)"
