"""Apply a precision policy to a prepared model: calibrate once, export many, fine-tune.

``Quantizer`` is the fast path the search calls hundreds of times: it holds the
calibration and the caches of quantized weights and codebooks, so a new policy
costs a graph rewrite (plus the caller's ONNX Runtime evaluation). Each export
builds a stateless quantize pass over those caches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx

from haqc import __version__
from haqc.capabilities import Capabilities
from haqc.data import Dataset, fixed_batch, load_dataset
from haqc.errors import InputError
from haqc.evaluation import EvalResult, Evaluator, num_classes
from haqc.executor import unsupported_ops
from haqc.finetune import FinetuneConfig, Tuned, build_simulation, default_epochs, finetune, trained_part
from haqc.layers import Layer
from haqc.passes.calibrate import Calibration, calibrate
from haqc.passes.exporters import Export, ExportContext
from haqc.passes.quantize_linear import LinearQuantize, QuantizedWeight, handles as linear_handles
from haqc.passes.qonnx import ToQONNX
from haqc.policy import Policy, policy_to_json
from haqc.prepared import Prepared, input_specs
from haqc.progress import progress_bar
from haqc.precision import Option
from haqc.search.score import Score
from haqc.settings import DataSource, QuantizeOptions

logger = logging.getLogger(__name__)


def needs_calibration(options: Iterable[Option]) -> bool:
    """Whether any of ``options`` quantizes an activation with a calibrated range."""
    return any(o.calibrated_input for o in options)


def calibrate_model(prepared: Prepared, calib: Dataset | None, options: QuantizeOptions,
                    needed: bool = True) -> Calibration | None:
    """One pass of ``calib`` through ONNX Runtime: the activation statistics static integer
    activations need (None when ``needed`` is False: no option calibrates anything)."""
    if not needed:
        return None
    if calib is None:
        raise InputError("quantizing activations needs calibration data; pass `calib_data` (an .npz or arrays)")
    fixed = fixed_batch(input_specs(prepared.model))
    batch = fixed or options.calib_batch_size
    # A fixed-batch model cannot take the last, partial batch: calibrate on full ones.
    feeds = (f for f, _ in calib.batches(batch) if not fixed or len(next(iter(f.values()))) == fixed)
    count = len(calib) // batch if fixed else -(-len(calib) // batch)
    with progress_bar(count, "calibration", unit="batch", iterable=feeds) as counted:
        return calibrate(prepared.model, prepared.layers, counted, options.clip_method)


class Quantizer:
    """Policy -> quantized ONNX model for one prepared model, with every reusable piece cached."""

    def __init__(self, prepared: Prepared, calibration: Calibration | None, options: QuantizeOptions) -> None:
        self.prepared = prepared
        self.options = options
        self.calibration = calibration
        self._caches: dict[str, dict] = {}  # each exporter's, for the prepared model's weights

    @classmethod
    def calibrated(cls, prepared: Prepared, calib: Dataset | None, options: QuantizeOptions) -> Quantizer:
        """Calibrate on ``calib`` (when given), then build the quantizer."""
        return cls(prepared, calibrate_model(prepared, calib, options, needed=calib is not None), options)

    @property
    def layers(self) -> list[Layer]:
        return self.prepared.layers

    def quantize_pass(self, policy: Policy, tuned: Tuned | None = None, packed: bool = True) -> Export:
        """The pass that writes ``policy`` (for the prepared model, or for a fine-tuned one, whose
        weights are new: no cache, and the scales and clips it trained under)."""
        context = ExportContext(self.layers, self.calibration, per_channel=self.options.per_channel, packed=packed,
                                capabilities=self.options.capabilities, seed=self.options.seed, caches=self._caches)
        if tuned is not None:
            context = dataclasses.replace(context, caches={}, weight_scales=tuned.weight_scales,
                                          input_clips=tuned.clips)
        return Export(context, policy)

    def export(self, policy: Policy, tuned: Tuned | None = None, packed: bool | None = None) -> onnx.ModelProto:
        """The quantized model for ``policy`` (of the prepared model, or of a fine-tuned one), one
        ONNX Runtime runs: linear weights in INT4 / INT2 containers where ``packed`` (default: the
        ``packed`` format), else INT8 (the same numbers, run as integer kernels; what the search
        evaluates). ``written`` turns it into the output format."""
        packed = self.options.format == "packed" if packed is None else packed
        return self.quantize_pass(policy, tuned, packed)(self.prepared.model if tuned is None else tuned.model)

    def written(self, model: onnx.ModelProto, policy: Policy) -> onnx.ModelProto:
        """``model`` (an ``export``) in the output format: QONNX Quant nodes for ``qonnx``, else as is."""
        if self.options.format != "qonnx":
            return model
        other = next((o for o in policy.values() if o.quantized and not linear_handles(o)), None)
        if other is not None:
            raise InputError(f"the qonnx format holds integer QDQ layers, not {other.name}; write it with "
                             "`format` qdq or packed")
        return ToQONNX(policy)(model)

    def finetune(
        self,
        policy: Policy,
        inputs: dict[str, np.ndarray],
        labels: np.ndarray | None,
        config: FinetuneConfig,
    ) -> onnx.ModelProto | None:
        """Fine-tune ``policy`` under fake quantization; return the re-quantized export (None where
        nothing could be trained: ``finetune``)."""
        simulation = self.simulate(policy, config.trainable_clip)
        tuned = finetune(self.prepared.model, self.layers, simulation, inputs, labels, config,
                         weight_quant=self._weight_rule)
        return None if tuned is None else self.export(policy, tuned)

    def simulate(self, policy: Policy, trainable_clip: bool = False):
        """The torch fake-quant simulation of ``policy`` (what fine-tuning trains): the quantize
        pass's own parameters for it, applied in torch."""
        plan = self.quantize_pass(policy).plan(self.prepared.model)
        return build_simulation(self.prepared.model, self.layers, plan, trainable_clip=trainable_clip)

    def _weight_rule(self, layer: Layer, array: np.ndarray, bits: int, levels: int) -> QuantizedWeight:
        """How the integer QDQ exporter quantizes weights it has not seen (fine-tuned ones), uncached."""
        return LinearQuantize(self.layers, self.calibration, {}, per_channel=self.options.per_channel,
                              capabilities=self.options.capabilities).weight_quant(layer, array, bits, levels)


