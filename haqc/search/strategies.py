"""Search strategies behind one interface: ``search(problem, strategy, episodes, seed) -> SearchResult``.

- ddpg (default): HAQ's agent, ``episodes`` episodes; warm-started (``DDPGConfig.warm_start``)
  by greedy's sensitivity probes: its first episodes are greedy's policy and the integer program's
  on greedy's loss model, and the actor is pre-trained towards the better one.
- random: uniform random actions through the same environment (same pins,
  same budget enforcement, same number of episodes): is the agent learning?
- uniform: the highest single bitwidth w = a = b (pins applied) that meets the
  budget; one evaluation. The fixed-precision baseline HAQ compares against.
  (For a target's own option list: every layer the same number of options
  below its most precise one.)
- greedy: a fast non-RL baseline. Measure each unpinned layer's sensitivity
  (the accuracy drop with only that layer at 4 bits, the rest at 8: one
  evaluation per layer), then, starting from all-8-bit, repeatedly take the
  one-step lowering (one layer's weights or activations) with the best ratio of
  budget saved to estimated accuracy lost, until the budget holds: few
  evaluations and a rough loss model (the ilp strategy measures more and
  solves exactly). The loss of a layer at (w, a) bits is modelled as
  s * (2^(4-w) + 2^(4-a)) / 2 (quantization noise halves per bit; s measured at
  w4a4, where the model gives s). For options that are not widths, the drop
  of each layer at each of its options is measured instead.
- ilp: each layer's measured drop at each option (weights and activations
  probed apart, their drops added), then the exact integer program over
  (layer, option) under every budget at once (haqc.search.ilp, HiGHS).

Every strategy caches evaluations per policy, keeps a per-episode history for
plots, checkpoints to ``workdir`` after every episode (and, for greedy, after
every sensitivity probe) and resumes from there.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np

from haqc.errors import InputError
from haqc.policy import Policy
from haqc.search.agent import DDPG, Agent, DDPGConfig, RandomAgent
from haqc.precision import SEARCH_BITS
from haqc.progress import progress_bar
from haqc.search.budget import violations
from haqc.search.checkpoint import fingerprint, load_state, save_state
from haqc.search.env import Outcome, QuantEnv, SearchProblem
from haqc.search.ilp import MIN_DROP, sensitivities, solve
from haqc.search.parallel import rounds
from haqc.settings import STRATEGY_NAMES

logger = logging.getLogger(__name__)

# progress(episodes done, best reward so far, best policy's costs): for the CLI's progress bar.
Progress = Callable[[int, float, dict[str, float]], None]

GREEDY_PROBE_BITS = 4


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


def search(
    problem: SearchProblem | QuantEnv,
    strategy: str = "ddpg",
    episodes: int = 600,
    seed: int = 0,
    *,
    config: DDPGConfig | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> SearchResult:
    """Run one strategy; raises BudgetUnreachableError before searching if no policy meets the limits.

    With ``workdir``, the state is saved after every episode; ``resume=True``
    continues a saved search (InputError if it was made for another problem)
    and ends exactly where an uninterrupted run would. On KeyboardInterrupt the
    last completed episode's state is already saved; the exception propagates.
    ``episodes`` and ``seed`` matter to ddpg and random only.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"unknown search strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if episodes < 1:
        raise InputError(f"the search needs at least one episode, got {episodes}")
    if resume and workdir is None:
        raise InputError("`resume` needs the `workdir` of the search to continue")
    env = problem if isinstance(problem, QuantEnv) else QuantEnv(problem)
    env.check_budget()
    config = (config or DDPGConfig()) if strategy == "ddpg" else None  # the only configurable strategy
    run = _Run(env, strategy, fingerprint(env, strategy, episodes, seed, config), workdir, progress)
    saved = run.restore() if resume else None
    try:
        STRATEGIES[strategy](run, episodes, seed, config, saved)
    except KeyboardInterrupt:
        if workdir is not None:
            logger.warning("interrupted after %d episodes; the search state is saved in %s, --resume continues it",
                           len(run.history), workdir)
        raise
    return run.result()


