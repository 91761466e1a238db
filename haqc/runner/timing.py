"""The one way haqc times ONNX models: used by ``ort-cpu`` on this machine and by the device runner.

A measured target compares a layer's options by their timings, so the host and a device must
time alike; both call ``time_models`` here. Standard library, numpy and onnxruntime only.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from haqc.errors import InputError


@dataclass(frozen=True)
class Protocol:
    """How models are timed: ``warmup`` untimed runs each, then interleaved rounds of warm blocks
    (one untimed run, ``block`` timed runs per model), at least ``min_rounds`` and
    ``min_seconds`` per model, at most ``max_rounds``."""

    warmup: int = 3
    block: int = 3
    min_rounds: int = 7
    max_rounds: int = 300
    min_seconds: float = 0.25

    def __post_init__(self) -> None:
        for name in ("warmup", "block", "min_rounds", "max_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
                raise InputError(f"timing protocol: `{name}` must be an integer in 0..10000, got {value!r}")
        if self.block < 1 or not 1 <= self.min_rounds <= self.max_rounds:
            raise InputError("timing protocol: `block` must be at least 1 and 1 <= `min_rounds` <= `max_rounds`")
        if not isinstance(self.min_seconds, (int, float)) or not 0 <= self.min_seconds <= 60:
            raise InputError(f"timing protocol: `min_seconds` must be in 0..60, got {self.min_seconds!r}")


def providers(provider: str) -> list[str]:
    """ONNX Runtime's provider list for ``provider`` (CPU, CUDA, TensorRT, ...), CPU as the fallback
    for the ops it lacks; an InputError where this onnxruntime build does not have it."""
    available = [p.removesuffix("ExecutionProvider") for p in ort.get_available_providers()]
    if provider not in available:
        raise InputError(f"execution provider {provider!r} is not in this onnxruntime build (it has: "
                         f"{', '.join(available)}); install the onnxruntime package built for it, or use CPU")
    return [f"{provider}ExecutionProvider"] + (["CPUExecutionProvider"] if provider != "CPU" else [])


def session(model: bytes, provider: str, threads: int | None,
            disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    """A session of ``model`` as it is timed: ``threads`` intra-op threads (None: ONNX Runtime's
    default), idle threads that do not spin, ONNX Runtime's graph optimizers but ``disabled_optimizers``
    (a deployment may turn off a fusion that is slow on its hardware)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Sessions that spin their idle threads take each other's cores: on the example at batch 32,
    # two live sessions ran 9.3-14.4 ms with spinning and 3.4-5.0 ms without (interleaved).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=providers(provider),
                                disabled_optimizers=list(disabled_optimizers) or None)


def time_models(models: Sequence[bytes], feeds: dict[str, np.ndarray], provider: str = "CPU",
                threads: int | None = 1, protocol: Protocol = Protocol(),
                run_options: ort.RunOptions | None = None, disabled_optimizers: Sequence[str] = ()) -> list[float]:
    """Seconds per run of each model, in interleaved rounds of warm blocks: each block re-warms
    its model with one untimed run, then times ``protocol.block`` runs in a row (a deployed model
    runs warm). The first model's median time, times each model's median ratio to it within a
    round: a machine's speed drifts by tens of percent within seconds, and a round's ratio sees
    none of that drift. ``run_options`` lets a caller stop a run that takes too long; ``disabled_optimizers``
    go to every session (``session``)."""
    sessions = [session(m, provider, threads, disabled_optimizers) for m in models]

    def run(s: ort.InferenceSession) -> None:
        s.run(None, feeds, run_options)

    for s in sessions:
        for _ in range(protocol.warmup):
            run(s)
    rounds: list[list[float]] = []  # per round, each model's block median
    start = time.perf_counter()
    while len(rounds) < protocol.max_rounds and (
            len(rounds) < protocol.min_rounds or time.perf_counter() - start < protocol.min_seconds * len(sessions)):
        medians = []
        for s in sessions:
            run(s)
            block = []
            for _ in range(protocol.block):
                t = time.perf_counter()
                run(s)
                block.append(time.perf_counter() - t)
            medians.append(statistics.median(block))
        rounds.append(medians)
    first = statistics.median(r[0] for r in rounds)
    return [first * statistics.median(r[k] / r[0] for r in rounds) for k in range(len(sessions))]
