"""Budget strings (``--latency 20ms``, ``--energy 0.6x``, ``--size 2MB``): parsed once, here.

Absolute budgets carry a unit and are stored in SI base units (seconds,
joules, bytes); relative ones (``0.6x`` or ``60%``) are a fraction of the
all-8-bit (w8a8) cost, resolved once that cost is known. Units are matched
case-insensitively (``mj`` is millijoules: nobody budgets megajoules); sizes
are bytes, decimal (KB = 1e3, MB = 1e6, GB = 1e9) or binary (KiB = 2**10,
MiB = 2**20, GiB = 2**30).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from haqc.errors import InputError
from haqc.quantities import QUANTITIES, REPORT_UNITS, Quantity, parse_unit

logger = logging.getLogger(__name__)

_RELATIVE = {"x": 1.0, "%": 0.01}
_HINTS: dict[Quantity, str] = {
    "latency": "s, ms or us (e.g. 20ms)",
    "energy": "J, mJ or uJ (e.g. 5mJ)",
    "size": "B, KB, MB, GB, KiB, MiB or GiB (e.g. 2MB)",
}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(\S*)\s*$")


@dataclass(frozen=True)
class Budget:
    """A latency, energy or size budget: absolute (SI base units) or a fraction of the w8a8 cost."""

    quantity: Quantity
    value: float
    relative: bool

    def resolve(self, w8a8_cost: float | None) -> float:
        """The budget in SI base units, given the all-8-bit cost of the same quantity on the same target."""
        if w8a8_cost is None:
            raise not_estimated(self.quantity)
        return self.value * w8a8_cost if self.relative else self.value

    def __str__(self) -> str:
        if self.relative:
            return f"{self.value * 100:g}% of the all-8-bit {self.quantity}"
        unit, factor = REPORT_UNITS[self.quantity]
        return f"{self.value / factor:g} {unit}"


def parse_budget(text: str, quantity: Quantity) -> Budget:
    """Parse ``20ms``, ``0.2J``, ``1.5MiB``, ``0.6x`` or ``60%``; anything else is an InputError."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    relative_hint = f"or a fraction of the all-8-bit {quantity} (0.6x or 60%)"
    match = _NUMBER.match(text)
    if not match:
        raise InputError(
            f"cannot read {quantity} budget {text!r}: give a number with a unit, {_HINTS[quantity]}, {relative_hint}"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        raise InputError(f"{quantity} budget {text!r} has no unit: use {_HINTS[quantity]}, {relative_hint}")
    if unit in _RELATIVE:
        budget = Budget(quantity, number * _RELATIVE[unit], relative=True)
    elif (known := parse_unit(unit)) is not None:
        unit_quantity, factor = known
        if unit_quantity != quantity:
            raise InputError(
                f"{text!r} is a{'n' if unit_quantity == 'energy' else ''} {unit_quantity}, not a {quantity} budget:"
                f" use {_HINTS[quantity]}, {relative_hint}"
            )
        budget = Budget(quantity, number * factor, relative=False)
    else:
        raise InputError(
            f"unknown unit {match.group(2)!r} in {quantity} budget {text!r}: use {_HINTS[quantity]}, {relative_hint}"
        )
    if not math.isfinite(budget.value) or budget.value <= 0:
        raise InputError(f"{quantity} budget {text!r} must be positive and finite")
    logger.debug("parsed %s budget %r as %s", quantity, text, budget)
    return budget


def not_estimated(quantity: Quantity) -> InputError:
    """The error for a budget on a quantity the target does not estimate, naming the targets that do
    (energy is the one some lack: every target estimates latency and size)."""
    from haqc.hw_targets.registry import available_targets  # loads every target: only on this error

    which = ", ".join(t.name for t in available_targets() if quantity != "energy" or t.energy) or "none installed"
    article = "an" if quantity[0] in "aeiou" else "a"
    return InputError(f"{article} {quantity} budget needs a target that estimates {quantity} (here: {which}); "
                      "this one does not")