class _Run:
    """Bookkeeping every strategy shares: history, best so far, timing, checkpoints and progress."""

    def __init__(self, env: QuantEnv, strategy: str, fp: dict[str, Any], workdir: str | os.PathLike | None,
                 progress: Progress | None) -> None:
        self.env = env
        self.strategy = strategy
        self.history: list[dict[str, Any]] = []
        self.best: int | None = None  # index into history
        self._fingerprint = fp
        self._workdir = workdir
        self._progress = progress
        self._seconds_before = 0.0  # spent by the runs this one resumes
        self._started = time.perf_counter()
        if workdir is not None:
            os.makedirs(workdir, exist_ok=True)

    def restore(self) -> dict[str, Any] | None:
        """Load the checkpoint into this run and the env; return the agent's saved state."""
        state = load_state(self._workdir, self._fingerprint)
        if state is None:
            return None
        self.history, self.best = state["history"], state["best"]
        self._seconds_before = state["seconds"]
        self.env.load_state_dict(state["env"])
        logger.info("resuming %s search after %d episodes", self.strategy, len(self.history))
        return state["agent"]

    def record(self, outcome: Outcome) -> None:
        """Add a finished episode to the history; keep the first best reward."""
        self.history.append({
            "episode": len(self.history),
            "reward": outcome.reward,
            "accuracy": outcome.accuracy,
            "costs": outcome.costs,
            "columns": list(outcome.columns),
            "options": [o.name for o in outcome.policy.values()],
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
                        "accuracy": accuracy} for columns, accuracy in self.env.evaluated()],
        )

    def _seconds(self) -> float:
        return self._seconds_before + time.perf_counter() - self._started


def _ddpg(run: _Run, episodes: int, seed: int, config: DDPGConfig, saved: dict | None) -> None:
    env = run.env
    agent = DDPG(env.observation_space.shape[0], env.steps_per_episode, episodes, seed, config)
    if config.warm_start and saved is None:
        _warm_start(run, agent, episodes)
    _run_episodes(run, agent, episodes, saved)


def _warm_start(run: _Run, agent: DDPG, episodes: int) -> None:
    """The first episodes play what the sensitivity probes suggest: greedy's policy and the integer
    program's on the same loss model (greedy's probes, one per layer). Their transitions go into
    the replay buffer like any episode's, and the actor is pre-trained towards the better one, so
    the agent explores around a good policy instead of starting from a random one."""
    env = run.env
    loss, floor = _loss_model(run)
    seeds = [_greedy_choice(env, loss, floor)]
    try:
        seeds.append(solve(env.problem.costs, dict(env.problem.limits), env.space, loss))
    except InputError:  # a target whose totals the integer program cannot express: greedy's alone
        pass
    unique = list({tuple(int(c) for c in columns): columns for columns in seeds}.values())[:episodes]
    played = [_replay(env, columns) for columns in unique]
    outcomes = env.finish_all([choice for _, choice in played])
    for episode, ((trajectory, _), outcome) in enumerate(zip(played, outcomes)):
        agent.observe(trajectory, outcome.reward, episode)
        run.record(outcome)
    best = max(range(len(outcomes)), key=lambda k: outcomes[k].reward)
    agent.imitate(played[best][0])
    run.save(agent.state_dict())


def _replay(env: QuantEnv, columns: np.ndarray) -> tuple[list, np.ndarray]:
    """The episode whose actions choose ``columns``: its transitions (with the observations the
    agent would have seen) and its choice."""
    steps = iter([a for i, layer in enumerate(env.space.layers) for a in layer.actions(int(columns[i]))])
    return _play(env, _Scripted(steps), 0)


@dataclass
class _Scripted:
    """Acts a fixed sequence of actions (a warm-start episode)."""

    actions: Iterator[float]

    def act(self, obs: np.ndarray, episode: int) -> float:
        return next(self.actions)


def _random(run: _Run, episodes: int, seed: int, config: None, saved: dict | None) -> None:
    _run_episodes(run, RandomAgent(seed), episodes, saved)


def _run_episodes(run: _Run, agent: Agent, episodes: int, saved: dict | None) -> None:
    """The episode loop, in rounds of the problem's ``workers`` episodes: play each (acting until the
    env terminates), evaluate the round's policies together, then learn from each episode in order,
    record and checkpoint. A round of one is HAQ's loop: act, evaluate, learn."""
    env = run.env
    if saved is not None:
        agent.load_state_dict(saved)
    for episodes_of_round in rounds(len(run.history), episodes, env.problem.workers):
        played = [_play(env, agent, episode) for episode in episodes_of_round]
        outcomes = env.finish_all([choice for _, choice in played])
        for episode, (trajectory, _), outcome in zip(episodes_of_round, played, outcomes):
            agent.observe(trajectory, outcome.reward, episode)
            run.record(outcome)
        run.save(agent.state_dict())


def _play(env: QuantEnv, agent: Agent | _Scripted, episode: int) -> tuple[list, np.ndarray]:
    """One episode's actions, unevaluated: its transitions and the options they chose."""
    obs, _ = env.reset()
    trajectory = []
    terminated = False
    while not terminated:
        action = agent.act(obs, episode)
        next_obs, terminated, _ = env.advance(action)
        trajectory.append((obs, action, next_obs, terminated))
        obs = next_obs
    return trajectory, env.choice()


