"""The ``ilp`` strategy: measured per-layer sensitivities, then the exact integer program (HiGHS).

HAWQ-V3 and ModelOpt's ``auto_quantize`` pick precisions this way. Each
free layer (``SearchSpace.free``) is probed with only itself (and the layers
that share its weight) lowered, everything else at its most precise option:
on a grid of widths once per weight width (activations widest)
and once per activation width (weights widest), and the drop at (w, a) is
modelled as the sum of the two (one evaluation per probe, n_layers x
(|W| + |A| - 2) in all); for other option lists every option is probed. A
probe's drop is its divergence from fp32's outputs where the evaluator
measures one (it adds up over layers, to first order), else its metric's drop. Then

    minimize   sum_ij drop[i, j] x[i, j]
    subject to sum_j x[i, j] = 1 per layer, x binary,
               sum_ij cost_q[i, j] x[i, j] <= limit_q for every budget q,

solved exactly by ``scipy.optimize.milp``. A target whose model cost is an
affine function of the layers' sum (``scale * sum + rest``: a measured target's
fit) gets that constraint; a transition between two layers' options (a
boundary conversion they add or save together) is one more variable y per
pair of columns, tied to the two choices: y >= x_a + x_b - 1 where it adds
cost, y <= x_a and y <= x_b where it saves some, so y is their product in every
solution that matters. A target whose model latency (or energy) is the maximum
over layers gets per-layer bounds instead of a sum; any other way of combining
cannot be written linearly and is refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Callable

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from haqc.costs import CostTable
from haqc.errors import InputError
from haqc.search.env import QuantEnv
from haqc.search.space import LayerChoices, SearchSpace

logger = logging.getLogger(__name__)

# Losses below this count as this, so a layer that seems not to care still prefers, among options
# that fit equally well, the more precise one, and the greedy strategy's ratios stay finite. Small
# against a metric's drop (0.0001 points) and against the divergences one lowered layer causes.
MIN_DROP = 1e-6


def sensitivities(env: QuantEnv, loss: Callable[[list[np.ndarray]], list[float]]) -> np.ndarray:
    """drop[i, j]: what layer i alone at option column j loses (0 at the most precise; 0 for pinned
    layers, which keep it). ``loss`` measures the probes (``QuantEnv.losses``), in the order given."""
    space = env.space
    top = space.most_precise()
    plans = {i: _probe_columns(layer, int(top[i])) for i, layer in enumerate(space.layers) if space.free(i)}
    candidates = []
    for i, (w_columns, a_columns) in plans.items():
        for column in (*w_columns, *a_columns):
            candidates.append(top.copy())
            candidates[-1][space.group(i)] = column
    lost = iter([max(value, MIN_DROP) for value in loss(candidates)])
    drops = np.zeros((space.n_layers, max(len(layer.options) for layer in space.layers)))
    for i, (w_columns, a_columns) in plans.items():
        layer = space.layers[i]
        # lower widths / options first, zero from the most precise one on
        per_w = [next(lost) for _ in w_columns] + [0.0] * (len(layer.w_levels if layer.grid else layer.options) - len(w_columns))
        per_a = [next(lost) for _ in a_columns] + [0.0] * (len(layer.a_levels or ()) - len(a_columns))
        for j in range(len(layer.options)):
            if layer.grid:
                wk, ak = layer.bits(j)
                drops[i, j] = per_w[wk] + per_a[ak]
            else:
                drops[i, j] = per_w[j]
    return drops


def _probe_columns(layer: LayerChoices, top: int) -> tuple[list[int], list[int]]:
    """One layer's probes: on a grid, each lower weight width (activations at the top's), then each
    lower activation width (weights at the top's); otherwise every option below the most precise."""
    if not layer.grid:
        return list(range(len(layer.options) - 1)), []
    wi_top, ai_top = layer.bits(top)
    return ([layer.column(w, layer.a_levels[ai_top]) for w in layer.w_levels[:wi_top]],
            [layer.column(layer.w_levels[wi_top], a) for a in layer.a_levels[:ai_top]])


def solve(table: CostTable, limits: dict[str, float], space: SearchSpace, drops: np.ndarray) -> np.ndarray:
    """The option column per layer that minimizes the summed drop under every limit (exact)."""
    n = space.n_layers
    sizes = [len(layer.options) for layer in space.layers]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    choices = int(offsets[-1])
    # One product variable per nonzero transition entry, after the choice variables.
    pairs = [(t, a, b) for t in table.transitions for a in range(sizes[t.producer]) for b in range(sizes[t.consumer])
             if any(v[a, b] != 0 for q, v in t.values.items() if q in limits)]
    variables = choices + len(pairs)
    objective = np.concatenate([*(drops[i, :k] for i, k in enumerate(sizes)), np.zeros(len(pairs))])
    upper = np.ones(variables)
    for i in range(n):
        if space.pinned[i]:
            upper[offsets[i]:offsets[i + 1] - 1] = 0  # only the most precise option
    one_per_layer = np.zeros((n, variables))
    for i in range(n):
        one_per_layer[i, offsets[i]:offsets[i + 1]] = 1
    constraints = [LinearConstraint(one_per_layer, 1, 1)]
    followers = [(i, j) for i, j in enumerate(space.leaders) if j != i]
    if followers:  # a layer that shares its leader's weight takes the leader's option
        same = np.zeros((sum(sizes[i] for i, _ in followers), variables))
        row = 0
        for i, j in followers:
            for k in range(sizes[i]):
                same[row, offsets[i] + k], same[row, offsets[j] + k] = 1, -1
                row += 1
        constraints.append(LinearConstraint(same, 0, 0))
    if pairs:
        constraints.append(_products(pairs, offsets, variables, limits))
    for quantity, limit in limits.items():
        costs = np.concatenate([table.values[quantity][i, :k] for i, k in enumerate(sizes)])
        how, scale, rest = ("sum", 1.0, 0.0) if quantity == "size" else _combination(table.combine)
        if how == "sum":
            extra = [t.values[quantity][a, b] if quantity in t.values else 0.0 for t, a, b in pairs]
            row = np.concatenate([costs, extra])
            constraints.append(LinearConstraint(scale * row[None, :], -np.inf, limit - rest))
        else:  # the slowest layer sets the model's cost: every layer's chosen option must fit alone
            upper[:choices][costs > limit] = 0
    integrality = np.concatenate([np.ones(choices), np.zeros(len(pairs))])
    with native_stdout_silenced():
        result = milp(objective, constraints=constraints, integrality=integrality, bounds=Bounds(0, upper))
    if result.x is None:  # check_budget has let the cheapest policy through, so this is HiGHS failing
        raise InputError(f"the integer program found no policy ({result.message}); try another strategy")
    chosen = np.rint(result.x[:choices]).astype(np.int64)
    return np.array([int(np.argmax(chosen[offsets[i]:offsets[i + 1]])) for i in range(n)], dtype=np.int64)


@contextlib.contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 1 meanwhile: scipy's HiGHS prints debug lines
    such as "HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();" between the
    progress bars, with its own output option off."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _products(pairs: list, offsets: np.ndarray, variables: int, limits: dict[str, float]) -> LinearConstraint:
    """y = x_a * x_b for each (transition, a, b): y >= x_a + x_b - 1 where it adds cost under some
    limit, y <= x_a and y <= x_b where it saves (the side the budget would push y to)."""
    rows, bounds = [], []

    def require(coefficients: dict[int, float], lower: float, upper: float) -> None:
        row = np.zeros(variables)
        row[list(coefficients)] = list(coefficients.values())
        rows.append(row)
        bounds.append((lower, upper))

    choices = int(offsets[-1])
    for k, (t, a, b) in enumerate(pairs):
        xa, xb, y = int(offsets[t.producer]) + a, int(offsets[t.consumer]) + b, choices + k
        if any(v[a, b] > 0 for q, v in t.values.items() if q in limits):  # adds cost: y >= x_a + x_b - 1
            require({y: 1, xa: -1, xb: -1}, -1, np.inf)
        if any(v[a, b] < 0 for q, v in t.values.items() if q in limits):  # saves: y <= x_a, y <= x_b
            require({y: 1, xa: -1}, -np.inf, 0)
            require({y: 1, xb: -1}, -np.inf, 0)
    lower, upper = zip(*bounds)
    return LinearConstraint(np.array(rows), lower, upper)


def _combination(combine: Callable[[np.ndarray], float]) -> tuple[str, float, float]:
    """How a target combines layer costs, checked on probes: ``("sum", scale, rest)`` for
    ``scale * sum + rest`` (the plain sum: 1, 0), or ``("max", 1, 0)``."""
    probe, other = np.array([0.3, 1.7, 0.9]), np.array([2.0, 0.1, 0.4])
    rest = float(combine(np.zeros(3)))
    scale = (float(combine(probe)) - rest) / probe.sum()
    if scale > 0 and np.isclose(combine(other), scale * other.sum() + rest):
        return "sum", scale, rest
    if np.isclose(combine(probe), probe.max()):
        return "max", 1.0, 0.0
    raise InputError("the ilp strategy needs a target whose layer costs add up (or scale a sum) or take their "
                     "maximum; use another strategy for this target")
