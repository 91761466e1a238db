"""Evaluation with ONNX Runtime: the accuracy signal the search asks for hundreds of times.

An ``Evaluator`` is built once per dataset (targets resolved, reference
outputs cached); each ``evaluate(model)`` then costs one session creation
and one pass over the data. Models are run exactly as given, so a quantized
graph is measured with the numerics it will ship with.
"""
from __future__ import annotations

import collections
import functools
import importlib
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
import onnxruntime as ort

from haqc.data import Dataset, InputSpec, fixed_batch
from haqc.errors import InputError, first_line
from haqc.ops import PASS_THROUGH, SELECTIONS
from haqc.runner.facts import INT8_RANGE_KEY, cpu_flags, int_dot
from haqc.settings import BATCH_ELEMENTS, DEFAULT_BATCH, FIDELITY, FIDELITY_DB, TOP1, TOP1_AGREEMENT, Metric

logger = logging.getLogger(__name__)

ModelSource = Union[onnx.ModelProto, bytes, str, os.PathLike]

# ENABLE_ALL, measured on the example (2 busy cores, session creation + 1,000 images):
# fp32 0.59 s vs 1.45 s (BASIC) / 1.39 s (EXTENDED), thanks to the NCHWc conv layout;
# int8 QDQ (from ORT's quantize_static) 0.25 s vs 1.61 s / 0.58 s, thanks to QLinearConv fusion; creation time is
# the same. haqc's exports fuse the same way at every activation width, and with INT8 weight containers
# (the search's unpacked export); packed INT4 / INT2 weights stay float Convs (docs/design.md).
GRAPH_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
# Ops that pass class scores on unchanged in layout (a Softmax then a Flatten still ends in classes).

# ORT's input type names ("tensor(float)") -> numpy dtype names where they differ.
_ORT_DTYPES = {"float": "float32", "double": "float64", "string": "object"}
_ORT_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
                 "NotImplemented", "RuntimeException", "EPFail")
)


_session_threads: int | None = None  # set in a pool's worker process (haqc.workers): its share of the cores


def available_cores() -> int:
    """The cores this process may use (containers and taskset restrict them below os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_session_threads(threads: int | None) -> None:
    """ONNX Runtime's intra-op threads for this process's sessions (None: every available core). A pool's
    workers share the machine's cores, so each takes its share instead of all of them."""
    global _session_threads
    _session_threads = threads


def make_session(model: ModelSource, name: str | None = None,
                 optimized_path: str | os.PathLike | None = None) -> ort.InferenceSession:
    """A CPU inference session tuned for repeated evaluation; ``name`` labels error messages.
    ``optimized_path`` receives the graph ONNX Runtime runs (after its fusions)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.intra_op_num_threads = _session_threads or available_cores()
    # Idle workers sleep instead of spinning: spinning cost 1.5x on a busy 2-core machine
    # (and would steal cores from the agent's torch updates between evaluations).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif not isinstance(model, bytes):
        model = str(model)
    label = name or (model if isinstance(model, str) else "model")
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        if session.get_modelmeta().custom_metadata_map.get(INT8_RANGE_KEY) == "full" and _host_pair_sums_saturate():
            # Integers formed for a target with 32-bit accumulators: this CPU's u8s8 kernels would
            # saturate on them, so the QDQ runs unfused (dequantized, float kernels): the target's numbers.
            logger.info("%s holds full-range int8 weights; this CPU's integer kernels would saturate on them, "
                        "so it is evaluated with float kernels", label)
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return session
    except _ORT_ERRORS as err:
        raise InputError(f"ONNX Runtime cannot load {label} ({first_line(err)}); check the model") from None


@functools.cache
def _host_pair_sums_saturate() -> bool:
    """Whether this CPU's u8s8 kernels add pairs of products in int16 (x86 without VNNI)."""
    return int_dot(cpu_flags(), platform.machine()) == "avx2"


# ONNX Runtime's integer CPU kernels: what its QDQ fusions turn quantized layers into.
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearWhere", "QLinearReduceMean", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM",
    "MatMulNBits", "GatherBlockQuantized"})


