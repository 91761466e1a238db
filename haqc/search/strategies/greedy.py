"""greedy: a fast non-RL baseline; its probes also warm-start ddpg.

Measure each free layer's sensitivity (``SearchSpace.free``: not pinned, not following a layer whose
weight it shares; lowering it lowers those too) (two evaluations per layer: its
weights alone, then its activations alone, lowered to the probe width p, the
widest uniform width that meets the budget: the width the search works at),
then, starting from the most precise policy, repeatedly take the one-step
lowering (one layer's weights or activations) with the best ratio of budget
saved to estimated loss, until the budget holds: few evaluations and a rough
loss model (the ilp strategy measures more and solves exactly). The loss of a
layer at (w, a) bits is modelled as s_w * r^(p-w) + s_a * r^(p-a):
quantization noise power quarters per bit (r = 4) where the loss is the
divergence from fp32's outputs; a metric's drop (an evaluator without a
divergence) is modelled as halving (r = 2). For options that are not widths,
each layer's loss at each option is measured (ilp's probes).
"""
from __future__ import annotations

import math

import numpy as np

from haqc.search.budget import violations
from haqc.search.env import QuantEnv
from haqc.search.ilp import MIN_DROP, sensitivities
from haqc.search.run import OneShot, Run
from haqc.search.space import LayerChoices, snap

# How much a layer's loss grows per bit removed: quantization noise power quarters per bit, which the
# divergence follows; a metric's drop was modelled as halving.
NOISE_PER_BIT = {"divergence": 4.0, "metric": 2.0}


class Greedy(OneShot):
    def choose(self, run: Run, config: None) -> np.ndarray:
        return greedy_choice(run.env, *loss_model(run))


def loss_model(run: Run) -> tuple[np.ndarray, float]:
    """loss[i, j], each layer's estimated loss at option j, and the least loss a lowering counts as.
    A model of widths is strictly monotone (floor 0); measured losses may tie, so there a step that
    loses nothing measurable still counts as losing the noise floor."""
    if run.env.space.by_width:
        return _modelled_loss(run), 0.0
    return sensitivities(run.env, run.probe), MIN_DROP


def greedy_choice(env: QuantEnv, loss: np.ndarray, floor: float) -> np.ndarray:
    """From the most precise policy, the one-step lowering with the best ratio of budget saved to
    loss added, repeated until the budget holds."""
    space, costs, limits = env.space, env.problem.costs, env.problem.limits
    chosen = space.most_precise()
    while over := violations(costs.cost(chosen), limits):
        best, best_ratio = None, 0.0
        for i in reversed(range(space.n_layers)):  # ties go to later layers, as in HAQ's enforcement
            if not space.free(i):
                continue
            now, group = int(chosen[i]), space.group(i)
            for new in space.layers[i].lowerings(now):
                saved_share = sum((costs.layer_cost(k, now)[q] - costs.layer_cost(k, new)[q]) / limits[q]
                                  for q in over for k in group)
                extra_loss = max(loss[i, new] - loss[i, now], floor)
                # a lowering that loses nothing (probes that moved no output: a saturated softmax) is free
                ratio = saved_share / extra_loss if extra_loss > 0 else math.inf if saved_share > 0 else 0.0
                if ratio > best_ratio:
                    best, best_ratio = (i, new), ratio
        if best is None:  # nothing saves anything (odd cost tables): leave the rest to budget enforcement
            break
        chosen[space.group(best[0])] = best[1]
    return chosen


def _modelled_loss(run: Run) -> np.ndarray:
    """loss[i, j] for options that are widths: each unpinned layer's weights alone and its activations
    alone lowered to the probe width p (``_probe_width``) give s_w and s_a, and
    s_w * r^(p - w) + s_a * r^(p - a) the loss at (w, a) (float activations add none; r: NOISE_PER_BIT)."""
    env = run.env
    space, top = env.space, env.space.most_precise()
    p = _probe_width(env)
    probes, owners = [], []  # (layer, "w" or "a") per probe
    for i, layer in enumerate(space.layers):
        if not space.free(i):
            continue
        for side, column in _width_probes(layer, int(top[i]), p).items():
            probes.append(top.copy())
            probes[-1][space.group(i)] = column
            owners.append((i, side))
    sensitivity = {owner: loss for owner, loss in zip(owners, run.probe(probes))}
    measured = not probes or env.scores(probes[:1])[0].divergence is not None
    r = NOISE_PER_BIT["divergence" if measured else "metric"]
    loss = np.zeros((space.n_layers, max(len(layer.options) for layer in space.layers)))
    for i, layer in enumerate(space.layers):
        for j, option in enumerate(layer.options):
            loss[i, j] = sensitivity.get((i, "w"), 0.0) * r ** (p - option.w_bits)
            if option.a_bits is not None:
                loss[i, j] += sensitivity.get((i, "a"), 0.0) * r ** (p - option.a_bits)
    return loss


def _probe_width(env: QuantEnv) -> int:
    """The width the search works at: the widest uniform width that meets the budget, or the one below
    the widest if that meets it (a probe must lower something)."""
    space, costs, limits = env.space, env.problem.costs, env.problem.limits
    widths = space.widths()
    for bits, columns in zip(widths, space.uniform_candidates()):
        if not violations(costs.cost(columns), limits):
            return min(bits, widths[min(1, len(widths) - 1)])
    return widths[-1]


def _width_probes(layer: LayerChoices, top: int, p: int) -> dict[str, int]:
    """The columns that lower a layer's weights alone ("w") and activations alone ("a") from ``top``
    to the supported width nearest ``p``; a side already at or below it is not probed."""
    if layer.grid:
        wi, ai = layer.bits(top)
        w, a = layer.w_levels[wi], layer.a_levels[ai]
        probes = {"w": layer.column(snap(p, layer.w_levels), a), "a": layer.column(w, snap(p, layer.a_levels))}
        return {side: column for side, column in probes.items() if column != top}
    w = snap(p, layer.w_levels)
    return {"w": layer.w_levels.index(w)} if w < layer.options[top].w_bits else {}
