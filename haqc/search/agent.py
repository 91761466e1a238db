"""HAQ's DDPG agent, written the CleanRL way: a config dataclass, small Actor/Critic, one update().

HAQ specifics on top of plain DDPG: the action is one number in [0, 1]; the
first ``warmup`` episodes act uniformly at random; afterwards the action is
drawn from a normal centred on the actor's output, truncated to [0, 1], whose
sigma decays by 0.99 per episode; the episode's final reward is stored for
each of its transitions; a moving-average baseline is subtracted from the
rewards before the critic target; one gradient update per stored transition.

Two changes make it win at the short runs haqc is used with (benchmarks/RESULTS.md
measures each; ``DDPGConfig.haq()`` is the published agent without them):
the search warm-starts it (``warm_start``: the strategies module evaluates
sensitivity-derived policies first, stores their episodes and pre-trains the
actor towards the best, ``imitate``), and sigma decays from ``sigma`` to
``sigma_final`` over the run whatever its length (HAQ's 0.99 per episode
leaves sigma at 0.32 after 60 episodes: a random search to the end).

All randomness comes from one ``np.random.Generator`` seeded by the caller
(actions, noise, replay sampling) plus the seed it hands torch for the
initial weights, so a run is reproducible and checkpointable: Python's
``random`` and torch's global generator are never used. The CPU kernels used
here are deterministic, so the process-wide torch.use_deterministic_algorithms
switch (which would also bind the caller's code) is not needed; torch runs on
one thread inside the agent (see ``_one_thread``). Tests check bit-equality.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# One step of an episode: (observation, action, next observation, terminated).
Transition = tuple[np.ndarray, float, np.ndarray, bool]


@dataclass(frozen=True)
class DDPGConfig:
    """Hyperparameters; the defaults are HAQ's published ones."""

    hidden: int = 300  # both hidden layers, actor and critic
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01  # soft target update
    discount: float = 1.0
    batch_size: int = 64
    buffer_episodes: int = 128  # replay capacity, in episodes' worth of transitions
    warmup_episodes: int = 20  # random-action episodes before learning starts ...
    max_warmup_fraction: float = 0.25  # ... but never more than this share of a short run
    sigma: float = 0.5  # exploration noise at the end of warm-up
    sigma_decay: float = 0.99  # per episode after warm-up (HAQ), when sigma_final is None
    sigma_final: float | None = 0.05  # else: sigma decays geometrically to this at the last episode
    warm_start: bool = True  # begin from sensitivity-derived policies (haqc.search.strategies)
    imitation_steps: int = 300  # actor steps towards the best warm-start policy's actions
    baseline_alpha: float = 0.5  # moving-average reward baseline step
    updates_per_transition: int = 1

    def warmup(self, episodes: int) -> int:
        """Warm-up episodes for a run of ``episodes``: HAQ's 20 of 600, clamped so a short run still learns."""
        return min(self.warmup_episodes, int(self.max_warmup_fraction * episodes))

    def sigma_at(self, episode: int, episodes: int) -> float:
        after = max(0, episode - self.warmup(episodes))
        if self.sigma_final is None:
            return self.sigma * self.sigma_decay ** after
        span = max(1, episodes - 1 - self.warmup(episodes))
        return self.sigma * (self.sigma_final / self.sigma) ** min(1.0, after / span)

    @classmethod
    def haq(cls) -> DDPGConfig:
        """HAQ's published agent: no warm start, sigma decaying by 0.99 per episode."""
        return cls(sigma_final=None, warm_start=False)


class Actor(nn.Module):
    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(obs))
        x = torch.relu(self.fc2(x))
        return torch.sigmoid(self.fc3(x))