def load_data(source: DataSource | Dataset | None, prepared: Prepared, role: str,
              classes: bool = True) -> Dataset | None:
    """Load an .npz (or arrays by input name) for ``prepared``'s inputs; None when none was given.
    ``classes``: labels are class indices of the first output (False when a metric reads them)."""
    if source is None or isinstance(source, Dataset):
        return source
    return load_dataset(source, input_specs(prepared.model), role=role,
                        num_classes=num_classes(prepared.model) if classes else None)


@dataclass(frozen=True)
class RunData:
    """The datasets of a quantize / compress run, checked against each other, and the fine-tune epochs."""

    val: Dataset | None
    calib: Dataset | None  # calib_data, else the validation set
    train: Dataset | None
    epochs: int  # default: finetune.default_epochs with training data, else 0


def load_run_data(prepared: Prepared, data: DataSource | None, calib_data: DataSource | None,
                  train_data: DataSource | None, finetune_epochs: int | None, classes: bool = True) -> RunData:
    """Load ``data``, ``calib_data`` (default: the same set, loaded once) and ``train_data``."""
    val = load_data(data, prepared, "`data`", classes)
    calib = load_data(calib_data, prepared, "`calib_data`", classes) if calib_data is not None else val
    train = load_data(train_data, prepared, "`train_data`", classes)
    sets = [d for d in dict.fromkeys((val, calib, train)) if d is not None]
    for other in sets[1:]:
        sets[0].check_compatible(other)
    epochs = finetune_epochs if finetune_epochs is not None else (default_epochs(len(train)) if train is not None else 0)
    if epochs and train is None:
        raise InputError("`finetune_epochs` needs `train_data` (an .npz or arrays)")
    untrainable = unsupported_ops(trained_part(prepared.model).model.graph) if train is not None else None
    if untrainable is not None:  # before any work: a search must not end in an error it could not avoid
        logger.warning("fine-tuning skipped: haqc's PyTorch executor does not run the model's %s, so the "
                       "quantized weights are written as calibrated", untrainable)
        train, epochs = None, 0
    return RunData(val, calib, train, epochs)


def keep_better(evaluator: Evaluator, quantized: onnx.ModelProto, accuracy: float,
                tuned: onnx.ModelProto) -> tuple[onnx.ModelProto, EvalResult]:
    """The model to keep (fine-tuned weights only if they score no worse than ``accuracy``) and the
    fine-tuned model's evaluation."""
    result = evaluator.evaluate(tuned, "the fine-tuned model")
    if result.accuracy >= accuracy:
        return tuned, result
    logger.warning("fine-tuning lowered %s (%.4f -> %.4f); keeping the un-tuned weights", result.metric_name, accuracy,
                   result.accuracy)
    return quantized, result