def _probe(run: _Run, candidates: list[np.ndarray]) -> list[float]:
    """Scores of independent probes, ``workers`` at a time, checkpointing after each batch (a resumed
    search replays the probes done from the evaluation cache)."""
    scores: list[float] = []
    with progress_bar(len(candidates), "sensitivity probes", unit="probe") as bar:
        for batch in rounds(0, len(candidates), run.env.problem.workers):
            scores += run.env.accuracies([candidates[i] for i in batch])
            run.save()
            bar.update(len(batch))
    return scores


def _uniform(run: _Run, episodes: int, seed: int, config: None, saved: dict | None) -> None:
    if run.history:  # resumed after it finished
        return
    env = run.env
    costs, limits = env.problem.costs, env.problem.limits
    # The cheapest uniform setting is the cheapest policy, which check_budget has let through.
    for columns in env.space.uniform_candidates():
        if not violations(costs.cost(columns), limits):
            break
    run.record(env.finish(columns))
    run.save()


def _greedy(run: _Run, episodes: int, seed: int, config: None, saved: dict | None) -> None:
    if run.history:  # resumed after it finished
        return
    run.record(run.env.finish(_greedy_choice(run.env, *_loss_model(run))))
    run.save()


def _loss_model(run: _Run) -> tuple[np.ndarray, float]:
    """loss[i, j], each layer's estimated score lost at option j, and the least loss a lowering
    counts as. A drop model of widths is strictly monotone (floor 0); measured drops may tie, so
    there a step that loses nothing measurable still counts as losing the noise floor."""
    if run.env.space.by_width:
        return _modelled_loss(run), 0.0
    return sensitivities(run.env, partial(_probe, run)), MIN_DROP


def _greedy_choice(env: QuantEnv, loss: np.ndarray, floor: float) -> np.ndarray:
    """From the most precise policy, the one-step lowering with the best ratio of budget saved to
    loss added, repeated until the budget holds."""
    space, costs, limits = env.space, env.problem.costs, env.problem.limits
    chosen = space.most_precise()
    while over := violations(costs.cost(chosen), limits):
        best, best_ratio = None, 0.0
        for i in reversed(range(space.n_layers)):  # ties go to later layers, as in HAQ's enforcement
            if space.pinned[i]:
                continue
            now = int(chosen[i])
            for new in space.layers[i].lowerings(now):
                before, after = costs.layer_cost(i, now), costs.layer_cost(i, new)
                saved_share = sum((before[q] - after[q]) / limits[q] for q in over)
                extra_loss = max(loss[i, new] - loss[i, now], floor)
                if saved_share / extra_loss > best_ratio:
                    best, best_ratio = (i, new), saved_share / extra_loss
        if best is None:  # nothing saves anything (odd cost tables): leave the rest to budget enforcement
            break
        chosen[best[0]] = best[1]
    return chosen


def _modelled_loss(run: _Run) -> np.ndarray:
    """loss[i, j] for options that are widths: one probe per unpinned layer at w4a4 (snapped) gives
    its sensitivity s, and s * (2^(4-w) + 2^(4-a)) / 2 the loss at (w, a) (float activations count
    as the widest width)."""
    space = run.env.space
    top = space.most_precise()
    probed = [i for i in range(space.n_layers) if not space.pinned[i]]
    probes = []
    for i in probed:
        probes.append(top.copy())
        probes[-1][i] = space.layers[i].uniform(GREEDY_PROBE_BITS)
    loss = np.zeros((space.n_layers, max(len(layer.options) for layer in space.layers)))
    for i, accuracy in zip(probed, _probe(run, probes)):
        sensitivity = max(run.env.problem.fp32_accuracy - accuracy, MIN_DROP)
        for j, option in enumerate(space.layers[i].options):
            a = option.a_bits if option.a_bits is not None else SEARCH_BITS[-1]
            loss[i, j] = sensitivity * (2.0 ** (GREEDY_PROBE_BITS - option.w_bits) + 2.0 ** (GREEDY_PROBE_BITS - a)) / 2.0
    return loss


def _ilp(run: _Run, episodes: int, seed: int, config: None, saved: dict | None) -> None:
    if run.history:  # resumed after it finished
        return
    env = run.env
    drops = sensitivities(env, partial(_probe, run))
    run.record(env.finish(solve(env.problem.costs, dict(env.problem.limits), env.space, drops)))
    run.save()


# Each of STRATEGY_NAMES -> the function that plays it.
STRATEGIES: dict[str, Callable[[_Run, int, int, Any, dict | None], None]] = dict(
    zip(STRATEGY_NAMES, (_ddpg, _random, _uniform, _greedy, _ilp), strict=True))
