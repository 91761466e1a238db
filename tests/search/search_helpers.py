"""A synthetic search problem: cost tables and an accuracy function made up to have a known answer.

Layers 0 and n-1 are small (they get pinned); ``SENSITIVE`` layers are cheap
but lose a lot of accuracy below 6 bits; the rest dominate the cost and barely
care. A good search keeps the sensitive layers wide and narrows the others;
the uniform baseline cannot.
"""
from __future__ import annotations

import numpy as np

from haqc.costs import CostTable, sum_costs
from haqc.layers import STATE_FEATURES
from haqc.policy import Policy
from haqc.precision import codebooks, grid, reference_option
from haqc.search import SearchProblem, SearchSpace

BITS = np.arange(2, 9)


def grid_table(tables: dict[str, np.ndarray], w_bits=tuple(BITS), a_bits=tuple(BITS), combine=sum_costs,
               kmeans: bool = False) -> CostTable:
    """A cost table from (n_layers, 7, 7) arrays indexed [layer, w - 2, a - 2]: the grid of ``w_bits`` x
    ``a_bits`` (kmeans: codebook options, costed at 8-bit activations)."""
    tables = {q: t for q, t in tables.items() if t is not None}
    n = next(iter(tables.values())).shape[0]
    if kmeans:
        options = codebooks(w_bits)
        values = {q: np.asarray(t)[:, [w - 2 for w in sorted(w_bits)], 6] for q, t in tables.items()}
    else:
        options = grid(w_bits, a_bits)
        values = {q: np.stack([np.asarray(t)[:, o.w_bits - 2, o.a_bits - 2] for o in options], axis=1)
                  for q, t in tables.items()}
    return CostTable([f"layer{i}" for i in range(n)], [options] * n, values, combine=combine)


def w8a8(table: CostTable) -> dict[str, float]:
    """The all-8-bit cost (the reference of relative budgets)."""
    option = reference_option("linear" if table.options[0][0].a_bits is not None else "kmeans")
    return table.policy_cost([option] * table.n_layers)


def columns(space: SearchSpace, w_bits, a_bits) -> np.ndarray:
    """(w, a) per layer as option columns of a grid space."""
    return np.array([layer.column(int(w), int(a)) for layer, w, a in zip(space.layers, w_bits, a_bits)])


def bits(space: SearchSpace, chosen) -> tuple[list[int], list]:
    """Option columns as (w list, a list)."""
    options = space.options(chosen)
    return [o.w_bits for o in options], [o.a_bits for o in options]
N_LAYERS = 6
SENSITIVE = (1, 3)
FP32_ACCURACY = 0.9


def bit_serial_costs(macs: np.ndarray, params: np.ndarray, kmeans: bool = False) -> CostTable:
    """Latency ~ macs * w * a (a bit-serial array), size = params * w / 8 bytes."""
    latency = macs[:, None, None] * BITS[None, :, None] * BITS[None, None, :] * 1e-12
    size = np.broadcast_to(params[:, None, None] * BITS[None, :, None] / 8.0, latency.shape)
    return grid_table({"latency": latency, "size": size}, kmeans=kmeans)


def synthetic_accuracy(policy: Policy) -> float:
    drop = 0.0
    for i, bits in enumerate(policy.values()):
        a = bits.a_bits if bits.a_bits is not None else 8
        if i in SENSITIVE:
            drop += 0.05 * (max(0, 6 - bits.w_bits) + max(0, 6 - a))
        else:
            drop += 0.001 * ((8 - bits.w_bits) + (8 - a))
    return max(0.0, FP32_ACCURACY - drop)


class Evaluator:
    """Counts calls; raises KeyboardInterrupt at call ``interrupt_at`` (a user pressing Ctrl-C)."""

    def __init__(self, fn=synthetic_accuracy, interrupt_at: int | None = None) -> None:
        self.fn, self.interrupt_at, self.calls = fn, interrupt_at, 0

    def __call__(self, policy: Policy) -> float:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.fn(policy)


def synthetic_problem(latency_fraction: float = 0.5, evaluate=None, kmeans: bool = False, **options) -> SearchProblem:
    macs = np.array([1e6, 2e6, 40e6, 2e6, 40e6, 1e6])
    params = np.array([1e3, 2e3, 40e3, 2e3, 40e3, 1e3])
    costs = bit_serial_costs(macs, params, kmeans)
    state = np.zeros((N_LAYERS, len(STATE_FEATURES)), dtype=np.float32)
    state[:, 0] = np.arange(N_LAYERS) / (N_LAYERS - 1)
    state[:, 6] = params / params.max()
    state[list(SENSITIVE), 7] = 1.0
    limits = {"latency": latency_fraction * w8a8(costs)["latency"]}
    return SearchProblem(
        layer_names=[f"layer{i}" for i in range(N_LAYERS)],
        state_matrix=state,
        costs=costs,
        limits=options.pop("limits", limits),
        evaluate=evaluate or Evaluator(),
        fp32_accuracy=options.pop("fp32_accuracy", FP32_ACCURACY),
        **options,
    )


def additive_costs(n_layers: int, scale: float = 1.0, size: bool = False, **levels) -> CostTable:
    """Per-layer latency = (w + a) * scale (every lowering saves the same); size = w bytes if asked."""
    latency = (BITS[:, None] + BITS[None, :]).astype(float) * scale
    tables = {"latency": np.broadcast_to(latency, (n_layers, 7, 7))}
    if size:
        tables["size"] = np.broadcast_to(BITS[:, None] * np.ones(7), (n_layers, 7, 7)).astype(float)
    return grid_table(tables, **levels)


class ExitsAt:
    """An evaluator whose process exits at its ``at``-th call: a worker that dies (run it in a worker only)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, policy: Policy) -> float:
        self.calls += 1
        if self.calls == self.at:
            import os

            os._exit(3)
        return synthetic_accuracy(policy)
