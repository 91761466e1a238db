"""A search strategy plugin for haqc: a (1+1) evolution strategy over per-layer precisions.

Each episode copies the best policy so far, moves ``config.mutations`` random
layers one option up or down, and lets haqc's environment pin, enforce the
budget, evaluate (cached) and reward it. Everything a strategy needs comes from
the ``Run`` haqc hands it; registering it is one entry point (pyproject.toml).

    haqc compress model.onnx --target edge --latency 0.5x --strategy evolve
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from haqc.search import Run


@dataclass(frozen=True)
class EvolveConfig:
    mutations: int = 2  # layers moved per episode


class Evolve:
    config_type = EvolveConfig
    episodic = False  # it scores one policy per episode, never several in a round

    def play(self, run: Run, config: EvolveConfig) -> None:
        env = run.env
        rng = np.random.default_rng([run.seed, len(run.history)])  # a resumed run continues its sequence
        if not run.history:
            run.record(env.finish(env.space.most_precise()))  # budget enforcement lowers it until it fits
            run.save()
        while len(run.history) < run.episodes:
            parent = np.array(run.history[run.best]["columns"])
            child = parent.copy()
            for i in rng.choice(env.space.n_layers, size=min(config.mutations, env.space.n_layers), replace=False):
                child[i] = np.clip(child[i] + rng.choice([-1, 1]), 0, len(env.space.layers[i].options) - 1)
            run.record(env.finish(child))
            run.save()
