"""Which bitwidths the search may give each layer, and how a continuous action becomes one.

HAQ's action binning: a in [0, 1] splits into b_max - b_min + 1 equal-width
bins, bin k giving b_min + k bits. A target may support a non-contiguous set
(e.g. 2, 4, 8); a binned width it lacks becomes the nearest supported width
not above it, so the agent never gets more precision than it asked for.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from haqc.errors import InputError
from haqc.search.costs import MAX_TABLE_BITS, TABLE_BITS

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


def snap(bits: int, levels: Sequence[int]) -> int:
    """The widest supported width not above ``bits`` (the narrowest if none is)."""
    return max((b for b in levels if b <= bits), default=levels[0])


def lower(bits: int, levels: Sequence[int]) -> int | None:
    """The next supported width below ``bits``, or None at the bottom (budget enforcement's "minus one")."""
    return max((b for b in levels if b < bits), default=None)


@dataclass(frozen=True)
class BitSpace:
    """Supported weight/activation widths (ascending, within 2..8) and the layers pinned at the widest.

    ``activations`` is False in k-means mode: activations stay float, are not
    searched, and are costed at 8 bits (``a_levels == (8,)``), which a size
    budget does not depend on anyway.
    """

    w_levels: tuple[int, ...]
    a_levels: tuple[int, ...]
    pinned: tuple[bool, ...]
    activations: bool = True

    @classmethod
    def build(
        cls,
        n_layers: int,
        w_bits: Sequence[int] = TABLE_BITS,
        a_bits: Sequence[int] = TABLE_BITS,
        pin_first: bool = True,
        pin_last: bool = True,
        activations: bool = True,
    ) -> BitSpace:
        """Keep the supported widths the cost tables cover (2..8) and mark the pinned layers."""
        pinned = [False] * n_layers
        if pin_first:
            pinned[0] = True
        if pin_last:
            pinned[-1] = True
        a_levels = _levels(a_bits, "activation") if activations else (MAX_TABLE_BITS,)
        return cls(_levels(w_bits, "weight"), a_levels, tuple(pinned), activations)

    @property
    def n_layers(self) -> int:
        return len(self.pinned)

    def pin(self, w_bits: np.ndarray, a_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copies with the pinned layers set to the widest supported weights and activations."""
        w, a = np.array(w_bits, dtype=np.int64), np.array(a_bits, dtype=np.int64)
        mask = np.array(self.pinned)
        w[mask], a[mask] = self.w_levels[-1], self.a_levels[-1]
        return w, a

    def uniform(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Every layer at ``bits`` (snapped to what is supported), pins applied."""
        n = self.n_layers
        return self.pin(np.full(n, snap(bits, self.w_levels)), np.full(n, snap(bits, self.a_levels)))

    def cheapest(self) -> tuple[np.ndarray, np.ndarray]:
        """Every unpinned layer at the narrowest widths: where budget enforcement ends if it must."""
        n = self.n_layers
        return self.pin(np.full(n, self.w_levels[0]), np.full(n, self.a_levels[0]))

    def describe_cheapest(self) -> str:
        """E.g. "w2a2 everywhere except pinned layers", for error messages."""
        bits = f"w{self.w_levels[0]}a{self.a_levels[0]}" if self.activations else f"w{self.w_levels[0]}"
        return f"{bits} everywhere{' except pinned layers' if any(self.pinned) else ''}"


def _levels(bits: Sequence[int], what: str) -> tuple[int, ...]:
    levels = tuple(sorted({int(b) for b in bits if TABLE_BITS[0] <= b <= MAX_TABLE_BITS}))
    if not levels:
        raise InputError(
            f"the target supports no {what} bitwidth in {TABLE_BITS[0]}..{MAX_TABLE_BITS} ({list(bits)}); "
            "the search needs at least one"
        )
    dropped = sorted(set(bits) - set(levels))
    if dropped:
        logger.info("%s bitwidths %s are outside the search range %d..%d; skipped",
                    what, dropped, TABLE_BITS[0], MAX_TABLE_BITS)
    return levels
