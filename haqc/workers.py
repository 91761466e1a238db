"""Parallel evaluation on Ray: workers built once from a recipe, then sent only policies.

``RayPool(score, workers, address)`` is a context manager and an
``haqc.search.parallel.Evaluations`` engine. Entering it starts Ray on this
machine (``address=None``: local worker processes, nothing to set up), joins a
running cluster (``address="auto"`` or ``"host:port"``), or reuses a Ray the
caller has already initialized. ``score`` (a picklable callable, in haqc a
``CandidateScorer``: prepared model, calibration, evaluator with its data) goes
through Ray's object store once; each worker (a Ray actor) deserializes it
once and then receives one policy per evaluation and returns one float.
Scores come back in submission order. Each worker reserves ``threads`` CPUs
and runs ONNX Runtime on that many (default: the cluster's CPUs divided among
the workers), so evaluations never oversubscribe a node. Leaving the pool
kills its workers, and shuts Ray down when the pool started it. Ray is an
optional extra (in the clone: ``pip install -c constraints.txt '.[ray]'``); docs/parallel.md.
"""
from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any, Callable, Sequence

from haqc.errors import HaqcError, InputError, WorkerError, first_line
from haqc.evaluation import available_cores, set_session_threads
from haqc.policy import Policy
from haqc.search.score import ScoreLike

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # building a worker deserializes the model and its data; a big model takes a while


class _Worker:
    """One Ray actor: the scorer built once, then a policy in and a score out per call."""

    def __init__(self, score: Callable[[Policy], ScoreLike], threads: int) -> None:
        import torch

        set_session_threads(threads)
        torch.set_num_threads(threads)  # a candidate's fine-tuning, if any, shares the reservation too
        self.score = score

    def ready(self) -> int:
        return os.getpid()

    def evaluate(self, policy: Policy) -> ScoreLike:
        return self.score(policy)


class RayPool:
    """``workers`` Ray actors scoring policies with ``score``; see the module docstring."""

    def __init__(self, score: Callable[[Policy], ScoreLike], workers: int, address: str | None = None,
                 threads: int | None = None) -> None:
        if workers < 1:
            raise InputError(f"`workers` must be at least 1, got {workers}")
        self.score = score
        self.workers = workers
        self.address = address
        self.threads = threads
        self._ray: Any = None
        self._actors: list[Any] = []
        self._started = False

    def __enter__(self) -> RayPool:
        ray = require_ray()
        self._ray = ray
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats notice on the terminal
            local = self.address is None
            try:
                ray.init(address=self.address, num_cpus=max(available_cores(), self.workers) if local else None,
                         include_dashboard=False if local else None, log_to_driver=False,
                         logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise InputError(f"cannot join the Ray cluster at {self.address!r} ({first_line(err)}); "
                                 "check `ray_address` (`ray status` on a node lists it)") from None
            self._started = True
        try:
            self._start_actors()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_actors(self) -> None:
        ray = self._ray
        threads = self.threads or self._share()
        logger.info("starting %d Ray workers with %d ONNX Runtime threads each", self.workers, threads)
        recipe = ray.put(self.score)  # once: every worker reads the same object
        actor = ray.remote(num_cpus=threads, max_restarts=0)(_Worker)
        self._actors = [actor.remote(recipe, threads) for _ in range(self.workers)]
        try:
            self._get([a.ready.remote() for a in self._actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(
                f"Ray could not start {self.workers} workers of {threads} CPUs each within {START_TIMEOUT_S:.0f} s "
                f"(the cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs); use fewer `workers`"
            ) from None

    def _share(self) -> int:
        """Each worker's CPUs: the cluster's divided among the workers, at most one node's."""
        ray = self._ray
        total = int(ray.cluster_resources().get("CPU", 1))
        largest = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=1)
        return max(1, min(total // self.workers, largest))

    def map(self, policies: Sequence[Policy]) -> list[ScoreLike]:
        """Scores of ``policies`` in the order given; the workers take them in turn."""
        refs = [self._actors[k % self.workers].evaluate.remote(p) for k, p in enumerate(policies)]
        return self._get(refs)

    def _get(self, refs: list[Any], timeout: float | None = None) -> list[Any]:
        """ray.get, with a worker's failure as one line: the worker's own haqc error as it is, else a
        WorkerError naming what went wrong."""
        ray = self._ray
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, HaqcError):
                raise cause from None
            raise WorkerError(f"a search worker failed: {type(cause).__name__}: {first_line(cause)}") from None
        except ray.exceptions.RayActorError as err:
            raise WorkerError(f"a search worker died ({first_line(err)}); "
                              "see the Ray logs on its node (/tmp/ray/session_latest/logs)") from None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        ray = self._ray
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def require_ray() -> Any:
    """The ray module, or the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("parallel `workers` and `ray_address` need Ray: install haqc's ray extra, in its clone "
                         "pip install -c constraints.txt '.[ray]' (docs/parallel.md)") from None
    return ray
