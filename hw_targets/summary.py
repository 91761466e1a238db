"""Per-layer and total cost of a model at a few uniform settings, for ``haqc inspect --target``.

Read off the target's one cost table and reported in the units people read
(``haqc.quantities.REPORT_UNITS``); energy is None when the target has no
energy model.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from haqc.costs import CostTable
from haqc.precision import Option
from haqc.quantities import as_units

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS: tuple[Option, ...] = (Option(8, 8), Option(4, 4), Option(2, 2))


def cost_summary(table: CostTable, settings: Sequence[Option] = DEFAULT_SETTINGS) -> dict:
    """``{"per_layer": [{"w8a8": {...}, ...} per layer], "total": {"w8a8": {...}, ...}}``.

    Each entry is ``{"latency_ms", "energy_mj" (None if unknown), "size_mb"}``;
    totals combine layers the target's way. Settings some layer does not offer
    are left out; when none is left, the options every layer offers are shown.
    """
    shown = [o for o in settings if _everywhere(table, o)] or [
        o for o in table.options[0][: table.declared[0]] if _everywhere(table, o)]
    per_layer: list[dict] = [{} for _ in range(table.n_layers)]
    total: dict[str, dict] = {}
    for option in shown:
        columns = table.indices([option] * table.n_layers)
        for i, entry in enumerate(per_layer):
            entry[option.name] = as_units(table.layer_cost(i, int(columns[i])))
        total[option.name] = as_units(table.cost(columns))
    return {"per_layer": per_layer, "total": total}


def _everywhere(table: CostTable, option: Option) -> bool:
    return all(option in opts[:declared] for opts, declared in zip(table.options, table.declared))
