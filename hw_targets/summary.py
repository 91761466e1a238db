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
    """``{"per_layer": [{"w8a8": {...}, ...} per layer], "total": {"w8a8": {...}, ...},
    "offered": [["w8a8", ...] per layer]}``.

    Each entry is ``{"latency_ms", "energy_mj" (None if unknown), "size_mb"}``;
    totals combine layers the target's way. Where every layer offers each of
    ``settings`` (a 2..8-bit grid), those; else every option each layer has a
    cost for (a measured target's formats per kind of layer), so none is hidden,
    with totals for the options every layer has. ``offered``: the options the
    search may choose (ort-cpu drops w8a8 where it timed no faster than fp32).
    """
    uniform = [o for o in settings if _everywhere(table, o, declared=True)]
    rows = [uniform] * table.n_layers if uniform else [list(options) for options in table.options]
    per_layer = [{o.name: as_units(table.layer_cost(i, table.index(i, o))) for o in row}
                 for i, row in enumerate(rows)]
    totals = uniform or [o for o in rows[0] if _everywhere(table, o, declared=False)]
    total = {o.name: as_units(table.cost(table.indices([o] * table.n_layers))) for o in totals}
    offered = [[o.name for o in options[:declared]] for options, declared in zip(table.options, table.declared)]
    return {"per_layer": per_layer, "total": total, "offered": offered}


def _everywhere(table: CostTable, option: Option, declared: bool) -> bool:
    """Whether every layer has ``option`` (among its ``declared`` ones, else among all it is costed at)."""
    return all(option in (opts[:n] if declared else opts) for opts, n in zip(table.options, table.declared))
