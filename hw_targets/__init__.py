"""Hardware cost models: what a bitwidth policy costs on a named device.

A target knows layer shapes (``haqc.layers.Layer``) and precision options, nothing
about ONNX or accuracy. Targets come from the ``haqc.hw_targets`` entry-point
group (the built-ins ``edge``, ``cloud`` and ``bitfusion`` included) or from a
TOML file. Models and sources: docs/cost_models.md; adding a target:
docs/writing_targets.md.
"""
from __future__ import annotations

from haqc.costs import CostTable, LayerCost
from haqc.hw_targets.base import MeasuredTarget, ParametricTarget, Subgraphs, Target, weight_bytes
from haqc.hw_targets.bitserial import BitSerialOverlay, BitSerialParams
from haqc.hw_targets.budget import Budget, parse_budget
from haqc.hw_targets.declarative import load_target_file
from haqc.hw_targets.fusion_array import BitFusionArray, BitFusionParams
from haqc.hw_targets.registry import ENTRY_POINT_GROUP, TargetInfo, available_targets, load_target
from haqc.hw_targets.summary import cost_summary

__all__ = [
    "ENTRY_POINT_GROUP",
    "BitFusionArray",
    "BitFusionParams",
    "BitSerialOverlay",
    "BitSerialParams",
    "Budget",
    "CostTable",
    "LayerCost",
    "MeasuredTarget",
    "ParametricTarget",
    "Subgraphs",
    "Target",
    "TargetInfo",
    "available_targets",
    "cost_summary",
    "load_target",
    "load_target_file",
    "parse_budget",
    "weight_bytes",
]