def finetune_export(quantizer: Quantizer, policy: Policy, train: Dataset,
                    config: FinetuneConfig) -> onnx.ModelProto | None:
    """Fine-tune ``policy`` on ``train`` (labels, else distillation from the fp32 model) and re-export
    (None where nothing could be trained)."""
    return quantizer.finetune(policy, train.inputs, train.labels, config)


@dataclass(frozen=True)
class CandidateScorer:
    """A search candidate's score: export the policy (optionally fine-tune it a few steps), evaluate.

    Everything it holds pickles, so it is also the recipe a parallel worker builds its state from
    once (the prepared model, the calibration, the evaluator with its data); its weight caches
    then fill in that worker.
    """

    quantizer: Quantizer
    evaluator: Evaluator
    train: Dataset | None = None
    finetune: FinetuneConfig | None = None  # with ``train``: fine-tune each candidate before scoring it

    def __call__(self, policy: Policy) -> Score:
        candidate = None
        if self.finetune is not None:
            candidate = finetune_export(self.quantizer, policy, self.train, self.finetune)
        if candidate is None:  # unpacked: the same numbers, run as ONNX Runtime integer kernels
            candidate = self.quantizer.export(policy, packed=False)
        result = self.evaluator.evaluate(candidate, "the quantized model")
        return Score(result.accuracy, result.divergence)

    def setup(self) -> str:
        """A digest of everything a candidate's score depends on (haqc's version, the prepared model,
        the quantization settings and calibration, the evaluation data and metric, the candidates'
        fine-tune), so stored scores are reused only where they would come out the same."""
        digest = hashlib.sha256()

        def add(*parts: object) -> None:
            for part in parts:
                digest.update(part if isinstance(part, bytes) else repr(part).encode())

        def add_data(dataset: Dataset) -> None:
            for name, array in sorted(dataset.inputs.items()):
                add(name, array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes())
            add(None if dataset.labels is None else dataset.labels.tobytes())

        add(__version__, self.quantizer.prepared.model.SerializeToString(deterministic=True),
            dataclasses.astuple(self.quantizer.options))
        calibration = self.quantizer.calibration
        if calibration is not None:
            add(calibration.method)
            for name, stats in sorted(calibration.stats.items()):
                add(name, stats.minimum, stats.maximum, stats.absmax, stats.hist_range, stats.hist.tobytes())
        add_data(self.evaluator.dataset)
        add(self.evaluator.metric_name, self.evaluator.batch_size, self.evaluator.fidelity_scored, self.evaluator.class_output)
        if self.finetune is not None and self.train is not None:
            add(dataclasses.astuple(self.finetune))
            add_data(self.train)
        return digest.hexdigest()


@dataclass(frozen=True)
class Scores:
    """One evaluation, as ``haqc quantize`` reports it."""

    accuracy: float
    samples: int
    seconds: float
    label_free: bool
    metric: str  # the signal ``accuracy`` is: top1, top1-agreement, sqnr-fidelity or the user's metric

    @classmethod
    def of(cls, result: EvalResult) -> Scores:
        return cls(result.accuracy, result.samples, result.seconds, result.label_free, result.metric_name)


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize`` wrote and measured; ``kept`` says which weights the output holds."""

    model: onnx.ModelProto = field(repr=False)
    source: str
    output: str | None
    policy: Policy
    fp32: Scores | None = None
    quantized: Scores | None = None
    finetuned: Scores | None = None
    kept: str | None = None  # "finetuned" or "quantized" when both were evaluated
    size_mb: float | None = None  # of the written file
    format: str = "qdq"
    capabilities: Capabilities = Capabilities()  # the target's, which shaped the integers

    @property
    def formats(self) -> list[str]:
        """The options the policy uses, by name (``w8a8``; ``kmeans3, w4a8, fp32`` for a mixed one)."""
        return sorted({option.name for option in self.policy.values()})

    @property
    def layers(self) -> int:
        """How many layers the policy quantizes."""
        return sum(1 for option in self.policy.values() if option.quantized)

    def to_dict(self) -> dict:
        out: dict = {"model": self.source, "output": self.output, "formats": self.formats, "layers": self.layers}
        for key in ("fp32", "quantized", "finetuned"):
            if (scores := getattr(self, key)) is not None:
                out[key] = dict(vars(scores))
        if self.kept is not None:
            out["kept"] = self.kept
        out["size_mb"] = self.size_mb
        out["format"] = self.format
        out["capabilities"] = self.capabilities.to_dict()
        out["policy"] = policy_to_json(self.policy)
        return out
