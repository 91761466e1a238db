"""Search strategies: a ``Strategy`` protocol, the ``haqc.strategies`` entry-point group, and ``search``.

``search(problem, strategy, episodes, seed) -> SearchResult`` runs any
registered strategy. The built-ins (ddpg, random, uniform, greedy, ilp; one
module each here) register through the same entry-point group a plugin package
uses (setup.cfg), so there is one discovery path; docs/extending.md shows how
to add one. An entry point names a Strategy instance or a class whose
no-argument call makes one.

A strategy plays a ``Run`` (``haqc.search.run``): it finishes choices of options
through ``run.env`` (pins, budget enforcement, cached evaluation, reward),
records each outcome, and saves when a checkpoint would spare a resumed run
work. Every strategy caches evaluations per policy, keeps a per-episode history
for plots, checkpoints to ``workdir`` and resumes from there.

Probes read the loss that does not saturate (``QuantEnv.losses``): the
divergence of the candidate's outputs from fp32's where the evaluator measures
it (``haqc.search.score``), else the metric's drop. Episodes are rewarded as
the problem's ``reward`` says.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Protocol, runtime_checkable

from haqc.errors import InputError
from haqc.plugins import one_line, registered, source
from haqc.search.checkpoint import fingerprint
from haqc.search.env import QuantEnv, SearchProblem
from haqc.search.run import Progress, Run, SearchResult
from haqc.settings import STRATEGY_NAMES

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "haqc.strategies"


@runtime_checkable
class Strategy(Protocol):
    """What a search strategy provides.

    ``config_type``: its configuration class (a dataclass whose no-argument call gives the
    defaults), or None when it takes none. ``episodic``: whether it plays episodes in rounds of the
    problem's workers (its course then depends on the round size, which resuming checks).
    ``play(run, config)``: search until done, recording outcomes in ``run``.
    """

    config_type: type | None
    episodic: bool

    def play(self, run: Run, config: Any) -> None: ...


def load_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``; InputError naming the registered ones otherwise."""
    found = registered(ENTRY_POINT_GROUP, "search strategy")
    if name not in found:
        raise InputError(f"unknown search strategy {name!r}; choose one of {', '.join(strategy_names()) or 'none'}")
    ep = found[name]
    try:
        obj = ep.load()
        strategy = obj() if isinstance(obj, type) else obj
    except Exception as err:  # noqa: BLE001 -- a plugin's own bug: one line, exit 2
        raise InputError(f"search strategy plugin {name!r} ({source(ep)}) failed to load: {one_line(err)}") from None
    if not isinstance(strategy, Strategy):
        raise InputError(f"search strategy plugin {name!r} ({source(ep)}) is not a Strategy (it needs "
                         "config_type, episodic and play(run, config)); see docs/extending.md")
    return strategy


def strategy_names() -> list[str]:
    """Every registered strategy's name: the built-ins first, in their documented order, then plugins."""
    order = {name: k for k, name in enumerate(STRATEGY_NAMES)}
    return sorted(registered(ENTRY_POINT_GROUP, "search strategy"), key=lambda n: (order.get(n, len(order)), n))


def search(
    problem: SearchProblem | QuantEnv,
    strategy: str | Strategy = "ddpg",
    episodes: int = 600,
    seed: int = 0,
    *,
    config: Any = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> SearchResult:
    """Run one strategy (a registered name or a Strategy); raises BudgetUnreachableError before
    searching if no policy meets the limits.

    ``config`` is the strategy's own configuration (an instance of its ``config_type``; None: its
    defaults). With ``workdir``, the state is saved after every episode; ``resume=True`` continues a
    saved search (InputError if it was made for another problem) and ends exactly where an
    uninterrupted run would. On KeyboardInterrupt the last completed episode's state is already
    saved; the exception propagates. ``episodes`` and ``seed`` matter to the strategies that play
    episodes (ddpg, random).
    """
    name, strategy = (strategy, load_strategy(strategy)) if isinstance(strategy, str) else (
        getattr(strategy, "name", type(strategy).__name__.lower()), strategy)
    if episodes < 1:
        raise InputError(f"the search needs at least one episode, got {episodes}")
    if resume and workdir is None:
        raise InputError("`resume` needs the `workdir` of the search to continue")
    config = _config(name, strategy, config)
    env = problem if isinstance(problem, QuantEnv) else QuantEnv(problem)
    env.check_budget()
    fp = fingerprint(env, name, episodes, seed, None if config is None else dataclasses.asdict(config),
                     strategy.episodic)
    run = Run(env, name, episodes, seed, fp, workdir, progress)
    if resume:
        run.restore()
    try:
        strategy.play(run, config)
    except KeyboardInterrupt:
        if workdir is not None:
            logger.warning("interrupted after %d episodes; the search state is saved in %s, --resume continues it",
                           len(run.history), workdir)
        raise
    if not run.history:
        raise InputError(f"search strategy {name!r} recorded no outcome; a strategy must record at least one")
    return run.result()


def _config(name: str, strategy: Strategy, config: Any) -> Any:
    """The strategy's configuration: ``config`` checked against its type, or its defaults."""
    kind = strategy.config_type
    if kind is None:
        if config is not None:
            raise InputError(f"search strategy {name!r} takes no configuration, got {type(config).__name__}")
        return None
    if config is None:
        return kind()
    if not isinstance(config, kind):
        raise InputError(f"search strategy {name!r} takes a {kind.__name__}, got {type(config).__name__}")
    return config


__all__ = ["ENTRY_POINT_GROUP", "Progress", "Run", "SearchResult", "Strategy", "load_strategy", "search",
           "strategy_names"]
