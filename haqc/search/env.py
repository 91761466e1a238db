"""The HAQ search as a Gymnasium-style environment: one step per layer decision, reward at the end.

The API follows Gymnasium's (``reset() -> (obs, info)``, ``step(action) ->
(obs, reward, terminated, truncated, info)``, ``observation_space`` and
``action_space`` with ``low``/``high``/``shape``) without depending on it, so
an agent from another library can drive the search. It sees layers only as
feature rows and costs only as numbers; building and evaluating the quantized
model is the ``evaluate`` callback's business.

Where every layer's options are a grid of widths (today's targets, linear
method): two steps per layer, weight bits then activation bits. Otherwise
(weight-only k-means widths, or a target's own option list): one step per
layer, choosing an option (``haqc.search.space``). The observation is the layer's normalized static state
(``Extraction.state_matrix``, STATE_FEATURES order) followed by
``[is_weight_step, previous_action]``. The flag is 1 on the weight step and 0
on the activation step, as HAQ's comment says (its code has it inverted). The
previous action is the agent's action in [0, 1] at the previous step; the
first step sees 1.0, as if the unquantized input were at the widest width.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from haqc.costs import CostTable
from haqc.errors import InputError
from haqc.hw_targets.budget import not_estimated
from haqc.layers import STATE_FEATURES
from haqc.policy import Policy
from haqc.search.budget import check_budget, enforce_budget, violations
from haqc.search.parallel import Evaluations, InOrder
from haqc.search.score import REWARDS, Reward, Score, as_score
from haqc.search.space import SearchSpace, action_to_bits

logger = logging.getLogger(__name__)

ChoiceKey = tuple[int, ...]  # the option column per layer: the evaluation cache's key


@dataclass(frozen=True)
class Box:
    """A Gymnasium-like continuous space: elementwise bounds and a shape."""

    low: np.ndarray
    high: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.low.shape

    def contains(self, x: np.ndarray) -> bool:
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all(x >= self.low) and np.all(x <= self.high))


@dataclass(frozen=True)
class SearchProblem:
    """Everything a search needs: layers as state rows, a cost table, absolute limits and an evaluator.

    ``limits`` maps "latency" / "energy" / "size" to seconds / joules / bytes.
    ``evaluate(policy)`` returns a score in [0, 1] (top-1 accuracy or another
    metric), or a ``Score`` that adds the divergence of the candidate's outputs
    from fp32's, and must be deterministic (results are cached per policy);
    ``fp32_accuracy`` is the unquantized model's, the reward's reference. The
    options the search may choose are the table's declared ones. Pins (HAQ's,
    on by default): the first and the last layer get their most precise option
    (w8a8 on today's targets); the first layer's input is then costed and
    quantized at 8 bits too, a simple explicit choice where the reference
    leaves it unquantized but costs it as 7 bits. Pinned layers' steps still
    take an action, so every episode has the same layout; the pin overrides it.
    ``reward_lambda`` scales accuracies in percent, as HAQ does; ``reward`` says
    what is rewarded (``haqc.search.score``: the metric, the divergence, or
    both; without a measured divergence, the metric). ``parallel``,
    when given, scores several policies at once (``haqc.search.parallel``);
    its ``workers`` is the search's round size.
    """

    layer_names: Sequence[str]
    state_matrix: np.ndarray  # Extraction.state_matrix: (n_layers, len(STATE_FEATURES)), normalized
    costs: CostTable
    limits: Mapping[str, float]
    evaluate: Callable[[Policy], float] = field(repr=False)
    fp32_accuracy: float
    pin_first: bool = True
    pin_last: bool = True
    reward_lambda: float = 0.1
    reward: Reward = "metric"
    parallel: Evaluations | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.layer_names)
        expected = (n, len(STATE_FEATURES))
        if np.shape(self.state_matrix) != expected:
            raise ValueError(f"state_matrix has shape {np.shape(self.state_matrix)}; expected {expected}")
        if not 0.0 <= self.fp32_accuracy <= 1.0:
            raise ValueError(f"fp32_accuracy must be a fraction in [0, 1], got {self.fp32_accuracy!r}")
        if self.costs.n_layers != n:
            raise ValueError(f"the cost table covers {self.costs.n_layers} layers; the problem has {n}")
        for quantity, limit in self.limits.items():
            if quantity not in self.costs.quantities:
                raise not_estimated(quantity)
            if not (math.isfinite(limit) and limit > 0):
                raise InputError(f"the {quantity} budget must be a positive number, got {limit!r}")
        if self.reward not in REWARDS:
            raise InputError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARDS)}")

    def space(self) -> SearchSpace:
        return SearchSpace.build(self.costs, self.pin_first, self.pin_last)

    @property
    def evaluations(self) -> Evaluations:
        """What scores policies: ``parallel``, or ``evaluate`` one policy after another."""
        return self.parallel if self.parallel is not None else InOrder(self.evaluate)

    @property
    def workers(self) -> int:
        """How many policies are evaluated together (1: one after another, as ``evaluate`` is called)."""
        return self.evaluations.workers


@dataclass(frozen=True)
class Outcome:
    """A finished episode: the budget-enforced policy (as option columns and by name), costs, score, reward."""

    columns: tuple[int, ...]
    policy: Policy
    costs: dict[str, float]
    accuracy: float
    reward: float
    meets_budget: bool
    divergence: float | None = None


class QuantEnv:
    """HAQ's environment over a SearchProblem; also the one place that pins, enforces, evaluates and rewards."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self.space = problem.space()
        self.n_layers = len(problem.layer_names)
        self.steps_per_layer = 2 if self.space.two_step else 1
        self.steps_per_episode = self.steps_per_layer * self.n_layers
        self._state = np.asarray(problem.state_matrix, dtype=np.float32)
        self.observation_space = Box(  # the state rows' range, then the flag and the previous action in [0, 1]
            low=np.concatenate([self._state.min(axis=0), [0.0, 0.0]]).astype(np.float32),
            high=np.concatenate([self._state.max(axis=0), [1.0, 1.0]]).astype(np.float32),
        )
        self.action_space = Box(low=np.zeros(1, np.float32), high=np.ones(1, np.float32))
        self.evaluations = 0  # distinct policies scored (by the evaluator or a score file); repeats are free
        self._cache: dict[ChoiceKey, Score] = {}
        self.reset()

    def check_budget(self) -> None:
        """Raise BudgetUnreachableError now if no policy can meet the limits."""
        check_budget(self.problem.costs, self.problem.limits, self.space)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first layer's first step. The env is deterministic: ``seed`` is unused."""
        self._step = 0
        self._prev_action = 1.0
        self._w = np.zeros(self.n_layers, dtype=np.int64)  # two-step: the weight widths chosen so far
        self._columns = self.space.most_precise()
        return self._obs(), {}

    def step(self, action: float | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Bin the action into the current layer's weight or activation bits (or its option); at the
        last step, finish."""
        obs, terminated, info = self.advance(action)
        if not terminated:
            return obs, 0.0, False, False, info
        outcome = self.finish(self._columns)
        info["outcome"] = outcome  # the final policy, its costs, accuracy and reward
        return obs, outcome.reward, True, False, info

    def advance(self, action: float | np.ndarray) -> tuple[np.ndarray, bool, dict[str, Any]]:
        """``step`` without the final evaluation: (obs, terminated, info). A search that evaluates
        several episodes together plays each with this, then passes ``choice()`` to ``finish_all``."""
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        i, is_weight = self._step // self.steps_per_layer, self._is_weight_step()
        layer = self.space.layers[i]
        info: dict[str, Any] = {"layer": self.problem.layer_names[i], "kind": "weight" if is_weight else "activation"}
        if self.steps_per_layer == 1:
            self._columns[i] = layer.pick(a)
            option = layer.options[self._columns[i]]
            info.update(option=option.name, bits=option.w_bits)
        elif is_weight:
            self._w[i] = info["bits"] = action_to_bits(a, layer.w_levels)
        else:
            info["bits"] = action_to_bits(a, layer.a_levels)
            self._columns[i] = layer.column(int(self._w[i]), info["bits"])
        self._prev_action = a
        if self._step + 1 < self.steps_per_episode:
            self._step += 1
            return self._obs(), False, info
        return self._obs(), True, info

    def choice(self) -> np.ndarray:
        """The option columns the episode's actions chose so far (before pins and budget enforcement)."""
        return self._columns.copy()

    def finish(self, columns: np.ndarray) -> Outcome:
        """Pin, enforce the budget, evaluate (cached) and reward a full choice of options."""
        return self.finish_all([columns])[0]

    def finish_all(self, choices: Sequence[np.ndarray]) -> list[Outcome]:
        """``finish`` for several choices, their evaluations run together (in parallel, with workers)."""
        problem = self.problem
        chosen = [enforce_budget(problem.costs, problem.limits, self.space, self.space.pin(c)) for c in choices]
        outcomes = []
        for columns, score in zip(chosen, self.scores(chosen)):
            costs = problem.costs.cost(columns)
            outcomes.append(Outcome(
                columns=tuple(int(c) for c in columns),
                policy=self.policy(columns),
                costs=costs,
                accuracy=score.metric,
                reward=self.reward(score),
                meets_budget=not violations(costs, problem.limits),
                divergence=score.divergence,
            ))
        return outcomes

    def reward(self, score: Score) -> float:
        """HAQ's R = lambda * (acc_quant - acc_fp32), accuracies in percent; with the divergence as the
        reward, its fidelity exp(-divergence) stands in for the accuracy (fp32's is 1); ``both`` adds the two."""
        kind = self.problem.reward if score.divergence is not None else "metric"
        lost = {"metric": self.problem.fp32_accuracy - score.metric, "divergence": 1.0 - score.fidelity}
        if kind == "both":
            return -self.problem.reward_lambda * 100.0 * sum(lost.values())
        return -self.problem.reward_lambda * 100.0 * lost[kind]

    def accuracy(self, columns: np.ndarray) -> float:
        """The evaluator's metric for these options; a policy seen before is not evaluated again."""
        return self.scores([columns])[0].metric

    def accuracies(self, candidates: Sequence[np.ndarray]) -> list[float]:
        """The metric of several choices of options (``scores``)."""
        return [score.metric for score in self.scores(candidates)]

    def losses(self, candidates: Sequence[np.ndarray]) -> list[float]:
        """What each candidate lost against fp32 by the signal that does not saturate: its divergence
        where the evaluator measures one, else its metric's drop (never below 0)."""
        return [score.divergence if score.divergence is not None
                else max(self.problem.fp32_accuracy - score.metric, 0.0) for score in self.scores(candidates)]

    def scores(self, candidates: Sequence[np.ndarray]) -> list[Score]:
        """Scores for several choices of options: each unseen policy evaluated once, all of them together
        when the problem has parallel workers, and cached in the order given (not the order they finish)."""
        keys: list[ChoiceKey] = [tuple(int(c) for c in columns) for columns in candidates]
        missing = [key for key in dict.fromkeys(keys) if key not in self._cache]
        if missing:
            scores = self.problem.evaluations.map([self.policy(key) for key in missing])
            for key, score in zip(missing, scores):
                self._cache[key] = as_score(score)
                self.evaluations += 1
        return [self._cache[key] for key in keys]

    def evaluated(self) -> list[tuple[tuple[int, ...], Score]]:
        """Every distinct policy evaluated so far (option columns, score), in evaluation order."""
        return list(self._cache.items())

    def policy(self, columns: Sequence[int]) -> Policy:
        """Option columns as a haqc Policy."""
        return dict(zip(self.problem.layer_names, self.space.options(columns)))

    def state_dict(self) -> dict[str, Any]:
        """The evaluation cache (as plain tuples: checkpoints load with torch's weights_only) and call
        count: what a resumed search must not pay for again."""
        return {"cache": {key: (s.metric, s.divergence) for key, s in self._cache.items()},
                "evaluations": self.evaluations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._cache = {key: Score(*value) for key, value in state["cache"].items()}
        self.evaluations = int(state["evaluations"])

    def _is_weight_step(self) -> bool:
        return self._step % self.steps_per_layer == 0

    def _obs(self) -> np.ndarray:
        layer = min(self._step // self.steps_per_layer, self.n_layers - 1)
        extra = np.array([float(self._is_weight_step()), self._prev_action], dtype=np.float32)
        return np.concatenate([self._state[layer], extra])
