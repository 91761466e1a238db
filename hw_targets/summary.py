"""Per-layer and total cost of a model at a few uniform settings, for ``haqc inspect --target``.

Reported in the units people read: milliseconds, millijoules and megabytes
(1 MB = 1e6 bytes); energy is None when the target has no energy model.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from haqc.hw_targets.base import LayerCost, Target

from haqc.layers import Layer

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS: tuple[tuple[int, int], ...] = ((8, 8), (4, 4), (2, 2))


def cost_summary(
    target: Target, layers: Sequence[Layer], settings: Sequence[tuple[int, int]] = DEFAULT_SETTINGS
) -> dict:
    """``{"per_layer": [{"w8a8": {...}, ...} per layer], "total": {"w8a8": {...}, ...}}``.

    Each entry is ``{"latency_ms", "energy_mj" (None if unknown), "size_mb"}``;
    totals combine layers the target's way (``Target.model_cost``: sums unless the target says otherwise).
    """
    per_layer: list[dict] = [{} for _ in layers]
    total: dict[str, dict] = {}
    for w, a in settings:
        key = f"w{w}a{a}"
        costs = [target.cost(layer, w, a) for layer in layers]
        for entry, c in zip(per_layer, costs, strict=True):
            entry[key] = as_units(c)
        total[key] = as_units(combine_costs(target, costs))
    return {"per_layer": per_layer, "total": total}


def combine_costs(target: Target, costs: Sequence[LayerCost]) -> LayerCost:
    """A model's cost from its layers' (``Target.model_cost``); energy None if any layer lacks it."""
    energies = [c.energy_j for c in costs]
    return target.model_cost(
        np.array([c.latency_s for c in costs]),
        None if None in energies else np.array(energies, dtype=float),
        np.array([c.weight_bytes for c in costs]),
    )


def as_units(c: LayerCost) -> dict:
    """``{"latency_ms", "energy_mj" (None if unknown), "size_mb"}`` of a layer's or a model's cost."""
    return {
        "latency_ms": c.latency_s * 1e3,
        "energy_mj": None if c.energy_j is None else c.energy_j * 1e3,
        "size_mb": c.weight_bytes / 1e6,
    }
