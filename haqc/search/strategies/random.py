"""random: uniform random actions through the same environment as ddpg (same pins, same budget
enforcement, same number of episodes): is the agent learning?"""
from __future__ import annotations

from dataclasses import dataclass

from haqc.search.agent import RandomAgent
from haqc.search.run import Run, run_episodes


@dataclass(frozen=True)
class Random:
    config_type = None
    episodic = True

    def play(self, run: Run, config: None) -> None:
        run_episodes(run, RandomAgent(run.seed))
