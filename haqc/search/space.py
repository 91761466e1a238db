"""What the search may give each layer, and how a continuous action becomes one option.

Each layer's choices are the options its target declares, cheapest first
(columns 0.. of its cost-table row). Where every layer's options are a grid of
weight x activation widths, the search takes HAQ's two steps per layer
(weight bits, then activation bits); otherwise one step per layer picks an
option from the ordered list.

HAQ's action binning: a in [0, 1] splits into b_max - b_min + 1 equal-width
bins, bin k giving b_min + k bits. A target may support a non-contiguous set
(e.g. 2, 4, 8); a binned width it lacks becomes the nearest supported width
not above it, so the agent never gets more precision than it asked for. A list
of options that are not widths (fp32, w8a8, w4a8) is binned by position: n
equal bins over the n options.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from haqc.costs import CostTable
from haqc.precision import Option

logger = logging.getLogger(__name__)


def action_to_bits(action: float, levels: Sequence[int]) -> int:
    """HAQ's round(b_min - 0.5 + a * (b_max - b_min + 1)), then snapped to a supported width.

    Written as floor(b_min + a * n_bins): the same map, but with half-open bins
    [k/n, (k+1)/n) so a point exactly on a bin edge always goes up (np.round's
    round-half-to-even would alternate); a = 1 lands in the last bin.
    """
    lo, hi = levels[0], levels[-1]
    bits = min(hi, max(lo, math.floor(lo + float(action) * (hi - lo + 1))))
    return snap(bits, levels)


def bits_to_action(bits: int, levels: Sequence[int]) -> float:
    """The centre of the action bin that ``action_to_bits`` maps to ``bits`` (a supported width)."""
    lo, hi = levels[0], levels[-1]
    return (bits - lo + 0.5) / (hi - lo + 1)


def snap(bits: int, levels: Sequence[int]) -> int:
    """The widest supported width not above ``bits`` (the narrowest if none is)."""
    return max((b for b in levels if b <= bits), default=levels[0])


def lower(bits: int, levels: Sequence[int]) -> int | None:
    """The next supported width below ``bits``, or None at the bottom (budget enforcement's "minus one")."""
    return max((b for b in levels if b < bits), default=None)


@dataclass(frozen=True)
class LayerChoices:
    """One layer's options, cheapest first, and their structure.

    ``w_levels``/``a_levels`` are set when the options are exactly their grid
    (``haqc.precision.grid``) with quantized activations: the two-step choice.
    ``w_levels`` alone is set for weight-only widths (the k-means setting),
    binned by width like a grid axis. Otherwise options are binned by position.
    """

    options: tuple[Option, ...]
    w_levels: tuple[int, ...] | None = None
    a_levels: tuple[int, ...] | None = None

    @classmethod
    def of(cls, options: Sequence[Option]) -> LayerChoices:
        options = tuple(options)
        ws, as_ = [o.w_bits for o in options], [o.a_bits for o in options]
        if None not in ws and None not in as_:
            w_levels, a_levels = tuple(sorted(set(ws))), tuple(sorted(set(as_)))
            if options == tuple(Option(w, a) for w in w_levels for a in a_levels):
                return cls(options, w_levels, a_levels)
        if None not in ws and set(as_) == {None} and ws == sorted(set(ws)):
            return cls(options, tuple(ws))
        return cls(options)

    @property
    def grid(self) -> bool:
        return self.a_levels is not None

    def column(self, w_bits: int, a_bits: int) -> int:
        """The column of grid option (w, a)."""
        return self.w_levels.index(w_bits) * len(self.a_levels) + self.a_levels.index(a_bits)

    def bits(self, column: int) -> tuple[int, int]:
        """(w, a) of a grid column."""
        return divmod(column, len(self.a_levels))

    def pick(self, action: float) -> int:
        """One-step choice: the column an action in [0, 1] bins to."""
        if self.w_levels is not None and not self.grid:
            return self.w_levels.index(action_to_bits(action, self.w_levels))
        return min(len(self.options) - 1, max(0, math.floor(float(action) * len(self.options))))

    def actions(self, column: int) -> tuple[float, ...]:
        """The actions that choose ``column``: (weight, activation) on a grid, else one."""
        if self.grid:
            w, a = self.bits(column)
            return bits_to_action(self.w_levels[w], self.w_levels), bits_to_action(self.a_levels[a], self.a_levels)
        if self.w_levels is not None:
            return (bits_to_action(self.options[column].w_bits, self.w_levels),)
        return ((column + 0.5) / len(self.options),)

    def lower_activation(self, column: int) -> int | None:
        """A grid column with the activation one supported width narrower; None at the bottom or off-grid."""
        if not self.grid:
            return None
        wi, ai = self.bits(column)
        return self.column(self.w_levels[wi], self.a_levels[ai - 1]) if ai > 0 else None

    def lower_weight(self, column: int) -> int | None:
        """The column with the weights one step narrower (for an option list: the next cheaper option)."""
        if self.grid:
            wi, ai = self.bits(column)
            return self.column(self.w_levels[wi - 1], self.a_levels[ai]) if wi > 0 else None
        if self.w_levels is not None:
            below = lower(self.options[column].w_bits, self.w_levels)
            return None if below is None else self.w_levels.index(below)
        return column - 1 if column > 0 else None

    def lowerings(self, column: int) -> Iterator[int]:
        """The columns one step cheaper: activations one width down, or weights one down."""
        for below in (self.lower_activation(column), self.lower_weight(column)):
            if below is not None:
                yield below

    def enforcement_steps(self, column: int) -> Iterator[int]:
        """HAQ's enforcement on one layer: the activations one step down, then the weights too."""
        below = self.lower_activation(column)
        if below is not None:
            column = below
            yield column
        below = self.lower_weight(column)
        if below is not None:
            yield below

    def uniform(self, bits: int) -> int:
        """The column of "every tensor at ``bits``" (snapped to what is supported)."""
        if self.grid:
            return self.column(snap(bits, self.w_levels), snap(bits, self.a_levels))
        return self.w_levels.index(snap(bits, self.w_levels))


@dataclass(frozen=True)
class SearchSpace:
    """Every layer's choices, which layers are pinned at their most precise option, and which follow
    another's choice (``leaders[i]``: the layer whose shared weight layer i reads; () for none)."""

    layers: tuple[LayerChoices, ...]
    pinned: tuple[bool, ...]
    leaders: tuple[int, ...] = ()

    @classmethod
    def build(cls, table: CostTable, pin_first: bool = True, pin_last: bool = True) -> SearchSpace:
        """The declared options of each layer of ``table``; HAQ pins the first and last compute layer
        (an embedding lookup before or after them is not the layer the pin protects), and with it every
        layer that shares its weight."""
        layers = tuple(LayerChoices.of(opts[:n]) for opts, n in zip(table.options, table.declared))
        pinned = [False] * len(layers)
        compute = [i for i, kind in enumerate(table.kinds) if kind != "embedding"] or list(range(len(layers)))
        if pin_first:
            pinned[table.leaders[compute[0]]] = True
        if pin_last:
            pinned[table.leaders[compute[-1]]] = True
        return cls(layers, tuple(pinned[j] for j in table.leaders), table.leaders)

    def free(self, i: int) -> bool:
        """Whether layer i's option is a decision of its own: not pinned, not following another layer."""
        return not self.pinned[i] and (not self.leaders or self.leaders[i] == i)

    def group(self, i: int) -> list[int]:
        """Layer i and the layers that follow its choice."""
        return [k for k, j in enumerate(self.leaders) if j == i] if self.leaders else [i]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def two_step(self) -> bool:
        """HAQ's weight step then activation step per layer (every layer's options are a grid)."""
        return all(layer.grid for layer in self.layers)

    @property
    def by_width(self) -> bool:
        """Every layer's options are widths (a grid or weight-only), so "w/a bits" orders them."""
        return all(layer.w_levels is not None for layer in self.layers)

    def pin(self, columns: np.ndarray) -> np.ndarray:
        """A copy with the pinned layers at their most precise option and every layer that follows
        another at its leader's."""
        out = np.array(columns, dtype=np.int64)
        for i, layer in enumerate(self.layers):
            if self.pinned[i]:
                out[i] = len(layer.options) - 1
        if self.leaders:
            out = out[list(self.leaders)]
        return out

    def cheapest(self) -> np.ndarray:
        """Every unpinned layer at its cheapest option: where budget enforcement ends if it must."""
        return self.pin(np.zeros(self.n_layers, dtype=np.int64))

    def most_precise(self) -> np.ndarray:
        return np.array([len(layer.options) - 1 for layer in self.layers], dtype=np.int64)

    def uniform_candidates(self) -> Iterator[np.ndarray]:
        """Single-precision policies, most precise first (pins applied): every tensor at b bits for
        b from the widest supported down, or, for option lists, every layer k options from its top."""
        if self.by_width:
            for bits in self.widths():
                yield self.pin(np.array([layer.uniform(bits) for layer in self.layers]))
            return
        for k in range(max(len(layer.options) for layer in self.layers)):
            yield self.pin(np.array([max(0, len(layer.options) - 1 - k) for layer in self.layers]))

    def widths(self) -> list[int]:
        """Every width some layer supports, widest first (a space whose options are widths)."""
        return sorted(set().union(*(set(l.w_levels) | set(l.a_levels or ()) for l in self.layers)), reverse=True)

    def options(self, columns: Sequence[int]) -> list[Option]:
        return [layer.options[int(c)] for layer, c in zip(self.layers, columns)]

    def describe_cheapest(self) -> str:
        """E.g. "w2a2 everywhere except pinned layers", for error messages."""
        names = dict.fromkeys(layer.options[0].name for layer, p in zip(self.layers, self.pinned) if not p)
        what = "/".join(names) if names else "the most precise option"
        return f"{what} everywhere{' except pinned layers' if any(self.pinned) else ''}"
