"""Scores kept across searches, so a sweep over budgets or targets pays for each policy once.

A policy's score depends on the model, the calibration, the data and the
quantization settings (the "setup"), never on the budget, the target or the
strategy. So a workdir keeps one file per setup, ``scores-<setup>.json``:
every policy scored in it, as its layers' option names, with the score (metric and divergence). A later search
in the same workdir with the same setup reads a stored score instead of
evaluating the policy again: the ilp strategy's probes, greedy's and the
warm start's are the same at every budget. The file is rewritten atomically
after each batch of evaluations, so an interrupted run leaves the scores it
completed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from haqc.errors import InputError
from haqc.io import atomic_write_text
from haqc.policy import Policy
from haqc.search.parallel import Evaluations
from haqc.search.score import Score, ScoreLike, as_score

FORMAT_VERSION = 2  # 2: [metric, divergence] per policy


def store_path(workdir: str | os.PathLike, setup: str) -> Path:
    """Where ``workdir`` keeps the scores of ``setup`` (a digest of what scores depend on)."""
    return Path(workdir) / f"scores-{setup[:16]}.json"


@dataclass
class Stored:
    """``Evaluations`` that read and add to a workdir's score file; ``inner`` scores what is new."""

    inner: Evaluations
    path: Path
    setup: str
    reused: int = 0  # policies this run read from the file instead of evaluating
    _scores: dict[tuple[str, ...], Score] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            if saved["format"] != FORMAT_VERSION or saved["setup"] != self.setup:
                raise ValueError("another setup")
            self._scores = {tuple(options): Score(*score) for options, score in saved["scores"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{self.path} is not a score file of this run's setup ({err}); delete it or use "
                             "another workdir") from None

    @property
    def workers(self) -> int:
        return self.inner.workers

    def map(self, policies: Sequence[Policy]) -> list[ScoreLike]:
        keys = [tuple(option.name for option in policy.values()) for policy in policies]
        missing = {key: policy for key, policy in zip(keys, policies) if key not in self._scores}
        self.reused += len(dict.fromkeys(keys)) - len(missing)
        if missing:
            self._scores.update(zip(missing, map(as_score, self.inner.map(list(missing.values())))))
            atomic_write_text(self.path, json.dumps({
                "format": FORMAT_VERSION, "setup": self.setup,
                "scores": [(key, (s.metric, s.divergence)) for key, s in self._scores.items()]}))
        return [self._scores[key] for key in keys]