def integer_kernels(model: ModelSource) -> dict[str, int]:
    """How many of each integer kernel ONNX Runtime runs ``model`` with, as ``make_session`` loads it
    on this CPU: a QDQ graph states only what may fuse, the optimized graph what did."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        make_session(model, optimized_path=path)
        ops = collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    return {op: ops[op] for op in sorted(ops) if op in INTEGER_KERNELS}


def session_specs(session: ort.InferenceSession) -> list[InputSpec]:
    """(name, shape, dtype) of a session's inputs, in the form ``haqc.data.input_specs`` gives."""
    specs = []
    for arg in session.get_inputs():
        type_name = arg.type.removeprefix("tensor(").removesuffix(")")
        shape = tuple(d if isinstance(d, int) and d > 0 else (d or None) for d in arg.shape)
        specs.append((arg.name, shape, np.dtype(_ORT_DTYPES.get(type_name, type_name))))
    return specs


def batch_size_for(session: ort.InferenceSession, dataset: Dataset, requested: int | None = None) -> int:
    """The batch to run: the model's fixed batch dim if it has one, else ``requested`` or the default
    (DEFAULT_BATCH samples, fewer where they would hold more than BATCH_ELEMENTS input values)."""
    fixed = _fixed_batch(session)
    if fixed is not None:
        if requested not in (None, fixed):
            raise InputError(
                f"the model's batch dimension is fixed at {fixed}, so --batch-size {requested} cannot run; "
                f"omit --batch-size or pass {fixed}"
            )
        return fixed
    if requested is not None and requested <= 0:
        raise InputError(f"--batch-size must be a positive integer, got {requested}")
    return requested or max(1, min(len(dataset), DEFAULT_BATCH, BATCH_ELEMENTS // max(1, dataset.sample_elements)))


def run_batches(session: ort.InferenceSession, dataset: Dataset, batch_size: int | None = None) -> list[list[np.ndarray]]:
    """Every output of the session for each batch of ``dataset``: one list of outputs per batch.

    A model with a fixed batch dim gets its last, partial batch padded by
    repeating the final sample; outputs that keep samples on axis 0 lose the
    padded rows again, others (a scalar score, a list of detections) are kept whole.
    """
    size = batch_size_for(session, dataset, batch_size)
    pad = _fixed_batch(session) is not None
    names = [arg.name for arg in session.get_inputs()]
    results = []
    for feeds, _ in dataset.batches(size):
        n = len(dataset) if not any(v.ndim for v in feeds.values()) else len(next(v for v in feeds.values() if v.ndim))
        if pad and n < size:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) if v.ndim else v
                     for k, v in feeds.items()}
        try:
            outs = session.run(None, {name: feeds[name] for name in names})
        except _ORT_ERRORS as err:
            raise InputError(
                f"ONNX Runtime failed to run the model on {dataset.source} ({first_line(err)}); "
                "check that the data fits the model"
            ) from None
        rows = size if pad else n
        results.append([o[:n] if pad and o.ndim and len(o) == rows else o for o in outs])
    return results


def predictions(session: ort.InferenceSession, dataset: Dataset, batch_size: int | None = None) -> np.ndarray:
    """The session's first output for every sample, concatenated along axis 0."""
    return _first_output(run_batches(session, dataset, batch_size), dataset, batch_size_for(session, dataset, batch_size))


def _first_output(batches: list[list[np.ndarray]], dataset: Dataset, batch: int) -> np.ndarray:
    """The first output of ``run_batches``'s result (``batch`` samples a run) for every sample, samples on
    axis 0 (``samples_first``); InputError if no axis holds the samples."""
    firsts = [outs[0] for outs in batches]
    joined = samples_first(firsts, len(dataset))
    if joined is None:
        rows = min(len(dataset), batch)
        raise InputError(
            f"the model's first output has shape {list(firsts[0].shape)} for a batch of {rows}, with no axis "
            "that holds the samples; top-1 and --metric score outputs per sample (without labels, haqc "
            "compares every output with the reference model's instead)"
        )
    return joined


