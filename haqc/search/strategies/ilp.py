"""ilp: each layer's measured loss at each option (weights and activations probed apart, their
losses added), then the exact integer program over (layer, option) under every budget at once
(``haqc.search.ilp``, HiGHS)."""
from __future__ import annotations

import numpy as np

from haqc.search.ilp import sensitivities, solve
from haqc.search.run import OneShot, Run


class Ilp(OneShot):
    def choose(self, run: Run, config: None) -> np.ndarray:
        env = run.env
        return solve(env.problem.costs, dict(env.problem.limits), env.space, sensitivities(env, run.probe))
