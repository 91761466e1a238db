"""A candidate's score: the task metric, and how far the candidate's outputs moved from fp32's.

Top-1 (or any bounded task metric) saturates: when fp32 and w8a8 both score 100%, a probe with one
layer lowered often still scores 100%, and a loss model built on it prices that layer at zero. The
divergence does not saturate: 0 only for fp32's own outputs, growing with every bit of noise, and
measured in the same pass over the data as the metric (``haqc.evaluation.divergence``). For class
scores it is the KL divergence of the class distributions, for other outputs their noise-to-signal
power ratio; both add up (to first order) over independent noise sources, such as layers lowered
together, which is what the probing strategies' loss models assume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from haqc.settings import REWARDS, Reward

__all__ = ["REWARDS", "Reward", "Score", "ScoreLike", "as_score"]


@dataclass(frozen=True)
class Score:
    """``metric`` in [0, 1] (higher is better); ``divergence`` >= 0 from fp32's outputs (None: not measured)."""

    metric: float
    divergence: float | None = None

    def __post_init__(self) -> None:
        # Plain floats (an evaluator may answer numpy scalars): checkpoints load with torch's weights_only.
        object.__setattr__(self, "metric", float(self.metric))
        if self.divergence is not None:
            object.__setattr__(self, "divergence", float(self.divergence))
        if not (math.isfinite(self.metric) and 0.0 <= self.metric <= 1.0):
            raise ValueError(f"evaluate() returned the score {self.metric!r}; expected a score in [0, 1]")
        if self.divergence is not None and not (self.divergence >= 0.0):  # NaN fails too
            raise ValueError(f"evaluate() returned the divergence {self.divergence!r}; expected a number >= 0")

    @property
    def fidelity(self) -> float:
        """exp(-divergence) in (0, 1]: the divergence on the metric's scale (1 at fp32's outputs)."""
        return 1.0 if self.divergence is None else math.exp(-self.divergence)


ScoreLike = Union[Score, float]


def as_score(value: ScoreLike) -> Score:
    """An evaluator's answer as a Score: a plain number is a metric without a divergence."""
    return value if isinstance(value, Score) else Score(float(value))