def sample_axis(parts: list[np.ndarray], samples: int) -> int | None:
    """The axis along which one output's per-batch arrays hold the samples: their lengths there add up
    to ``samples`` and every other dim agrees across batches (a time-major RNN's [steps, batch, classes]
    gives 1); axis 0 where several would; None where none does (a scalar, a list of detections)."""
    if not parts or len({p.ndim for p in parts}) != 1 or not parts[0].ndim:
        return None
    for axis in range(parts[0].ndim):
        if (sum(p.shape[axis] for p in parts) == samples
                and len({p.shape[:axis] + p.shape[axis + 1:] for p in parts}) == 1):
            return axis
    return None


def samples_first(parts: list[np.ndarray], samples: int) -> np.ndarray | None:
    """One output's per-batch arrays joined, samples on axis 0 (moved there from ``sample_axis``); None
    where no axis holds them."""
    axis = sample_axis(parts, samples)
    return None if axis is None else np.moveaxis(np.concatenate(parts, axis), axis, 0)


def fidelity(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]],
             compared: list[tuple[str, float]] | None = None) -> float:
    """The FIDELITY score in [0, 1] of ``outputs`` against ``reference`` (both from ``run_batches``).

    Float outputs score their clipped SQNR over the whole set; other outputs (indices,
    masks) the fraction of elements equal to the reference's. ``compared``: ``_compare``'s
    result when the caller has it already.
    """
    scores = {"sqnr": lambda db: min(max(db, 0.0), FIDELITY_DB) / FIDELITY_DB, "equal": lambda f: f,
              "shape": lambda _: 0.0}
    return float(np.mean([scores[how](v) for how, v in compared or _compare(outputs, reference)]))


# Where one output's divergence stops growing: noise 30 dB above the signal, or non-finite outputs, is
# garbage whatever its size (the probes' loss models and integer program need finite numbers).
MAX_DIVERGENCE = 1e3


def divergence(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], classes: str | None = None,
               compared: list[tuple[str, float]] | None = None) -> float:
    """How far ``outputs`` are from ``reference`` (both from ``run_batches``), >= 0, 0 only when equal:
    the mean over outputs of, for a first output of class scores (``classes``: "logits" or
    "probabilities"), the KL divergence of the reference's class distribution from the output's, averaged
    over samples; for other float outputs the noise-to-signal power ratio |out - ref|^2 / |ref|^2; for
    other outputs (indices, masks) the fraction of elements that differ. Neither saturates at the top.
    ``compared``: ``_compare``'s result when the caller has it already (not with ``classes``)."""
    values = {"sqnr": lambda db: 10 ** (-db / 10), "equal": lambda f: 1.0 - f, "shape": lambda _: MAX_DIVERGENCE}
    if classes is None:
        found = [values[how](v) for how, v in compared or _compare(outputs, reference)]
    else:
        ref = np.concatenate([batch[0] for batch in reference]).astype(np.float64)
        out = np.concatenate([batch[0] for batch in outputs]).astype(np.float64)
        found = [_kl(ref, out, classes) if ref.shape == out.shape else MAX_DIVERGENCE]
        found += [values[how](v) for how, v in _compare(outputs, reference, start=1)]
    return float(np.mean([min(v, MAX_DIVERGENCE) if math.isfinite(v) else MAX_DIVERGENCE for v in found]))


def _compare(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]],
             start: int = 0) -> list[tuple[str, float]]:
    """Each output from ``start`` against the reference's, over the whole set: ("sqnr", dB) for float
    outputs, ("equal", the fraction of equal elements) for others, ("shape", 0) where the shapes differ."""
    compared = []
    for k in range(start, len(reference[0])):
        ref = np.concatenate([np.ravel(batch[k]) for batch in reference])
        out = np.concatenate([np.ravel(batch[k]) for batch in outputs])
        if ref.shape != out.shape:
            compared.append(("shape", 0.0))
        elif ref.dtype.kind != "f":
            compared.append(("equal", float(np.mean(out == ref)) if ref.size else 1.0))
        else:
            compared.append(("sqnr", sqnr_db(out, ref)))
    return compared


