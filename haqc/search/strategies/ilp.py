"""ilp: each layer's measured loss at each option (weights and activations probed apart, their
losses added), then the exact integer program over (layer, option) under every budget at once
(``haqc.search.ilp``, HiGHS).

``IlpConfig(probes="modelled")`` solves the same program on greedy's loss model instead (two probes
per layer, extrapolated by width): the integer program at ddpg's probing cost, for comparisons at
equal evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from haqc.search.ilp import sensitivities, solve
from haqc.search.run import OneShot, Run
from haqc.search.strategies.greedy import loss_model


@dataclass(frozen=True)
class IlpConfig:
    probes: Literal["all", "modelled"] = "all"  # every width of every layer, or greedy's two per layer


class Ilp(OneShot):
    config_type = IlpConfig

    def choose(self, run: Run, config: IlpConfig) -> np.ndarray:
        env = run.env
        drops = sensitivities(env, run.probe) if config.probes == "all" else loss_model(run)[0]
        return solve(env.problem.costs, dict(env.problem.limits), env.space, drops)
