"""The DDPG agent: HAQ's defaults, warm-up clamp, noise, one update with its soft target step."""
from __future__ import annotations

import dataclasses
import io
import numpy as np
import pytest
import torch

from haqc.search import DDPG, DDPGConfig
from haqc.search.agent import _truncated_normal

OBS_DIM = 10


def filled_agent(seed: int = 0, config: DDPGConfig = DDPGConfig()) -> DDPG:
    agent = DDPG(OBS_DIM, steps_per_episode=4, episodes=100, seed=seed, config=config)
    rng = np.random.default_rng(1)
    def obs():
        return rng.random(OBS_DIM, dtype=np.float32)

    trajectory = [(obs(), float(rng.random()), obs(), t == 3) for t in range(4)]
    agent.observe(trajectory, reward=-1.5, episode=0)  # warm-up: stored, no update
    return agent


def test_defaults_are_haqs():
    cfg = DDPGConfig()
    assert (cfg.hidden, cfg.actor_lr, cfg.critic_lr, cfg.tau, cfg.discount) == (300, 1e-4, 1e-3, 0.01, 1.0)
    assert (cfg.batch_size, cfg.buffer_episodes, cfg.warmup_episodes) == (64, 128, 20)
    assert (cfg.sigma, cfg.sigma_decay, cfg.baseline_alpha) == (0.5, 0.99, 0.5)
    assert cfg.updates_per_transition == 1


def test_warmup_is_clamped_for_short_runs():
    cfg = DDPGConfig.haq()
    assert cfg.warmup(600) == 20 and cfg.warmup(80) == 20 and cfg.warmup(40) == 10 and cfg.warmup(3) == 0
    assert cfg.sigma_at(5, 600) == 0.5 and cfg.sigma_at(22, 600) == pytest.approx(0.5 * 0.99**2)


def test_the_haq_reference_differs_from_the_defaults_in_warm_start_and_schedule_only():
    assert DDPGConfig.haq() == dataclasses.replace(DDPGConfig(), warm_start=False, sigma_final=None)
    assert DDPGConfig().warm_start and not DDPGConfig.haq().warm_start


@pytest.mark.parametrize("episodes", [12, 60, 600])
def test_sigma_decays_to_sigma_final_over_any_run_length(episodes):
    cfg = DDPGConfig()
    first, last = cfg.warmup(episodes), episodes - 1
    assert cfg.sigma_at(0, episodes) == cfg.sigma_at(first, episodes) == 0.5
    assert cfg.sigma_at(last, episodes) == pytest.approx(0.05)
    schedule = [cfg.sigma_at(e, episodes) for e in range(first, episodes)]
    assert all(b < a for a, b in zip(schedule, schedule[1:]))


def test_imitation_moves_the_actor_onto_an_episodes_actions():
    agent = filled_agent()
    rng = np.random.default_rng(3)
    trajectory = [(rng.random(OBS_DIM).astype(np.float32), float(a), rng.random(OBS_DIM).astype(np.float32), False)
                  for a in (0.1, 0.9, 0.3, 0.7)]
    agent.imitate(trajectory)
    with torch.no_grad():
        for net in (agent.actor, agent.actor_target):
            got = net(torch.as_tensor(np.stack([t[0] for t in trajectory]))).squeeze(1).numpy()
            assert np.abs(got - [0.1, 0.9, 0.3, 0.7]).max() < 0.05


def test_replay_holds_128_episodes_and_the_final_reward():
    agent = filled_agent()
    assert len(agent.buffer.obs) == 128 * 4 and agent.buffer.size == 4
    assert agent.buffer.rewards[:4, 0].tolist() == [-1.5] * 4
    assert agent.buffer.dones[:4, 0].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_actions_stay_in_the_unit_interval():
    rng = np.random.default_rng(0)
    samples = [_truncated_normal(rng, mu, 0.5) for mu in (0.0, 0.3, 1.0) for _ in range(200)]
    assert min(samples) >= 0.0 and max(samples) <= 1.0
    assert _truncated_normal(rng, 0.7, 0.0) == 0.7
    agent = filled_agent()
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    assert all(0.0 <= agent.act(obs, episode) <= 1.0 for episode in (0, 25, 99))


def test_update_moves_critic_actor_and_targets_softly():
    agent = filled_agent()
    actor_target_before = [p.clone() for p in agent.actor_target.parameters()]
    actor_before = [p.clone() for p in agent.actor.parameters()]
    agent.update()
    assert agent.baseline == pytest.approx(-1.5)  # first batch: the baseline is its mean
    for before, p in zip(actor_before, agent.actor.parameters()):
        assert not torch.equal(before, p)
    for old_target, target, p in zip(actor_target_before, agent.actor_target.parameters(), agent.actor.parameters()):
        assert torch.allclose(target, 0.01 * p + 0.99 * old_target, atol=1e-7)


def test_seeded_and_leaves_global_rng_alone():
    torch_state = torch.get_rng_state()
    a, b, c = filled_agent(seed=3), filled_agent(seed=3), filled_agent(seed=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(torch.equal(p, q) for p, q in zip(a.actor.parameters(), b.actor.parameters()))
    assert not torch.equal(a.actor.fc1.weight, c.actor.fc1.weight)


def test_state_dict_round_trip_continues_identically():
    a = filled_agent()
    a.update()
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)  # as a checkpoint does: tensors and plain values only
    saved.seek(0)
    b = filled_agent(seed=99)
    b.load_state_dict(torch.load(saved, weights_only=True))
    obs = np.full(OBS_DIM, 0.5, dtype=np.float32)
    for agent in (a, b):
        agent.update()
    assert a.act(obs, 50) == b.act(obs, 50)
    assert all(torch.equal(p, q) for p, q in zip(a.critic.parameters(), b.critic.parameters()))


def test_update_does_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            agent = filled_agent()
            for _ in range(3):
                agent.update()
            results.append([p.clone() for p in agent.critic.parameters()])
            assert torch.get_num_threads() == n  # restored after the update
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(*results))
