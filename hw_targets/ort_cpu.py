"""``ort-cpu``: ONNX Runtime on the machine haqc runs on, measured rather than modelled.

HAQ's point is feedback from the hardware itself. This target's options are what ONNX
Runtime's CPU execution provider has fast kernels for: a layer runs in float, or as an
8-bit integer kernel (QLinearConv / QGemm / QLinearMatMul, fused from the QDQ haqc writes).
Narrower widths run those same 8-bit kernels in ONNX Runtime, so they would cost accuracy
for no time; they are not offered.

Each layer is timed alone at each option (its real input shape, the Quantize /
Dequantize the export puts at its boundaries; median of interleaved runs after warm-up).
A model's latency is then ``scale * sum(layers) + rest``, with ``scale`` and ``rest``
fitted on two whole-model timings (fp32 and all-8-bit): the layers' sum misses the float
ops between them and counts a session call per layer (docs/cost_models.md). Measurements
are cached on disk, keyed by layer geometry (or model bytes), option, ONNX Runtime's
version, the CPU, the execution provider, the thread count and the batch, so a second run
measures nothing. The same class measures another execution provider (``provider="CUDA"``)
where that build of ONNX Runtime is installed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from haqc.costs import CostTable, Transition
from haqc.errors import InputError
from haqc.hw_targets.base import FLOAT_STORAGE_BYTES, MeasuredTarget, Subgraphs, weight_bytes
from haqc.io import atomic_write_text
from haqc.layers import Layer
from haqc.precision import FP32, Method, Option
from haqc.runner.facts import device_facts

logger = logging.getLogger(__name__)

INT8 = Option(8, 8)
# Bumped when what is measured changes, so old cache entries are not read as new ones.
_MEASUREMENT_VERSION = 6
_WARMUP = 3
_BLOCK = 3  # timed runs in a row per model, after one that re-warms it
_MIN_ROUNDS, _MAX_ROUNDS, _MIN_SECONDS = 7, 300, 0.25
_FLOOR_S = 1e-7  # a layer timed at or below a bare session call still costs something


def cache_dir() -> Path:
    """``$HAQC_CACHE_DIR``, else ``$XDG_CACHE_HOME/haqc``, else ``~/.cache/haqc``."""
    if os.environ.get("HAQC_CACHE_DIR"):
        return Path(os.environ["HAQC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "haqc"


class OrtTarget(MeasuredTarget):
    """ONNX Runtime on this machine, one execution provider, ``threads`` intra-op threads (None:
    ONNX Runtime's default, all physical cores).

    One thread is the default: the latency of one inference stream on one core, and the setting
    whose timings hold still. On this project's 2-core machine, with both threads, the all-int8
    example model timed 4.3-11.6 ms in consecutive calls (a parallel kernel waits for its slowest
    thread) and estimates of resnet18 policies were off by 31-36%; with one thread within 3.6%
    (benchmarks/RESULTS.md, section 6)."""

    w_bits = (8,)
    a_bits = (8,)

    def __init__(self, provider: str = "CPU", threads: int | None = 1, batch: int = 1) -> None:
        provider = provider.removesuffix("ExecutionProvider")
        available = [p.removesuffix("ExecutionProvider") for p in ort.get_available_providers()]
        if provider not in available:
            raise InputError(f"execution provider {provider!r} is not in this onnxruntime build (it has: "
                             f"{', '.join(available)}); install the onnxruntime package built for it, or use CPU")
        if threads is not None and threads < 1:
            raise InputError(f"`threads` must be at least 1, got {threads}")
        self.provider, self.threads, self.batch = provider, threads, batch
        self.facts = device_facts(provider, threads)  # the device measured: its CPU decides the numerics
        self.name = f"ort-{provider.lower()}"
        self.description = (f"ONNX Runtime {ort.__version__} on this machine ({provider} execution provider, "
                             f"{threads or 'default'} thread{'s' if threads != 1 else ''}): every layer timed in "
                             "float and as an 8-bit integer kernel, cached")

    def measured_table(self, layers: Sequence[Layer], subgraphs: Subgraphs, method: Method = "linear") -> CostTable:
        """Every layer timed at w8a8 and fp32, alone; chained integer layers save the conversion
        between them (a transition). w8a8 is not offered where it is no faster than fp32 even with
        every saving it could have (it could never help a latency budget). ``combine`` is the sum
        fitted to whole-model timings."""
        if method != "linear":
            raise InputError(f"target {self.name!r} times integer kernels; k-means codebooks run as float weights "
                             "in ONNX Runtime, so use a size budget on another target (e.g. edge) for them")
        measured = [self._layer_times(layer, subgraphs) for layer in layers]
        times = [{INT8: m[0], FP32: m[1]} for m in measured]
        chains = subgraphs.chains()
        # What a layer can save in integer chains: its input's conversion, and its consumers'.
        chained = np.zeros(len(layers))
        for j, i in chains:
            chained[i] += measured[i][2]
            chained[j] += measured[i][2]
        rows, declared = [], []
        for t, saving in zip(times, chained):
            offered = (INT8, FP32) if t[INT8] - saving < t[FP32] else (FP32,)
            declared.append(len(offered))
            rows.append(offered + tuple(o for o in (FP32, INT8) if o not in offered))
        latency = np.array([[t[o] for o in row] for t, row in zip(times, rows)])
        size = np.array([[weight_bytes(l, 8) if o == INT8 else float(l.params * FLOAT_STORAGE_BYTES) for o in row]
                         for l, row in zip(layers, rows)])
        transitions = []
        for j, i in chains:  # two chained integer layers skip the conversion between them
            saved = np.zeros((len(rows[j]), len(rows[i])))
            saved[rows[j].index(INT8), rows[i].index(INT8)] = -min(measured[i][2], times[i][INT8], times[j][INT8])
            transitions.append(Transition(j, i, {"latency": saved}))
        table = CostTable([l.name for l in layers], rows, {"latency": latency, "size": size}, declared=declared,
                          transitions=transitions)
        ends = [float(np.sum(table.per_layer("latency", table.indices([o] * len(layers))))) for o in (FP32, INT8)]
        scale, rest = self._whole_model_fit(subgraphs, *ends)
        table.combine = lambda per_layer: scale * float(np.sum(per_layer)) + rest  # the fit needs the sums first
        return table

    def time_models(self, models: Sequence[onnx.ModelProto], feeds: dict[str, np.ndarray]) -> list[float]:
        """Seconds per run of each model, in interleaved rounds of warm blocks: each block re-warms
        its model with one untimed run, then times ``_BLOCK`` runs in a row (a deployed model runs
        warm). The first model's median time, times each model's median ratio to it within a round:
        this machine's speed drifts by tens of percent within seconds, and a round's ratio sees
        none of that drift."""
        sessions = [self._session(m) for m in models]
        for session in sessions:
            for _ in range(_WARMUP):
                session.run(None, feeds)
        rounds: list[list[float]] = []  # per round, each model's block median
        start = time.perf_counter()
        while len(rounds) < _MAX_ROUNDS and (len(rounds) < _MIN_ROUNDS
                                             or time.perf_counter() - start < _MIN_SECONDS * len(sessions)):
            medians = []
            for session in sessions:
                session.run(None, feeds)
                block = []
                for _ in range(_BLOCK):
                    t = time.perf_counter()
                    session.run(None, feeds)
                    block.append(time.perf_counter() - t)
                medians.append(statistics.median(block))
            rounds.append(medians)
        first = statistics.median(r[0] for r in rounds)
        return [first * statistics.median(r[k] / r[0] for r in rounds) for k in range(len(sessions))]

    def _session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Sessions that spin their idle threads take each other's cores: on the example at batch 32,
        # two live sessions ran 9.3-14.4 ms with spinning and 3.4-5.0 ms without (interleaved).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        providers = [f"{self.provider}ExecutionProvider"] + (["CPUExecutionProvider"] if self.provider != "CPU" else [])
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)

    def _layer_times(self, layer: Layer, subgraphs: Subgraphs) -> list[float]:
        """Seconds per batch of ``layer`` alone at w8a8 and fp32, and of a Quantize -> Dequantize of
        its input (cached by geometry)."""
        key = self._key("layer", subgraphs.geometry(layer, self.batch))
        cached = self._read(key)
        if cached is not None and len(cached) == 3:
            return cached
        models = [*(subgraphs.layer(layer, o, self.batch) for o in (INT8, FP32)), subgraphs.conversion(layer, self.batch)]
        x = models[1].graph.input[0]
        shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
        feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        *layer_times, call = self.time_models([*models, _identity(x.name, shape)], feeds)
        # A session call costs the same with or without the layer: only the layer's own time adds up.
        measured = [max(t - call, _FLOOR_S) for t in layer_times]
        self._write(key, measured, f"layer {layer.name} ({layer.op}, input {list(layer.input_shape)}): w8a8, fp32, "
                                   "input conversion")
        return measured

    def _whole_model_fit(self, subgraphs: Subgraphs, fp32_sum: float, int8_sum: float) -> tuple[float, float]:
        """``(scale, rest)`` with ``scale * sum + rest`` equal to the whole model's measured fp32 and
        all-8-bit latencies; ``(1, mean gap)`` when the two sums are too close to fit a slope."""
        digest = hashlib.sha256(subgraphs.model.SerializeToString(deterministic=True)).hexdigest()[:24]
        key = self._key("model", digest)
        whole = self._read(key)
        if whole is None:
            feeds = subgraphs.feeds(self.batch)
            whole = self.time_models([subgraphs.whole(FP32, self.batch), subgraphs.whole(INT8, self.batch)], feeds)
            self._write(key, whole, "whole model at fp32 and w8a8")
        if abs(fp32_sum - int8_sum) > 0.05 * fp32_sum:
            scale = (whole[0] - whole[1]) / (fp32_sum - int8_sum)
            if scale > 0:
                return scale, whole[0] - scale * fp32_sum
        return 1.0, float(np.mean([whole[0] - fp32_sum, whole[1] - int8_sum]))

    def _key(self, kind: str, what: str) -> str:
        parts = [_MEASUREMENT_VERSION, kind, what, self.facts, self.batch]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def _read(self, key: str) -> list[float] | None:
        path = cache_dir() / "measurements" / f"{key}.json"
        try:
            return [float(v) for v in json.loads(path.read_text())["seconds"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, key: str, seconds: list[float], what: str) -> None:
        path = cache_dir() / "measurements" / f"{key}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"what": what, "seconds": seconds,
                                                "device": self.facts, "batch": self.batch}))
        except OSError as err:  # a read-only cache costs the next run a measurement, not this one its result
            logger.warning("could not cache a measurement in %s: %s", path.parent, err)


def _identity(name: str, shape: list[int]) -> onnx.ModelProto:
    """A model that only copies its input: the cost of a session call on that input."""
    x = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
    y = onnx.helper.make_tensor_value_info("copy", onnx.TensorProto.FLOAT, shape)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", [name], ["copy"])], "call", [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def target() -> OrtTarget:
    """The ``ort-cpu`` entry point: the CPU execution provider, one thread, batch 1."""
    return OrtTarget()
