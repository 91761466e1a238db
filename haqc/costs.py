"""Cost tables: what every layer costs at each of its precision options, and how layers add up.

A hardware target builds one ``CostTable`` for a model (``Target.cost_table``);
the budget check, the search, ``inspect`` and the report all read that table,
so a policy has one cost wherever it is stated. Costs are in SI base units
(seconds, joules, bytes; ``haqc.quantities``), per batch of the target's
batch size.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from haqc.precision import Method, Option, reference_option
from haqc.quantities import QUANTITIES

logger = logging.getLogger(__name__)

Combine = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Transition:
    """What running ``producer`` and ``consumer`` (layers whose output feeds the other's input) at
    given options adds to the consumer's cost, beyond their own: ``values[a, b]`` with the producer
    at column a and the consumer at column b, per quantity (e.g. the conversion two chained integer
    layers no longer pay: negative). Zero where not stated."""

    producer: int
    consumer: int
    values: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LayerCost:
    """The cost of one layer (or a whole model) for one batch of ``Target.batch`` samples."""

    latency_s: float
    energy_j: float | None  # None: this target cannot estimate energy
    weight_bytes: float


def sum_costs(per_layer: np.ndarray) -> float:
    """The default way layers add up (and always the way sizes do)."""
    return float(np.sum(per_layer))


class CostTable:
    """Per-layer costs at each layer's options, combined over layers by ``combine``.

    ``options[i]`` lists layer i's options: the ``declared[i]`` the target
    offers the search (cheapest first), then any reference options costed for
    the report only (fp32, the all-8-bit option). ``values[q]`` has shape
    (n_layers, max options), NaN past a layer's options. A quantity a target
    cannot estimate (energy, on most) is absent. ``transitions`` add what a pair of
    connected layers costs together beyond their own costs (a measured target's
    boundary conversions). ``kinds`` are the layers' kinds (``Layer.kind``: an
    embedding lookup is neither pinned nor given an input format). ``combine`` turns a policy's
    per-layer latencies or energies into the model's (the target's; sizes
    always sum).
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        options: Sequence[Sequence[Option]],
        values: Mapping[str, np.ndarray | None],
        *,
        declared: Sequence[int] | None = None,
        combine: Combine = sum_costs,
        transitions: Sequence[Transition] = (),
        kinds: Sequence[str] | None = None,
        leaders: Sequence[int] | None = None,
    ) -> None:
        self.layer_names = tuple(layer_names)
        self.kinds = tuple(kinds) if kinds is not None else ("conv",) * len(self.layer_names)
        self.options = tuple(tuple(o) for o in options)
        self.declared = tuple(declared) if declared is not None else tuple(len(o) for o in self.options)
        self.combine = combine
        n = len(self.layer_names)
        if len(self.options) != n or len(self.declared) != n:
            raise ValueError(f"a cost table needs options for each of its {n} layers")
        if any(not 0 < d <= len(o) for d, o in zip(self.declared, self.options)):
            raise ValueError("every layer needs at least one declared option")
        self._index = [{o: j for j, o in enumerate(opts)} for opts in self.options]
        if any(len(ix) != len(opts) for ix, opts in zip(self._index, self.options)):
            raise ValueError("a layer lists the same option twice")
        width = max(len(o) for o in self.options)
        self.values: dict[str, np.ndarray] = {}
        for quantity, table in values.items():
            if table is None:
                continue
            if quantity not in QUANTITIES:
                raise ValueError(f"unknown cost quantity {quantity!r}; expected one of {QUANTITIES}")
            array = np.asarray(table, dtype=np.float64)
            if array.shape != (n, width):
                raise ValueError(f"{quantity} table has shape {array.shape}; expected {(n, width)}")
            for i, opts in enumerate(self.options):
                if not np.all(np.isfinite(array[i, : len(opts)])):
                    raise ValueError(f"{quantity} of layer {self.layer_names[i]!r} is not a finite number")
            self.values[quantity] = array
        if not self.values:
            raise ValueError("a cost table needs at least one quantity")
        for t in transitions:
            for quantity, table in t.values.items():
                shape = (len(self.options[t.producer]), len(self.options[t.consumer]))
                if quantity not in self.values or np.shape(table) != shape or not np.all(np.isfinite(table)):
                    raise ValueError(f"transition {t.producer} -> {t.consumer}: {quantity} needs finite values "
                                     f"of shape {shape} for a quantity of the table")
        self.transitions = tuple(transitions)
        self._rows = np.arange(n)
        # A layer follows the layer whose weight it reads where both have the same options; its weights are
        # stored once, at the leader (a size of 0 here).
        self.leaders = tuple(int(j) if j < i and self.options[j] == self.options[i] else i
                             for i, j in enumerate(leaders if leaders is not None else range(n)))
        if "size" in self.values and self.leaders != tuple(range(n)):
            self.values["size"] = self.values["size"].copy()
            for i, j in enumerate(self.leaders):
                if j != i:
                    self.values["size"][i, : len(self.options[i])] = 0.0

    def sharing(self, leaders: Sequence[int]) -> CostTable:
        """This table with ``leaders[i]``, the first layer that reads layer i's weight (``haqc.layers.
        weight_leaders``), deciding layer i's option where their options agree."""
        return CostTable(self.layer_names, self.options, dict(self.values), declared=self.declared,
                         combine=self.combine, transitions=self.transitions, kinds=self.kinds, leaders=leaders)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(self.values)

    def index(self, layer: int, option: Option) -> int:
        """Column of ``option`` in layer ``layer``'s row; ValueError if the table does not cost it."""
        try:
            return self._index[layer][option]
        except KeyError:
            raise ValueError(f"layer {self.layer_names[layer]!r} has no option {option.name}") from None

    def indices(self, options: Sequence[Option]) -> np.ndarray:
        """Columns of one option per layer (a policy in layer order)."""
        return np.array([self.index(i, o) for i, o in enumerate(options)], dtype=np.int64)

    def cost(self, columns: np.ndarray) -> dict[str, float]:
        """The model's cost with layer i at column ``columns[i]``, per quantity (transitions included)."""
        columns = np.asarray(columns, dtype=np.int64)
        return {q: self._combine(q, self.per_layer(q, columns)) for q in self.values}

    def per_layer(self, quantity: str, columns: np.ndarray) -> np.ndarray:
        """Each layer's ``quantity`` at ``columns``, its transitions from its producers added."""
        out = self.values[quantity][self._rows, columns]  # a new array: fancy indexing copies
        for t in self.transitions:
            if quantity in t.values:
                out[t.consumer] += t.values[quantity][columns[t.producer], columns[t.consumer]]
        return out

    def reference(self, method: Method) -> list[Option]:
        """Each layer's all-8-bit option (relative budgets are fractions of its cost)."""
        return [reference_option(method, kind) for kind in self.kinds]

    def policy_cost(self, options: Sequence[Option]) -> dict[str, float]:
        """The model's cost of one option per layer, per quantity."""
        return self.cost(self.indices(options))

    def layer_cost(self, layer: int, column: int) -> dict[str, float]:
        """One layer's own cost at one column, per quantity (without transitions)."""
        return {q: float(t[layer, column]) for q, t in self.values.items()}

    def _combine(self, quantity: str, per_layer: np.ndarray) -> float:
        return sum_costs(per_layer) if quantity == "size" else float(self.combine(per_layer))

    def digest(self) -> str:
        """A hash of options and costs, so a resumed search can tell it is costing the same hardware."""
        h = hashlib.sha256()
        h.update(repr([[o.name for o in opts] for opts in self.options]).encode())
        for quantity in sorted(self.values):
            h.update(quantity.encode())
            h.update(np.ascontiguousarray(np.nan_to_num(self.values[quantity], nan=-1.0)).tobytes())
        if self.leaders != tuple(range(self.n_layers)):
            h.update(repr(self.leaders).encode())
        for t in self.transitions:
            h.update(repr((t.producer, t.consumer, sorted(t.values))).encode())
            for quantity in sorted(t.values):
                h.update(np.ascontiguousarray(t.values[quantity], dtype=np.float64).tobytes())
        return h.hexdigest()


def padded(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Ragged per-layer rows as one (n_layers, max length) float array, NaN-padded."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), math.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
