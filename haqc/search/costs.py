"""Cost tables as the search sees them: numbers per (layer, w_bits, a_bits), combined over layers
the target's way (``Target.combine``: a sum unless the target says otherwise; size always sums).

The hardware target computes the tables once (haqc.hw_targets); the search
only indexes them, so costing a policy is one vectorized fancy-index sum and
never calls a cost model inside the episode loop.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

QUANTITIES: tuple[str, ...] = ("latency", "energy", "size")  # seconds, joules, bytes
TABLE_BITS: tuple[int, ...] = tuple(range(2, 9))  # table index = bits - 2
MAX_TABLE_BITS = TABLE_BITS[-1]

# Display units, largest first: (name, size in SI base units).
_UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "latency": (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)),
    "energy": (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9)),
    "size": (("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0)),
}


class CostTable:
    """Per-layer costs at every (w, a) in 2..8, arrays of shape (n_layers, 7, 7) indexed [layer, w-2, a-2].

    Built from ``{"latency": ..., "energy": ..., "size": ...}``; a quantity
    given as None (a target without an energy model) is simply absent.
    ``combine`` turns a policy's per-layer latencies or energies into the
    model's (the target's ``combine``; default: the sum).
    """

    def __init__(self, tables: Mapping[str, np.ndarray | None],
                 combine: Callable[[np.ndarray], float] | None = None) -> None:
        self.combine = combine
        self.tables: dict[str, np.ndarray] = {}
        for quantity, table in tables.items():
            if table is None:
                continue
            if quantity not in QUANTITIES:
                raise ValueError(f"unknown cost quantity {quantity!r}; expected one of {QUANTITIES}")
            array = np.asarray(table, dtype=np.float64)
            if array.ndim != 3 or array.shape[1:] != (len(TABLE_BITS), len(TABLE_BITS)):
                raise ValueError(f"{quantity} table has shape {array.shape}; expected (n_layers, 7, 7)")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{quantity} table holds non-finite costs")
            self.tables[quantity] = array
        if not self.tables:
            raise ValueError("a cost table needs at least one quantity")
        sizes = {t.shape[0] for t in self.tables.values()}
        if len(sizes) != 1:
            raise ValueError(f"cost tables disagree on the number of layers: {sorted(sizes)}")
        self.n_layers = sizes.pop()
        self._rows = np.arange(self.n_layers)

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(self.tables)

    def cost(self, w_bits: np.ndarray, a_bits: np.ndarray) -> dict[str, float]:
        """The model's cost of a policy (one w and a in 2..8 per layer), per quantity."""
        wi, ai = self._index(w_bits), self._index(a_bits)
        return {q: self._combine(q, t[self._rows, wi, ai]) for q, t in self.tables.items()}

    def _combine(self, quantity: str, per_layer: np.ndarray) -> float:
        if self.combine is None or quantity == "size":
            return float(per_layer.sum())
        return float(self.combine(per_layer))

    def layer_cost(self, layer: int, w_bits: int, a_bits: int) -> dict[str, float]:
        """One layer's cost, per quantity (what lowering that layer saves, for the greedy baseline)."""
        wi, ai = int(self._index(w_bits)), int(self._index(a_bits))
        return {q: float(t[layer, wi, ai]) for q, t in self.tables.items()}

    def w8a8(self) -> dict[str, float]:
        """The all-8-bit cost: what relative budgets (``0.6x``) are fractions of."""
        eight = np.full(self.n_layers, MAX_TABLE_BITS)
        return self.cost(eight, eight)

    def digest(self) -> str:
        """A hash of the tables, so a resumed search can tell it is costing the same hardware."""
        h = hashlib.sha256()
        for quantity in sorted(self.tables):
            h.update(quantity.encode())
            h.update(np.ascontiguousarray(self.tables[quantity]).tobytes())
        return h.hexdigest()

    @staticmethod
    def _index(bits: np.ndarray | int) -> np.ndarray:
        index = np.asarray(bits, dtype=np.int64) - TABLE_BITS[0]
        if np.any(index < 0) or np.any(index >= len(TABLE_BITS)):
            # Negative indices would silently wrap around: refuse them.
            raise ValueError(f"bitwidths must lie in {TABLE_BITS[0]}..{MAX_TABLE_BITS}, got {bits}")
        return index


def format_costs(quantity: str, *values: float) -> list[str]:
    """Format values of one quantity in one shared unit (picked by the largest), e.g. ["1.2 ms", "1.53 ms"]."""
    largest = max(abs(v) for v in values)
    units = _UNITS[quantity]
    name, factor = next(((n, f) for n, f in units if largest >= f), units[-1])
    return [f"{v / factor:.4g} {name}" for v in values]
