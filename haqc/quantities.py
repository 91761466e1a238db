"""The quantities haqc budgets and reports, and their units: the one place both are defined.

Costs are held in SI base units (seconds, joules, bytes) everywhere inside
haqc. Budgets are parsed with ``UNITS`` (plus a few spellings of micro and
the binary sizes), messages pick a unit from the same ladder
(``format_costs``), and reports use ``REPORT_UNITS`` (ms, mJ, MB).
"""
from __future__ import annotations

from typing import Literal, get_args

Quantity = Literal["latency", "energy", "size"]
QUANTITIES: tuple[Quantity, ...] = get_args(Quantity)

# Each quantity's units, largest first: (name, size in SI base units). Parsing and display share them.
UNITS: dict[Quantity, tuple[tuple[str, float], ...]] = {
    "latency": (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)),
    "energy": (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)),
    "size": (("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0)),
}
# Other spellings a budget may use (matched case-insensitively, like UNITS).
UNIT_ALIASES: dict[str, tuple[Quantity, float]] = {
    "µs": ("latency", 1e-6), "μs": ("latency", 1e-6), "µj": ("energy", 1e-6), "μj": ("energy", 1e-6),
    "kib": ("size", 2.0**10), "mib": ("size", 2.0**20), "gib": ("size", 2.0**30),
}
# The unit a report and a console table state each quantity in.
REPORT_UNITS: dict[Quantity, tuple[str, float]] = {"latency": ("ms", 1e-3), "energy": ("mJ", 1e-3), "size": ("MB", 1e6)}


def report_key(quantity: Quantity) -> str:
    """The report field of a quantity: ``latency_ms``, ``energy_mj``, ``size_mb``."""
    return f"{quantity}_{REPORT_UNITS[quantity][0].lower()}"


def in_report_units(quantity: Quantity, value: float) -> float:
    """An SI value in the report's unit (multiplying by 1e3 rather than dividing by 1e-3: exact for ms, mJ)."""
    factor = REPORT_UNITS[quantity][1]
    return value * round(1 / factor) if factor < 1 else value / factor


def as_units(costs: dict[str, float | None]) -> dict[str, float | None]:
    """SI costs by quantity -> the report's fields (every quantity present; None where unknown)."""
    return {report_key(q): None if costs.get(q) is None else in_report_units(q, costs[q]) for q in QUANTITIES}


def parse_unit(unit: str) -> tuple[Quantity, float] | None:
    """(quantity, factor to SI) of a unit name, case-insensitively; None if unknown."""
    unit = unit.lower()
    for quantity, units in UNITS.items():
        for name, factor in units:
            if name.lower() == unit:
                return quantity, factor
    return UNIT_ALIASES.get(unit)


def format_costs(quantity: Quantity, *values: float) -> list[str]:
    """Format values of one quantity in one shared unit (picked by the largest), e.g. ["1.2 ms", "1.53 ms"]."""
    largest = max(abs(v) for v in values)
    units = UNITS[quantity]
    name, factor = next(((n, f) for n, f in units if largest >= f), units[-1])
    return [f"{v / factor:.4g} {name}" for v in values]
