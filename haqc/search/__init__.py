"""Precision search (HAQ): layers as feature rows, costs from a cost table, a score from a callback.

``search(problem, strategy, episodes, seed, workdir=..., resume=...)`` runs
DDPG (default), a baseline (random, uniform, greedy, ilp) or a plugin's strategy
(``haqc.search.strategies``) and returns a ``SearchResult``. It never touches ONNX graphs: the caller's ``evaluate``
callback builds and measures the quantized model.
"""
from __future__ import annotations

from haqc.search.agent import DDPG, Actor, Critic, DDPGConfig
from haqc.search.budget import check_budget, enforce_budget, violations
from haqc.search.checkpoint import STATE_FILE
from haqc.search.env import Box, Outcome, QuantEnv, SearchProblem
from haqc.search.space import LayerChoices, SearchSpace, action_to_bits
from haqc.search.run import Run
from haqc.search.score import Score
from haqc.search.strategies import SearchResult, Strategy, load_strategy, search, strategy_names

__all__ = [
    "DDPG",
    "STATE_FILE",
    "Actor",
    "Box",
    "Critic",
    "DDPGConfig",
    "LayerChoices",
    "Outcome",
    "QuantEnv",
    "Run",
    "Score",
    "SearchProblem",
    "SearchResult",
    "SearchSpace",
    "Strategy",
    "action_to_bits",
    "check_budget",
    "enforce_budget",
    "load_strategy",
    "search",
    "strategy_names",
    "violations",
]
