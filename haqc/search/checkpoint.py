"""Search checkpoints: the full state after every episode (every round of parallel episodes), so ``--resume`` continues bit-for-bit.

The state (agent weights and optimizer moments, replay buffer, moving-average
baseline, RNG state, history, best so far, evaluation cache) goes to
``workdir/search_state.pt`` through a temporary file and a rename, so an
interruption leaves the previous complete checkpoint. It holds only tensors
and plain Python values and is read with ``torch.load(weights_only=True)``,
so a tampered workdir cannot run code. A fingerprint of the problem is stored
with it: resuming a different model, budget, target or option set is refused
rather than silently mixing two searches.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haqc.errors import InputError
from haqc.io import atomic_path
from haqc.search.env import QuantEnv

logger = logging.getLogger(__name__)

STATE_FILE = "search_state.pt"
FORMAT_VERSION = 3  # 2: option columns instead of (w, a) bits; 3: scores with their divergence


def fingerprint(env: QuantEnv, strategy: str, episodes: int, seed: int, config: dict[str, Any] | None,
                episodic: bool) -> dict[str, Any]:
    """Everything that decides a search's course, except the evaluator (fp32 accuracy stands in for it):
    ``config`` is the strategy's configuration as a dict; ``episodic``, whether it plays in rounds."""
    problem, space = env.problem, env.space
    return {
        "model": list(problem.layer_names),
        "layer features": hashlib.sha256(np.asarray(problem.state_matrix, dtype=np.float32).tobytes()).hexdigest(),
        "cost tables": problem.costs.digest(),
        "budget": {q: float(v) for q, v in sorted(problem.limits.items())},
        "options": {
            "choices": [[o.name for o in layer.options] for layer in space.layers],
            "pinned": [i for i, p in enumerate(space.pinned) if p],
            "reward_lambda": float(problem.reward_lambda),
            "reward": problem.reward,
            "fp32_accuracy": float(problem.fp32_accuracy),
        },
        "strategy": strategy,
        "episodes": int(episodes),
        "seed": int(seed),
        "agent config": config,
        # Episodes acting before they are evaluated together change an agent's course; probes do not.
        "episodes per round": problem.workers if episodic else 1,
    }


def save_state(workdir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (temporary file in the same directory, then os.replace)."""
    with atomic_path(Path(workdir) / STATE_FILE) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)


def load_state(workdir: str | os.PathLike, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state if its fingerprint matches ``expected``; None when there is none yet."""
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        logger.warning("resume: no search state in %s yet; starting a new search", workdir)
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise InputError(f"`resume`: cannot read {path} ({err}); delete it or use a new workdir") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise InputError(f"`resume`: {path} was written by another haqc version; delete it or use a new workdir")
    saved = state.get("fingerprint", {})
    differing = [key for key in expected if saved.get(key) != expected[key]]
    if differing:
        raise InputError(
            f"`resume`: the `workdir` was made for another model or other options ({', '.join(differing)} differ); "
            "use a new workdir or drop `resume`"
        )
    return state
