"""``ort-cpu``: ONNX Runtime on the machine haqc runs on, measured rather than modelled.

HAQ's point is feedback from the hardware itself. This target's options are what ONNX
Runtime's execution provider has fast kernels for, declared per kind of layer as its
capabilities (``OFFERED``): on the CPU, a convolution runs in float or as an 8-bit integer
kernel (QLinearConv, fused from the QDQ haqc writes); a MatMul / Gemm also as a blocked
weight-only kernel (MatMulNBits, 4 or 8 bits) or with its input quantized at run time
(DynamicQuantizeMatMul); an embedding table stored as int8 rows. Narrower widths of the
integer kernels run those same 8-bit kernels, so they would cost accuracy for no time; they
are not offered. GPU providers add 16-bit float layers.

Each layer is timed alone at each option (its real input shape, the Quantize /
Dequantize the export puts at its boundaries; median of interleaved runs after warm-up).
A model's latency is then ``scale * sum(layers) + rest``, with ``scale`` and ``rest``
fitted on two whole-model timings (fp32 and all-8-bit): the layers' sum misses the float
ops between them and counts a session call per layer (docs/cost_models.md). Measurements
are cached on disk, keyed by layer geometry (or model bytes), option, ONNX Runtime's
version, the CPU, the execution provider, the thread count and the batch, so a second run
measures nothing. The same class measures another execution provider (``provider="CUDA"``)
where that build of ONNX Runtime is installed. ``RemoteOrtTarget`` (``ort-cpu@HOST:PORT``)
measures the same way on another device, through ``haqc-runner`` (docs/runner.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from haqc.capabilities import Capabilities, OpCapability
from haqc.costs import CostTable, Transition
from haqc.errors import InputError
from haqc.capabilities import KINDS
from haqc.costs import padded
from haqc.hw_targets.base import MeasuredTarget, Subgraphs, option_weight_bytes
from haqc.io import atomic_write_text
from haqc.layers import Layer
from haqc.ops import LAYER_OPS
from haqc.precision import FP16, FP32, IntFormat, Method, Option, reference_option
from haqc.progress import progress_bar
from haqc.runner import timing
from haqc.runner.client import RunnerClient
from haqc.runner.facts import device_facts

logger = logging.getLogger(__name__)

INT8 = Option(8, 8)
INT8_DYNAMIC = Option(IntFormat(8), IntFormat(8, dynamic=True))
W4_BLOCK32, W8_BLOCK32 = Option(IntFormat(4, block=32)), Option(IntFormat(8, block=32))
# What each provider runs fast, per kind of layer, least precise first (the most precise is what a pinned
# layer gets). Only these are timed and offered.
_CPU_MATMUL = (W4_BLOCK32, INT8, INT8_DYNAMIC, W8_BLOCK32, FP32)
_CPU = {"conv": (INT8, FP32), "depthwise": (INT8, FP32), "fc": _CPU_MATMUL, "matmul": _CPU_MATMUL,
        "embedding": (Option(8, None), FP32)}
_GPU_MATMUL = (W4_BLOCK32, INT8, FP16, FP32)
_GPU = {"conv": (INT8, FP16, FP32), "depthwise": (INT8, FP16, FP32), "fc": _GPU_MATMUL, "matmul": _GPU_MATMUL,
        "embedding": (Option(8, None), FP16, FP32)}
OFFERED = {"CPU": _CPU, "CUDA": _GPU, "Tensorrt": _GPU}
# Bumped when what is measured changes, so old cache entries are not read as new ones.
_MEASUREMENT_VERSION = 7
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
        timing.providers(provider)  # an InputError naming the providers this build has
        if threads is not None and threads < 1:
            raise InputError(f"`threads` must be at least 1, got {threads}")
        self._measure_on(device_facts(provider, threads), batch, "this machine")

    def _measure_on(self, facts: dict, batch: int, where: str) -> None:
        """Measure on the device ``facts`` describe: its CPU decides the numerics, and they key the cache."""
        self.facts, self.batch = facts, batch
        self.provider, self.threads = facts["provider"], facts["threads"]
        self.name = f"ort-{self.provider.lower()}"
        threads = self.threads
        self.description = (f"ONNX Runtime {facts['onnxruntime']} on {where} ({self.provider} execution provider, "
                            f"{threads or 'default'} thread{'s' if threads != 1 else ''}): every layer timed in "
                            "float and as an 8-bit integer kernel, cached")

    def capabilities(self) -> Capabilities:
        """From the measured device's facts: the CPU provider's u8s8 kernels add pairs of products in
        int16 on x86 without VNNI (reduced 8-bit range there); VNNI, ARM's dot product and GPU int8
        kernels accumulate in int32 and take the full range."""
        reduced = self.provider == "CPU" and self.facts["int_dot"] == "avx2"
        offered = OFFERED.get(self.provider, _CPU)
        return Capabilities(**{kind: OpCapability(offered[kind], reduced) for kind in KINDS},
                            source=f"ONNX Runtime {self.facts['onnxruntime']} {self.provider} on {self.facts['cpu']}, "
                                   f"integer dot product: {self.facts['int_dot']}")

    def measured_table(self, layers: Sequence[Layer], subgraphs: Subgraphs, method: Method = "linear") -> CostTable:
        """Every layer timed alone at each option its kind is offered (``capabilities``); chained
        integer layers save the conversion between them (a transition). w8a8 is not offered where it
        is no faster than fp32 even with every saving it could have (it could never help a latency
        budget). ``combine`` is the sum fitted to whole-model timings."""
        if method != "linear":
            raise InputError(f"target {self.name!r} times integer kernels; k-means codebooks run as float weights "
                             "in ONNX Runtime, so use a size budget on another target (e.g. edge) for them")
        offered = [self.options(layer) for layer in layers]
        with progress_bar(len(layers), f"cost table ({self.name}: timing layers)", unit="layer",
                          iterable=zip(layers, offered)) as pairs:  # cached timings pass too fast to draw
            times, conversions = zip(*(self._layer_times(layer, subgraphs, opts) for layer, opts in pairs))
        chains = subgraphs.chains()
        # What a layer can save in integer chains: its input's conversion, and its consumers'.
        chained = np.zeros(len(layers))
        for j, i in chains:
            chained[i] += conversions[i]
            chained[j] += conversions[i]
        rows, declared = [], []
        for layer, opts, t, saving in zip(layers, offered, times, chained):
            kept = tuple(o for o in opts if o != INT8 or t[INT8] - saving < t[FP32])
            declared.append(len(kept))
            extras = dict.fromkeys((FP32, reference_option("linear", layer.kind)))
            rows.append(kept + tuple(o for o in extras if o not in kept))
        latency = padded([[t[o] for o in row] for t, row in zip(times, rows)])
        size = padded([[option_weight_bytes(l, o) for o in row] for l, row in zip(layers, rows)])
        transitions = []
        for j, i in chains:  # two chained integer layers skip the conversion between them
            if INT8 in rows[j] and INT8 in rows[i]:
                saved = np.zeros((len(rows[j]), len(rows[i])))
                saved[rows[j].index(INT8), rows[i].index(INT8)] = -min(conversions[i], times[i][INT8], times[j][INT8])
                transitions.append(Transition(j, i, {"latency": saved}))
        table = CostTable([l.name for l in layers], rows, {"latency": latency, "size": size}, declared=declared,
                          transitions=transitions, kinds=[l.kind for l in layers])
        ends = [float(np.sum(table.per_layer("latency", table.indices(policy))))
                for policy in ([FP32] * len(layers), table.reference("linear"))]
        scale, rest = self._whole_model_fit(subgraphs, *ends)
        table.combine = lambda per_layer: scale * float(np.sum(per_layer)) + rest  # the fit needs the sums first
        return table

    def time_models(self, models: Sequence[onnx.ModelProto], feeds: dict[str, np.ndarray]) -> list[float]:
        """Seconds per run of each model on this machine (haqc.runner.timing: the runner's way too)."""
        return timing.time_models([m.SerializeToString() for m in models], feeds, self.provider, self.threads)

    def _layer_times(self, layer: Layer, subgraphs: Subgraphs,
                     options: Sequence[Option]) -> tuple[dict[Option, float], float]:
        """Seconds per batch of ``layer`` alone at each of ``options``, and of a Quantize -> Dequantize
        of its input (none for an embedding: its input is indices); cached by geometry and options."""
        key = self._key("layer", json.dumps([subgraphs.geometry(layer, self.batch), [o.name for o in options]]))
        cached = self._read(key)
        if cached is None or len(cached) != len(options) + 1:
            models = [subgraphs.layer(layer, o, self.batch) for o in options]
            indexed = LAYER_OPS[layer.op].indexed
            if not indexed:
                models.append(subgraphs.conversion(layer, self.batch))
            feeds = subgraphs.input_feed(layer, self.batch)
            (name, x), = feeds.items()
            *layer_times, call = self.time_models([*models, _identity(name, x)], feeds)
            # A session call costs the same with or without the layer: only the layer's own time adds up.
            cached = [max(t - call, _FLOOR_S) for t in layer_times] + ([0.0] if indexed else [])
            self._write(key, cached, f"layer {layer.name} ({layer.op}, input {list(layer.input_shape)}): "
                                     f"{', '.join(o.name for o in options)}, input conversion")
        return dict(zip(options, cached)), cached[-1]

    def _whole_model_fit(self, subgraphs: Subgraphs, fp32_sum: float, int8_sum: float) -> tuple[float, float]:
        """``(scale, rest)`` with ``scale * sum + rest`` equal to the whole model's measured fp32 and
        all-8-bit latencies; ``(1, mean gap)`` when the two sums are too close to fit a slope."""
        digest = hashlib.sha256(subgraphs.model.SerializeToString(deterministic=True)).hexdigest()[:24]
        key = self._key("model", digest)
        whole = self._read(key)
        if whole is None:
            feeds = subgraphs.feeds(self.batch)
            whole = self.time_models([subgraphs.whole(FP32, self.batch), subgraphs.whole(INT8, self.batch)], feeds)
            self._write(key, whole, "whole model at fp32 and w8a8 (embeddings w8)")
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


class RemoteOrtTarget(OrtTarget):
    """``ort-cpu@HOST:PORT``: what ``ort-cpu`` measures, measured by ``haqc-runner`` on another device.

    The facts (and so the cache key and the capabilities) are the device's, asked of the runner:
    two devices never share timings, and a resumed run reads what the device already measured.
    ``provider`` and ``threads`` None: the runner's own settings (its --execution-provider, --threads);
    ``threads`` 0: ONNX Runtime's default there."""

    def __init__(self, address: str, provider: str | None = None, threads: int | None = None, batch: int = 1,
                 client: RunnerClient | None = None) -> None:
        if threads is not None and threads < 0:
            raise InputError(f"`threads` must be at least 0, got {threads}")
        self.client = client or RunnerClient(address)
        provider = provider.removesuffix("ExecutionProvider") if provider else None
        facts = self.client.facts(provider, threads)
        self._measure_on(facts, batch, f"the runner at {address}")
        self.name = f"ort-{self.provider.lower()}@{address}"

    def time_models(self, models: Sequence[onnx.ModelProto], feeds: dict[str, np.ndarray]) -> list[float]:
        """Seconds per run of each model on the runner's device (haqc.runner.timing there)."""
        return self.client.time_models([m.SerializeToString() for m in models], feeds, self.provider,
                                       self.threads or 0)  # None in the facts: ONNX Runtime's default, 0 on the wire


def _identity(name: str, x: np.ndarray) -> onnx.ModelProto:
    """A model that only copies its input ``x``: the cost of a session call on that input."""
    dtype = onnx.helper.np_dtype_to_tensor_dtype(x.dtype)
    x, y = (onnx.helper.make_tensor_value_info(n, dtype, list(x.shape)) for n in (name, "copy"))
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", [name], ["copy"])], "call", [x], [y])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def target() -> OrtTarget:
    """The ``ort-cpu`` entry point: the CPU execution provider, one thread, batch 1."""
    return OrtTarget()
