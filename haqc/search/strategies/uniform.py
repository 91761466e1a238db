"""uniform: the highest single bitwidth w = a = b (pins applied) that meets the budget; one evaluation.

The fixed-precision baseline HAQ compares against. For a target's own option
list: every layer the same number of options below its most precise one.
"""
from __future__ import annotations

import numpy as np

from haqc.search.budget import violations
from haqc.search.run import OneShot, Run


class Uniform(OneShot):
    def choose(self, run: Run, config: None) -> np.ndarray:
        env = run.env
        costs, limits = env.problem.costs, env.problem.limits
        # The cheapest uniform setting is the cheapest policy, which check_budget has let through.
        for columns in env.space.uniform_candidates():
            if not violations(costs.cost(columns), limits):
                break
        return columns
