"""The run record every strategy shares: history, best so far, timing, checkpoints and progress.

A strategy (``haqc.search.strategies``) is handed a ``Run``: the environment
(``run.env``, which pins, enforces the budget, evaluates with a cache and
rewards), the episodes and seed it was asked for, and the agent state saved by
a run it resumes. It records each finished episode (``record``) and calls
``save`` whenever a checkpoint would let a resumed run skip work; ``probe``
scores independent candidates in rounds of the problem's workers.
``run_episodes`` is the episode loop of agents that act step by step (ddpg,
random, or a plugin's); ``OneShot`` is the base of strategies that choose one
policy and score it (uniform, greedy, ilp).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from haqc.policy import Policy
from haqc.progress import progress_bar
from haqc.search.agent import Agent
from haqc.search.budget import violations
from haqc.search.checkpoint import load_state, save_state
from haqc.search.env import Outcome, QuantEnv
from haqc.search.parallel import rounds

logger = logging.getLogger(__name__)

# progress(episodes done, best reward so far, best policy's costs): for the CLI's progress bar.
Progress = Callable[[int, float, dict[str, float]], None]


@dataclass(frozen=True)
class SearchResult:
    """The best policy found and how the search got there.

    ``history`` has one entry per episode: episode, reward, accuracy, costs,
    columns (each layer's option column) and options (their names).
    ``evaluated`` has one entry per distinct policy the evaluator scored
    (episodes and probes alike): its columns, costs and accuracy. ``evaluations`` counts those
    policies (a repeat is free; a score read from a workdir's score file counts, and ``stored`` says
    how many of them were read there); ``seconds`` adds up across resumes.
    """

    strategy: str
    policy: Policy
    accuracy: float
    reward: float
    costs: dict[str, float]
    meets_budget: bool
    episodes: int
    best_episode: int
    evaluations: int
    seconds: float
    history: list[dict[str, Any]]
    evaluated: list[dict[str, Any]]
    stored: int = 0  # of ``evaluations``, the policies this run read from the workdir (haqc.search.store)
    # The policies tried with a short fine-tune after the search (haqc.pipeline.pick_finalist): their
    # options, score before and after it; empty when none were.
    finalists: list[dict[str, Any]] = field(default_factory=list)


class Run:
    """One search in progress: what a strategy reads (``env``, ``episodes``, ``seed``, ``saved``) and
    what it writes (``record``, ``save``); ``result()`` is the SearchResult."""

    def __init__(self, env: QuantEnv, strategy: str, episodes: int, seed: int, fingerprint: dict[str, Any],
                 workdir: str | os.PathLike | None, progress: Progress | None) -> None:
        self.env = env
        self.strategy = strategy
        self.episodes = episodes
        self.seed = seed
        self.saved: dict[str, Any] | None = None  # the agent state of the run this one resumes
        self.history: list[dict[str, Any]] = []
        self.best: int | None = None  # index into history
        self._fingerprint = fingerprint
        self._workdir = workdir
        self._progress = progress
        self._seconds_before = 0.0  # spent by the runs this one resumes
        self._started = time.perf_counter()
        if workdir is not None:
            os.makedirs(workdir, exist_ok=True)

    def restore(self) -> None:
        """Load the checkpoint into this run and the env (``saved``: the agent's state)."""
        state = load_state(self._workdir, self._fingerprint)
        if state is None:
            return
        self.history, self.best = state["history"], state["best"]
        self._seconds_before = state["seconds"]
        self.env.load_state_dict(state["env"])
        self.saved = state["agent"]
        logger.info("resuming %s search after %d episodes", self.strategy, len(self.history))
    def record(self, outcome: Outcome) -> None:
        """Add a finished episode to the history; keep the first best reward."""
        self.history.append({
            "episode": len(self.history),
            "reward": outcome.reward,
            "accuracy": outcome.accuracy,
            "costs": outcome.costs,
            "columns": list(outcome.columns),
            "options": [o.name for o in outcome.policy.values()],
            "divergence": outcome.divergence,
        })
        if self.best is None or outcome.reward > self.history[self.best]["reward"]:
            self.best = len(self.history) - 1
            logger.info("episode %d: new best reward %.3f, accuracy %.4f, costs %s",
                        self.best, outcome.reward, outcome.accuracy, outcome.costs)

    def save(self, agent_state: dict[str, Any] | None = None) -> None:
        """Checkpoint (if there is a workdir), then report progress."""
        if self._workdir is not None:
            save_state(self._workdir, {
                "fingerprint": self._fingerprint,
                "history": self.history,
                "best": self.best,
                "seconds": self._seconds(),
                "env": self.env.state_dict(),
                "agent": agent_state,
            })
        if self._progress is not None and self.best is not None:
            best = self.history[self.best]
            self._progress(len(self.history), best["reward"], best["costs"])

    def probe(self, candidates: list[np.ndarray]) -> list[float]:
        """Losses of independent probes (``QuantEnv.losses``), ``workers`` at a time, checkpointing after
        each batch (a resumed search replays the probes done from the evaluation cache)."""
        losses: list[float] = []
        with progress_bar(len(candidates), "sensitivity probes", unit="probe") as bar:
            for batch in rounds(0, len(candidates), self.env.problem.workers):
                losses += self.env.losses([candidates[i] for i in batch])
                self.save()
                bar.update(len(batch))
        return losses

    def result(self) -> SearchResult:
        best = self.history[self.best]
        return SearchResult(
            strategy=self.strategy,
            policy=self.env.policy(best["columns"]),
            accuracy=best["accuracy"],
            reward=best["reward"],
            costs=best["costs"],
            meets_budget=not violations(best["costs"], self.env.problem.limits),
            episodes=len(self.history),
            best_episode=self.best,
            evaluations=self.env.evaluations,
            seconds=self._seconds(),
            history=self.history,
            evaluated=[{"columns": list(columns), "costs": self.env.problem.costs.cost(np.array(columns)),
                        "accuracy": score.metric, "divergence": score.divergence}
                       for columns, score in self.env.evaluated()],
        )

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started


class OneShot:
    """A strategy that chooses one policy (``choose``), scores it once and is done; a resumed run that
    finished does nothing more."""

    config_type: type | None = None
    episodic = False

    def play(self, run: Run, config: Any) -> None:
        if run.history:
            return
        run.record(run.env.finish(self.choose(run, config)))
        run.save()

    def choose(self, run: Run, config: Any) -> np.ndarray:
        """The option column per layer to score (probes through ``run.probe`` may come first)."""
        raise NotImplementedError


def run_episodes(run: Run, agent: Agent) -> None:
    """The episode loop, in rounds of the problem's ``workers`` episodes: play each (acting until the
    env terminates), evaluate the round's policies together, then learn from each episode in order,
    record and checkpoint. A round of one is HAQ's loop: act, evaluate, learn."""
    env = run.env
    if run.saved is not None:
        agent.load_state_dict(run.saved)
    for episodes_of_round in rounds(len(run.history), run.episodes, env.problem.workers):
        played = [play(env, agent, episode) for episode in episodes_of_round]
        outcomes = env.finish_all([choice for _, choice in played])
        for episode, (trajectory, _), outcome in zip(episodes_of_round, played, outcomes):
            agent.observe(trajectory, outcome.reward, episode)
            run.record(outcome)
        run.save(agent.state_dict())


def play(env: QuantEnv, agent: Any, episode: int) -> tuple[list, np.ndarray]:
    """One episode's actions, unevaluated: its transitions and the options they chose. ``agent``
    has ``act(obs, episode) -> action``."""
    obs, _ = env.reset()
    trajectory = []
    terminated = False
    while not terminated:
        action = agent.act(obs, episode)
        next_obs, terminated, _ = env.advance(action)
        trajectory.append((obs, action, next_obs, terminated))
        obs = next_obs
    return trajectory, env.choice()