class Critic(nn.Module):
    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.cat([obs, action], dim=1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class ReplayBuffer:
    """A ring buffer of transitions held as tensors (so a checkpoint stores it as is)."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, 1)
        self.rewards = torch.zeros(capacity, 1)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.dones = torch.zeros(capacity, 1)
        self.pos = 0
        self.size = 0

    def add(self, obs: np.ndarray, action: float, reward: float, next_obs: np.ndarray, done: bool) -> None:
        i = self.pos
        self.obs[i] = torch.as_tensor(obs)
        self.actions[i, 0] = action
        self.rewards[i, 0] = reward
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.dones[i, 0] = float(done)
        self.pos = (i + 1) % len(self.obs)
        self.size = min(self.size + 1, len(self.obs))

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A batch drawn with replacement (as CleanRL does), so a small buffer still fills a batch."""
        idx = torch.as_tensor(rng.integers(0, self.size, size=batch_size))
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]

    def state_dict(self) -> dict[str, Any]:
        names = ("obs", "actions", "rewards", "next_obs", "dones", "pos", "size")
        return {name: getattr(self, name) for name in names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class Agent(Protocol):
    """What the episode loop drives: DDPG, or the random baseline."""

    def act(self, obs: np.ndarray, episode: int) -> float: ...

    def observe(self, trajectory: Sequence[Transition], reward: float, episode: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RandomAgent:
    """Uniform random actions: the random-search baseline, and what DDPG does during warm-up."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, episode: int) -> float:
        return float(self.rng.uniform(0.0, 1.0))

    def observe(self, trajectory: Sequence[Transition], reward: float, episode: int) -> None:
        """Nothing to learn."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class DDPG(RandomAgent):
    """HAQ's DDPG for a run of ``episodes`` episodes of ``steps_per_episode`` steps."""

    def __init__(self, obs_dim: int, steps_per_episode: int, episodes: int, seed: int, config: DDPGConfig) -> None:
        super().__init__(seed)
        self.config = config
        self.episodes = episodes
        self.warmup = config.warmup(episodes)
        with torch.random.fork_rng(devices=[]):  # initial weights from our seed, torch's global RNG untouched
            torch.manual_seed(int(self.rng.integers(2**63)))
            self.actor = Actor(obs_dim, config.hidden)
            self.critic = Critic(obs_dim, config.hidden)
            self.actor_target = Actor(obs_dim, config.hidden)
            self.critic_target = Critic(obs_dim, config.hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.buffer = ReplayBuffer(config.buffer_episodes * steps_per_episode, obs_dim)
        self.baseline: float | None = None  # moving average of batch rewards

    def act(self, obs: np.ndarray, episode: int) -> float:
        if episode < self.warmup:
            return super().act(obs, episode)
        with torch.no_grad(), _one_thread():
            mu = float(self.actor(torch.as_tensor(obs).unsqueeze(0)))
        return _truncated_normal(self.rng, mu, self.config.sigma_at(episode, self.episodes))

    def observe(self, trajectory: Sequence[Transition], reward: float, episode: int) -> None:
        """Store each transition with the episode's final reward; after warm-up, update once per
        transition, except after the last episode, when no action would use what was learned."""
        learn = self.warmup <= episode < self.episodes - 1
        for obs, action, next_obs, done in trajectory:
            self.buffer.add(obs, action, reward, next_obs, done)
            if learn:
                for _ in range(self.config.updates_per_transition):
                    self.update()

    def imitate(self, trajectory: Sequence[Transition]) -> None:
        """Pre-train the actor towards one episode's actions (mean squared error, ``imitation_steps``
        Adam steps at the critic's learning rate), so exploration starts around that policy; the
        target actor follows."""
        obs = torch.as_tensor(np.stack([t[0] for t in trajectory]))
        actions = torch.as_tensor([[t[1]] for t in trajectory], dtype=torch.float32)
        optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.config.critic_lr)
        with _one_thread():
            for _ in range(self.config.imitation_steps):
                loss = nn.functional.mse_loss(self.actor(obs), actions)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.actor_target.load_state_dict(self.actor.state_dict())

    def update(self) -> None:
        """One DDPG step on a replay batch: critic, actor, then the soft target update."""
        cfg = self.config
        obs, actions, rewards, next_obs, dones = self.buffer.sample(self.rng, cfg.batch_size)
        batch_mean = float(rewards.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        self.baseline += cfg.baseline_alpha * (batch_mean - self.baseline)
        rewards = rewards - self.baseline

        with _one_thread():
            with torch.no_grad():
                next_q = self.critic_target(next_obs, self.actor_target(next_obs))
                target_q = rewards + cfg.discount * (1.0 - dones) * next_q
            critic_loss = nn.functional.mse_loss(self.critic(obs, actions), target_q)
            self.critic_optimizer.zero_grad()
            critic_loss.backward()
            self.critic_optimizer.step()

            actor_loss = -self.critic(obs, self.actor(obs)).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()

            with torch.no_grad():
                for target, source in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
                    for target_param, param in zip(target.parameters(), source.parameters()):
                        target_param.copy_(cfg.tau * param + (1.0 - cfg.tau) * target_param)

    # Everything with its own state_dict that a checkpoint must restore.
    _PARTS = ("actor", "critic", "actor_target", "critic_target", "actor_optimizer", "critic_optimizer", "buffer")

    def state_dict(self) -> dict[str, Any]:
        parts = {name: getattr(self, name).state_dict() for name in self._PARTS}
        return {**super().state_dict(), **parts, "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in self._PARTS:
            getattr(self, name).load_state_dict(state[name])
        self.baseline = state["baseline"]


def _truncated_normal(rng: np.random.Generator, mu: float, sigma: float) -> float:
    """A normal(mu, sigma) sample truncated to [0, 1], by rejection (mu lies in [0, 1], so it accepts often)."""
    if sigma <= 0.0:
        return min(1.0, max(0.0, mu))
    while True:
        x = float(rng.normal(mu, sigma))
        if 0.0 <= x <= 1.0:
            return x


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    Results then cannot depend on the machine's thread count (a search resumed
    elsewhere continues bit-for-bit), and these 300-wide layers gain nothing
    from threads: on a busy 2-core machine two threads made an update 15x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