def selection_sources(model: onnx.ModelProto) -> dict[int, list[str]]:
    """For each graph output computed through a SELECTIONS op (a detector's built-in TopK, say): the
    tensors it is selected from, i.e. those that its part of the graph reads from the inputs and that no
    selection has touched. Its rows reorder under any noise (a YOLO26 export's 300 detections, sorted
    by score: w8a8 kept every detection and scored 3 dB, a model that detected nothing 4), so the
    label-free signal compares what the selection reads instead."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output if out}
    constant = {init.name for init in graph.initializer}
    live = {value.name for value in graph.input if value.name not in constant}
    selected: set[str] = set()
    for node in graph.node:
        ins = [name for name in node.input if name]
        if any(name in live for name in ins):
            live.update(node.output)
        if node.op_type in SELECTIONS or any(name in selected for name in ins):
            selected.update(out for out in node.output if out)
    sources = {}
    for k, output in enumerate(graph.output):
        found, stack, seen = [], [output.name], set()
        while stack and output.name in selected:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in selected:
                stack.extend(reversed([i for i in producers[name].input if i]))
            elif name in live:
                found.append(name)
        if found:
            sources[k] = found
    return sources


def _kl(ref: np.ndarray, out: np.ndarray, classes: str) -> float:
    """Mean over rows of KL(p_ref || p_out) over the last axis (nats)."""
    def log_probs(x: np.ndarray) -> np.ndarray:
        if classes == "probabilities":
            x = np.clip(x, 1e-12, None)
            return np.log(x / x.sum(-1, keepdims=True))
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    log_p, log_q = log_probs(ref), log_probs(out)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def sqnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """10 log10(|ref|^2 / |out - ref|^2): inf when equal, -inf when ``out`` is not finite."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if not np.isfinite(out).all():
        return -math.inf
    noise = float(np.sum((out - ref) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(max(float(np.sum(ref**2)), 1e-30) / noise)


def load_metric(spec: str) -> Metric:
    """Import ``pkg.mod:func``: a callable ``func(outputs, labels) -> float`` where higher is better."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"malformed --metric {spec!r}; write module:function, e.g. mypkg.metrics:top5")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 -- any import failure is the plugin's, reported in one line
        raise InputError(
            f"cannot import --metric module {module_name!r} ({first_line(err)}); check it is on PYTHONPATH"
        ) from None
    func = getattr(module, attr, None)
    if func is None:
        raise InputError(f"--metric module {module_name!r} has no attribute {attr!r}; check the function name")
    if not callable(func):
        raise InputError(f"--metric {spec!r} is not callable (it is {type(func).__name__}); point it at a function")
    return func


# The first output holds class scores when one of these computes it (through shape-only ops). Rank
# alone decides nothing: three regression scores per clip or a face-probability head are 2-D too.
CLASS_SCORE_OPS = ("Softmax", "LogSoftmax")


def _first_output_op(model: onnx.ModelProto) -> str | None:
    """The op that computes the first output, looking through shape-only ops."""
    producers = {out: node for node in model.graph.node for out in node.output}
    name = model.graph.output[0].name if model.graph.output else ""
    while (node := producers.get(name)) is not None and node.op_type in PASS_THROUGH:
        name = node.input[0]
    return None if node is None else node.op_type


def num_classes(model: onnx.ModelProto) -> int | None:
    """Classes of a classifier: the fixed last dim of its first output, when known."""
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    last = dims[-1] if len(dims) >= 2 else None
    return last.dim_value if last is not None and last.HasField("dim_value") and last.dim_value > 0 else None


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the metric (accuracy unless a custom metric is used) and its cost."""

    accuracy: float
    samples: int
    seconds: float
    label_free: bool
    metric_name: str
    divergence: float | None = None  # from the reference's outputs (``divergence``), when there is a reference


class Evaluator:
    """Scores models on one dataset: top-1 accuracy, agreement with a reference, or a plugin metric.

    With labels: top-1 accuracy. Without labels, the reference (fp32) model's
    outputs, computed once here, stand in: top-1 agreement when its first output
    holds class scores (CLASS_SCORE_OPS: a Softmax ends it, or ``metric`` is
    TOP1, the user's word that it does), else the bounded FIDELITY score of every
    output (argmax agreement means nothing for a detector's boxes, an OCR model's
    sequences or a regressor's scores). A custom ``metric`` (a callable or a
    ``module:function`` spec, as ``load_metric`` takes) receives the model's first
    output and the targets: the labels, else the reference's top-1 predictions
    when its first output holds class scores, else None. With a reference, every
    evaluation also measures the ``divergence`` of the outputs from its outputs
    (cached here), in the same pass: the search's signal that does not saturate.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = None,
        metric: Metric | str | None = None,
        reference: ModelSource | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.reference_outputs: list[list[np.ndarray]] | None = None  # the reference's outputs, per batch
        self._reference = reference  # scored from reference_outputs when evaluated itself: no second run
        self.fidelity_scored = False  # the metric is FIDELITY against reference_outputs
        self.class_output: str | None = None  # "logits" / "probabilities": the first output's class scores
        self.classes = {TOP1: True, FIDELITY: False}.get(metric) if isinstance(metric, str) else None
        if self.classes is not None:
            metric = None
        if self.classes is False and reference is None:
            raise InputError(f"--metric {FIDELITY} scores outputs against a reference; pass --reference (the fp32 model)")
        if isinstance(metric, str):
            self.metric_name, self.metric = metric, load_metric(metric)
        elif metric is not None:
            self.metric_name, self.metric = getattr(metric, "__name__", "custom"), metric
        else:
            self.metric_name, self.metric = (TOP1 if dataset.labels is not None else TOP1_AGREEMENT), None
        self.label_free = dataset.labels is None or self.classes is False
        if reference is None and self.label_free and self.metric is None:
            raise InputError(
                f"{self.dataset.source} has no labels; pass --reference (the fp32 model) to measure "
                "label-free agreement, or add a 'labels' array to the file"
            )
        proto = _as_proto(reference) if reference is not None else None  # read once
        sources = selection_sources(proto) if proto is not None else {}
        # Fidelity compares these tensors too, in place of the outputs selected from them.
        self._extras = list(dict.fromkeys(name for names in sources.values() for name in names))
        self._compared: list[int] | None = None  # which of the outputs and extras fidelity compares
        rows = self._run_reference(reference) if reference is not None else False
        op = _first_output_op(proto) if proto is not None else None
        self.targets = dataset.labels if not self.label_free else self._reference_targets(reference, rows, op)
        if self._extras and self.fidelity_scored:
            self._compare_sources(proto, sources)
        elif self._extras:  # only fidelity reads them
            outputs = len(proto.graph.output)
            self.reference_outputs = [outs[:outputs] for outs in self.reference_outputs]
            self._extras = []
        if self.reference_outputs is not None and self.metric is None and not self.fidelity_scored and rows:
            self.class_output = "probabilities" if op == "Softmax" else "logits"

    def _compare_sources(self, proto: onnx.ModelProto, sources: dict[int, list[str]]) -> None:
        """Compare each selected output's float sources instead of it (the output itself where it has none)."""
        outputs, first = len(proto.graph.output), self.reference_outputs[0]
        ops = "/".join(sorted({node.op_type for node in proto.graph.node if node.op_type in SELECTIONS}))
        position = {name: outputs + j for j, name in enumerate(self._extras)}
        compared = []
        for k, output in enumerate(proto.graph.output):
            floats = [name for name in sources.get(k, []) if first[position[name]].dtype.kind == "f"]
            if floats:
                logger.info("output %r is computed through %s: scoring %s against the tensors it is selected from "
                            "(%s)", output.name, ops, FIDELITY, ", ".join(floats))
            compared += [position[name] for name in floats] or [k]
        self._compared = list(dict.fromkeys(compared))

    def _with_extras(self, model: ModelSource, name: str) -> ModelSource:
        """``model`` with the tensors fidelity compares besides its outputs as outputs too."""
        if not self._extras:
            return model
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model) if isinstance(
            model, bytes) else onnx.load(str(model))
        produced = {out for node in proto.graph.node for out in node.output}
        missing = [extra for extra in self._extras if extra not in produced]
        if missing:
            raise InputError(f"{name} does not compute {missing[0]!r}, a tensor that the reference's output is "
                             "selected from (by a TopK / NonMaxSuppression) and the label-free score compares; "
                             "pass --metric")
        extended = onnx.ModelProto()
        extended.CopyFrom(proto)
        extended.graph.output.extend(onnx.ValueInfoProto(name=extra) for extra in self._extras)
        return extended

    def _run_reference(self, reference: ModelSource) -> bool:
        """Cache the reference's outputs (and extras); whether its first output is one row of class scores
        per sample (at least two: argmax over one score is always 0)."""
        session = make_session(self._with_extras(reference, "the reference model"), "the reference model")
        self.dataset.check_specs(session_specs(session), "the reference model")
        self.reference_outputs = run_batches(session, self.dataset, self.batch_size)
        self._reference_batch = batch_size_for(session, self.dataset, self.batch_size)
        firsts = [outs[0] for outs in self.reference_outputs]
        return sample_axis(firsts, len(self.dataset)) == 0 and all(
            b.ndim == 2 and b.shape[1] > 1 and b.dtype.kind == "f" for b in firsts)

    def _reference_targets(self, reference: ModelSource | None, rows: bool, op: str | None) -> np.ndarray | None:
        if reference is None:
            return None
        firsts = [outs[0] for outs in self.reference_outputs]
        classes = self.classes if self.classes is not None else op in CLASS_SCORE_OPS
        if classes and not rows and self.classes:
            raise InputError(
                f"--metric {TOP1} says the first output holds class scores, but it has shape "
                f"{list(firsts[0].shape)} per batch, not one row of scores per sample; use another --metric"
            )
        if classes and rows:
            targets = np.concatenate(firsts).argmax(-1)
            logger.info("reference predictions cached for %d samples (label-free mode)", len(targets))
            return targets
        if self.metric is None:
            self.metric_name, self.fidelity_scored = FIDELITY, True
            logger.info("the reference's outputs are not class logits: scoring %s against them", FIDELITY)
        return None

    def evaluate(self, model: ModelSource | ort.InferenceSession, name: str = "the model") -> EvalResult:
        """Score ``model``; ``seconds`` covers session creation, inference and the metric."""
        start = time.perf_counter()
        if model is self._reference and self.reference_outputs is not None:
            batch, batches = self._reference_batch, self.reference_outputs  # the same model and data: cached
        else:
            session = model if isinstance(model, ort.InferenceSession) else make_session(self._with_extras(model, name),
                                                                                         name)
            if self._extras and session is model:
                raise InputError(f"{name} is a session, whose outputs cannot be extended to the tensors the "
                                 "label-free score compares (its reference selects with TopK / NonMaxSuppression); "
                                 "pass the model itself")
            self.dataset.check_specs(session_specs(session), name)
            batch, batches = batch_size_for(session, self.dataset, self.batch_size), run_batches(session, self.dataset,
                                                                                                 self.batch_size)
        compared, reference = None, self.reference_outputs
        if self.fidelity_scored:  # one comparison of every output serves the score and the divergence
            if self._compared is not None:
                batches, reference = ([[outs[k] for k in self._compared] for outs in runs]
                                      for runs in (batches, reference))
            compared = _compare(batches, reference)
            score = fidelity(batches, reference, compared)
        else:
            score = self._score(_first_output(batches, self.dataset, batch), name)
        moved = None if reference is None else divergence(batches, reference, self.class_output, compared)
        seconds = time.perf_counter() - start
        logger.debug("%s: %s %.4f on %d samples in %.3f s", name, self.metric_name, score, len(self.dataset), seconds)
        return EvalResult(score, len(self.dataset), seconds, self.label_free, self.metric_name, moved)

    def _score(self, outputs: np.ndarray, name: str) -> float:
        if self.metric is not None:
            value = self.metric(outputs, self.targets)
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                raise InputError(f"--metric {self.metric_name} returned {value!r}; it must return a finite float")
            return float(value)
        top1 = outputs.argmax(-1)
        if top1.shape != self.targets.shape:
            raise InputError(
                f"{name}'s first output has shape {list(outputs.shape)}, so its top-1 predictions do not "
                f"line up with {len(self.targets)} targets; pass --metric for this kind of output"
            )
        return float(np.mean(top1 == self.targets))


def _as_proto(model: ModelSource) -> onnx.ModelProto:
    """The graph of a model given any way make_session takes (weights are not needed to read it)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model), load_external_data=False)


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    return fixed_batch(session_specs(session))
