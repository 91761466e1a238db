"""Apply a bitwidth policy to a prepared model: calibrate once, export many, fine-tune.

``Quantizer`` is the fast path the search calls hundreds of times: the
calibration and every quantized weight are cached, so a new policy costs a
graph rewrite (plus the caller's ONNX Runtime evaluation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from haqc.data import Dataset, input_specs, load_dataset
from haqc.errors import InputError
from haqc.evaluate import EvalResult, Evaluator, make_session, num_classes, predictions
from haqc.finetune import DEFAULT_LR, FinetuneConfig, Tuned, build_simulation, finetune
from haqc.io import check_output_path, save_model
from haqc.layers import Layer
from haqc.passes.calibrate import Calibration, ClipMethod, calibrate
from haqc.passes.quantize_kmeans import KMeansQuantize, fit_codebook
from haqc.passes.load import graph_inputs
from haqc.passes.quantize_linear import LinearQuantize
from haqc.pipeline import Prepared, prepare
from haqc.policy import Policy, load_policy, parse_bits, policy_to_json, uniform_policy

logger = logging.getLogger(__name__)

Method = Literal["linear", "kmeans"]
METHODS: tuple[str, ...] = ("linear", "kmeans")
DEFAULT_CLIP_METHOD: ClipMethod = "mse"  # measured best on the example: docs/calibration.md


@dataclass(frozen=True)
class QuantizeOptions:
    method: Method = "linear"
    clip_method: ClipMethod = DEFAULT_CLIP_METHOD
    per_channel: bool = True
    calib_batch_size: int = 256
    seed: int = 0


class Quantizer:
    """Policy -> quantized ONNX model for one prepared model, with every reusable piece cached."""

    def __init__(self, prepared: Prepared, calib: Dataset | None, options: QuantizeOptions) -> None:
        if options.method not in METHODS:
            raise InputError(f"unknown --method {options.method!r}; choose one of: {', '.join(METHODS)}")
        self.prepared = prepared
        self.options = options
        self.calibration: Calibration | None = None
        if options.method == "linear":
            if calib is None:
                raise InputError("linear quantization needs calibration data; pass --calib-data FILE.npz")
            fixed = fixed_batch_size(prepared.model)
            batch = fixed or options.calib_batch_size
            # A fixed-batch model cannot take the last, partial batch: calibrate on full ones.
            feeds = (f for f, _ in calib.batches(batch) if not fixed or len(next(iter(f.values()))) == fixed)
            self.calibration = calibrate(prepared.model, prepared.layers, feeds, options.clip_method)
        self._linear = self._new_linear()
        self._kmeans = KMeansQuantize(prepared.layers, {}, seed=options.seed)

    @property
    def layers(self) -> list[Layer]:
        return self.prepared.layers

    def _new_linear(self, tuned: Tuned | None = None) -> LinearQuantize | None:
        if self.calibration is None:
            return None
        scales, clips = (tuned.weight_scales, tuned.clips) if tuned is not None else (None, None)
        return LinearQuantize(self.prepared.layers, self.calibration, self.options.per_channel,
                              weight_scales=scales, input_clips=clips)

    def export(self, policy: Policy, tuned: Tuned | None = None, packed: bool = True) -> onnx.ModelProto:
        """The quantized model for ``policy`` (of the prepared model, or of a fine-tuned one).

        ``packed=False`` keeps linear weights in INT8 rather than INT4 / INT2: the same numbers
        in a larger file that ONNX Runtime runs as integer kernels, for evaluations that are
        not the final output (the search's).
        """
        base = self.prepared.model if tuned is None else tuned.model
        if self.options.method == "kmeans":
            quantizer = self._kmeans if tuned is None else KMeansQuantize(self.layers, {}, seed=self.options.seed)
            quantizer.policy = policy
            return quantizer(base)
        quantizer = self._linear if tuned is None else self._new_linear(tuned)
        quantizer.packed = packed
        return quantizer.with_policy(policy)(base)

    def finetune(
        self,
        policy: Policy,
        inputs: dict[str, np.ndarray],
        labels: np.ndarray | None,
        config: FinetuneConfig,
        teacher_logits: np.ndarray | None = None,
    ) -> onnx.ModelProto:
        """Fine-tune ``policy`` under fake quantization; return the re-quantized export."""
        simulation = self.simulate(policy, config.trainable_clip)
        tuned = finetune(self.prepared.model, self.layers, simulation, inputs, labels, config, teacher_logits)
        return self.export(policy, tuned)

    def simulate(self, policy: Policy, trainable_clip: bool = False):
        """The torch fake-quant simulation of ``policy`` (what fine-tuning trains)."""
        return build_simulation(
            self.prepared.model,
            self.layers,
            policy,
            method=self.options.method,
            calibration=self.calibration,
            per_channel=self.options.per_channel,
            trainable_clip=trainable_clip,
            codebooks=lambda layer, w, bits: fit_codebook(w, bits, self.options.seed),
        )


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch size a model with a fixed leading input dim accepts; None when it is dynamic."""
    dim = graph_inputs(model)[0].type.tensor_type.shape.dim
    return dim[0].dim_value if dim and dim[0].HasField("dim_value") and dim[0].dim_value > 0 else None


def load_data(path: str | None, prepared: Prepared, role: str) -> Dataset | None:
    """Load an .npz for ``prepared``'s inputs (None when no path was given)."""
    if path is None:
        return None
    return load_dataset(path, input_specs(prepared.model), role=role, num_classes=num_classes(prepared.model))


@dataclass(frozen=True)
class RunData:
    """The datasets of a quantize / compress run, checked against each other, and the fine-tune epochs."""

    val: Dataset | None
    calib: Dataset | None  # --calib-data, else the validation set
    train: Dataset | None
    epochs: int  # default: 1 with training data, else 0


def load_run_data(prepared: Prepared, data: str | None, calib_data: str | None, train_data: str | None,
                  finetune_epochs: int | None) -> RunData:
    """Load ``--data``, ``--calib-data`` (default: the same set, loaded once) and ``--train-data``."""
    val = load_data(data, prepared, "--data")
    calib = load_data(calib_data, prepared, "--calib-data") if calib_data else val
    train = load_data(train_data, prepared, "--train-data")
    sets = [d for d in dict.fromkeys((val, calib, train)) if d is not None]
    for other in sets[1:]:
        sets[0].check_compatible(other)
    epochs = finetune_epochs if finetune_epochs is not None else (1 if train is not None else 0)
    if epochs and train is None:
        raise InputError("--finetune-epochs needs --train-data FILE.npz")
    return RunData(val, calib, train, epochs)


def keep_better(evaluator: Evaluator, quantized: onnx.ModelProto, accuracy: float,
                tuned: onnx.ModelProto) -> tuple[onnx.ModelProto, EvalResult]:
    """The model to keep (fine-tuned weights only if they score no worse than ``accuracy``) and the
    fine-tuned model's evaluation."""
    result = evaluator.evaluate(tuned, "the fine-tuned model")
    if result.accuracy >= accuracy:
        return tuned, result
    logger.warning("fine-tuning lowered top-1 (%.4f -> %.4f); keeping the un-tuned weights", accuracy, result.accuracy)
    return quantized, result


def finetune_export(quantizer: Quantizer, policy: Policy, train: Dataset, config: FinetuneConfig) -> onnx.ModelProto:
    """Fine-tune ``policy`` on ``train`` (labels, else distillation from the fp32 model) and re-export."""
    teacher = None
    if train.labels is None:
        teacher = predictions(make_session(quantizer.prepared.model), train)
    return quantizer.finetune(policy, train.inputs, train.labels, config, teacher_logits=teacher)


def quantize_file(
    model_path: str,
    output: str,
    *,
    bits: str | None = None,
    policy_path: str | None = None,
    options: QuantizeOptions = QuantizeOptions(),
    calib_data: str | None = None,  # default: val_data
    val_data: str | None = None,
    train_data: str | None = None,
    finetune_epochs: int | None = None,
    lr: float = DEFAULT_LR,
    device: str = "cpu",
    trainable_clip: bool = False,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    force: bool = False,
) -> dict:
    """``haqc quantize``: apply a uniform or stored policy, optionally fine-tune, write ``output``."""
    out_path = check_output_path(output, (model_path,), force)
    prepared = prepare(model_path, input_shapes)
    policy = uniform_policy(prepared.layers, parse_bits(bits)) if bits else load_policy(policy_path, prepared.layers)
    run = load_run_data(prepared, val_data, calib_data, train_data, finetune_epochs)
    quantizer = Quantizer(prepared, run.calib, options)
    quantized = quantizer.export(policy)
    summary: dict = {"model": model_path, "output": str(out_path), "method": options.method,
                     "layers": sum(1 for b in policy.values() if b.w_bits is not None or b.a_bits is not None)}
    evaluator = Evaluator(run.val, reference=prepared.model) if run.val is not None else None
    if evaluator is not None:
        summary["fp32"] = _scores(evaluator.evaluate(prepared.model, "the fp32 model"))
        summary["quantized"] = _scores(evaluator.evaluate(quantized, "the quantized model"))
    if run.epochs:
        config = FinetuneConfig(epochs=run.epochs, lr=lr, seed=options.seed, device=device, trainable_clip=trainable_clip)
        tuned = finetune_export(quantizer, policy, run.train, config)
        if evaluator is None:
            quantized = tuned
        else:  # with validation data, keep the fine-tuned weights only if they do not score worse
            kept, result = keep_better(evaluator, quantized, summary["quantized"]["accuracy"], tuned)
            summary["finetuned"] = _scores(result)
            summary["kept"] = "finetuned" if kept is tuned else "quantized"
            quantized = kept
    save_model(quantized, out_path)
    summary["size_mb"] = out_path.stat().st_size / 1e6
    summary["policy"] = policy_to_json(policy)
    return summary


def _scores(result) -> dict:
    return {"accuracy": result.accuracy, "samples": result.samples, "seconds": result.seconds, "label_free": result.label_free}
