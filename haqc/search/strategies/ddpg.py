"""ddpg (the default): HAQ's agent, ``episodes`` episodes, warm-started by greedy's probes.

With ``DDPGConfig.warm_start``, its first episodes are greedy's policy and the
integer program's on greedy's loss model, and the actor is pre-trained towards
the better one, so the agent explores around a good policy instead of a random one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from haqc.errors import InputError
from haqc.search.agent import DDPG, DDPGConfig
from haqc.search.env import QuantEnv
from haqc.search.ilp import solve
from haqc.search.run import Run, play, run_episodes
from haqc.search.strategies.greedy import greedy_choice, loss_model


@dataclass(frozen=True)
class Ddpg:
    config_type = DDPGConfig
    episodic = True

    def play(self, run: Run, config: DDPGConfig) -> None:
        env = run.env
        agent = DDPG(env.observation_space.shape[0], env.steps_per_episode, run.episodes, run.seed, config)
        if config.warm_start and run.saved is None:
            _warm_start(run, agent)
        run_episodes(run, agent)


def _warm_start(run: Run, agent: DDPG) -> None:
    """The first episodes play what the sensitivity probes suggest: greedy's policy and the integer
    program's on the same loss model (greedy's probes). Their transitions go into
    the replay buffer like any episode's, and the actor is pre-trained towards the better one, so
    the agent explores around a good policy instead of starting from a random one."""
    env = run.env
    loss, floor = loss_model(run)
    seeds = [greedy_choice(env, loss, floor)]
    try:
        seeds.append(solve(env.problem.costs, dict(env.problem.limits), env.space, loss))
    except InputError:  # a target whose totals the integer program cannot express: greedy's alone
        pass
    unique = list({tuple(int(c) for c in columns): columns for columns in seeds}.values())[:run.episodes]
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
    return play(env, _Scripted(steps), 0)


@dataclass
class _Scripted:
    """Acts a fixed sequence of actions (a warm-start episode)."""

    actions: Iterator[float]

    def act(self, obs: np.ndarray, episode: int) -> float:
        return next(self.actions)
