"""Bitwidth search (HAQ): layers as feature rows, costs as numbers, accuracy from a callback.

``search(problem, strategy, episodes, seed, workdir=..., resume=...)`` runs
DDPG (default) or a baseline (random, uniform, greedy) and returns a
``SearchResult``. It never touches ONNX graphs: the caller's ``evaluate``
callback builds and measures the quantized model.
"""
from __future__ import annotations

from haqc.search.agent import DDPG, Actor, Critic, DDPGConfig
from haqc.search.bits import BitSpace, action_to_bits
from haqc.search.budget import check_budget, enforce_budget, violations
from haqc.search.checkpoint import STATE_FILE
from haqc.search.costs import QUANTITIES, TABLE_BITS, CostTable, format_costs
from haqc.search.env import Box, Outcome, QuantEnv, SearchProblem
from haqc.search.strategies import STRATEGIES, SearchResult, search

__all__ = [
    "DDPG",
    "QUANTITIES",
    "STATE_FILE",
    "STRATEGIES",
    "TABLE_BITS",
    "Actor",
    "BitSpace",
    "Box",
    "CostTable",
    "Critic",
    "DDPGConfig",
    "Outcome",
    "QuantEnv",
    "SearchProblem",
    "SearchResult",
    "action_to_bits",
    "check_budget",
    "enforce_budget",
    "format_costs",
    "search",
    "violations",
]
