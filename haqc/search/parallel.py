"""Several candidate policies scored at once: the search's side of parallel evaluation.

The search never starts processes itself: a ``SearchProblem`` may carry an
``Evaluations`` engine (``haqc.workers`` builds one over Ray) whose
``map(policies)`` scores a batch and returns the scores (numbers or
``haqc.search.score.Score``) in the order given,
never in the order they finish, so a parallel search takes the same course
as a serial one with the same round size. ``workers`` is that round size:
DDPG and random act for that many episodes before evaluating them together,
and probing strategies evaluate that many probes at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from haqc.policy import Policy
from haqc.search.score import ScoreLike


class Evaluations(Protocol):
    """Scores for a batch of policies, in submission order."""

    @property
    def workers(self) -> int: ...

    def map(self, policies: Sequence[Policy]) -> list[ScoreLike]: ...


@dataclass(frozen=True)
class InOrder:
    """One policy after another in this process, in rounds of ``workers``: the serial search (one
    worker), and what a pool of that size computes without the pool (the reference a pool must
    agree with)."""

    evaluate: Callable[[Policy], ScoreLike]
    workers: int = 1

    def map(self, policies: Sequence[Policy]) -> list[ScoreLike]:
        return [self.evaluate(policy) for policy in policies]


def rounds(start: int, stop: int, size: int) -> list[range]:
    """[start, stop) cut into consecutive ranges of ``size`` (the last may be shorter)."""
    return [range(i, min(i + size, stop)) for i in range(start, stop, size)]
