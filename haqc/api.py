"""The Python API: ``inspect``, ``quantize``, ``evaluate`` and ``compress``, as ``import haqc`` gives them.

Each takes a model as a path or an ``onnx.ModelProto`` and data as an .npz
path or a dict of numpy arrays, and returns a typed result. Every default
lives in the config dataclasses of haqc.settings (the CLI builds its options
from them without importing this module's onnx and torch). Errors name the
API's parameters in backticks (`calib_data`); the CLI says its flags instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, Union

import onnx

from haqc.errors import AccuracyDropError, InputError, library_errors
from haqc.data import load_dataset
from haqc.evaluation import EvalResult, Evaluator, num_classes
from haqc.hw_targets import Target, load_target
from haqc.io import atomic_write_text, check_output_path, check_plot_path, save_model
from haqc.passes.load import check_input_shapes, read_model, validate_model
from haqc.prepared import InputShapes, input_specs
from haqc.pipeline import (budget_miss, build_report, check_budgets, correct_by_measurement, cost_table,
                           export_and_finetune, inspect_summary, measure_models, pick_finalist, prepare,
                           search_policy, search_samples)
from haqc.policy import load_policy, uniform_policy
from haqc.progress import Stages
from haqc.precision import parse_option
from haqc.quantizer import (CandidateScorer, QuantizeResult, Quantizer, Scores, calibrate_model, finetune_export,
                            needs_calibration, keep_better, load_run_data)
from haqc.report import Report
from haqc.search import SearchResult, load_strategy
from haqc.search.strategies import Progress
from haqc.settings import CompressConfig, DataSource, Metric, QuantizeConfig, custom_metric
from haqc.workers import require_ray

logger = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, onnx.ModelProto]
C = TypeVar("C")


@dataclass(frozen=True)
class CompressResult:
    """The exported model, its report, the search that found its policy, and where each file went."""

    report: Report
    model: onnx.ModelProto = field(repr=False)
    search: SearchResult = field(repr=False)
    files: dict[str, str] = field(default_factory=dict)  # what -> path: model, report, plot, search state

    def to_json(self) -> str:
        return self.report.to_json()


def _configure(cls: type[C], config: C | None, overrides: Mapping[str, Any]) -> C:
    """``config`` (or the defaults) with keyword ``overrides``; an unknown keyword is an InputError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(f"unknown parameter `{unknown[0]}`; {cls.__name__} takes: {', '.join(sorted(names))}")
    return dataclasses.replace(config if config is not None else cls(), **overrides)


def _source_name(model: ModelSource) -> str:
    return "<in-memory model>" if isinstance(model, onnx.ModelProto) else str(model)


def _paths(*sources: Any) -> tuple:
    """The sources that are files (outputs must not overwrite them)."""
    return tuple(s for s in sources if isinstance(s, (str, os.PathLike)))


@library_errors
def inspect(model: ModelSource, *, input_shapes: InputShapes | None = None, targets: Sequence[str] = ()) -> dict:
    """The layers of ``model`` with shapes, MACs and HAQ state, and their costs on ``targets``
    (the ``haqc inspect --json`` object)."""
    return inspect_summary(prepare(model, input_shapes), targets)


@library_errors
def evaluate(model: ModelSource, data: DataSource, *, reference: ModelSource | None = None,
             metric: str | Metric | None = None, batch_size: int | None = None,
             input_shapes: InputShapes | None = None) -> EvalResult:
    """Score ``model`` exactly as given (no canonicalization, so a quantized model is scored as shipped,
    at the data's own shapes): top-1 with labels, else agreement with (or, for outputs that are not
    class logits, fidelity to) ``reference``, or ``metric``. ``input_shapes`` are only checked."""
    proto = _as_given(model)
    if input_shapes:
        check_input_shapes(proto, input_shapes)
    classes = None if custom_metric(metric) else num_classes(proto)
    dataset = load_dataset(data, input_specs(proto), role="`data`", num_classes=classes)
    ref = _as_given(reference) if reference is not None and dataset.labels is None else None
    return Evaluator(dataset, batch_size, metric, ref).evaluate(proto, _source_name(model))


def _as_given(model: ModelSource) -> onnx.ModelProto:
    return validate_model(model, "the model") if isinstance(model, onnx.ModelProto) else read_model(model)


@library_errors
def quantize(model: ModelSource, config: QuantizeConfig | None = None, *, output: str | os.PathLike | None = None,
             force: bool = False, **overrides: Any) -> QuantizeResult:
    """Apply one precision to every layer (``bits``) or a stored ``policy``, optionally fine-tune, and
    write ``output`` (when given). With ``data``, the fp32, quantized and fine-tuned models are scored
    and the fine-tuned weights kept only if they score no worse."""
    config = _configure(QuantizeConfig, config, overrides)
    if (config.bits is None) == (config.policy is None):
        raise InputError("give exactly one of `bits` (e.g. w4a8) or `policy` (a policy or report JSON file)")
    out_path = check_output_path(output, _paths(model), force) if output is not None else None
    prepared = prepare(model, config.input_shapes, data=config.shapes_from())
    if config.bits is not None:
        policy = uniform_policy(prepared.layers, parse_option(config.bits))
    else:
        policy = load_policy(config.policy, prepared.layers)
    run = load_run_data(prepared, config.data, config.calib_data, config.train_data, config.finetune_epochs,
                        classes=not custom_metric(config.metric))
    target = config.target if isinstance(config.target, Target) else load_target(config.target)
    options = config.quantize_options(target)
    quantizer = Quantizer(prepared, calibrate_model(prepared, run.calib, options, needs_calibration(policy.values())),
                          options)
    quantized = quantizer.export(policy)
    evaluator = Evaluator(run.val, reference=prepared.model, metric=config.metric) if run.val is not None else None
    scores: dict[str, Scores] = {}
    kept = None
    if evaluator is not None:
        scores["fp32"] = Scores.of(evaluator.evaluate(prepared.model, "the fp32 model"))
        scores["quantized"] = Scores.of(evaluator.evaluate(quantized, "the quantized model"))
    tuned = finetune_export(quantizer, policy, config.training_set(run), config.finetune(run.epochs)) \
        if run.epochs else None
    if tuned is not None:
        if evaluator is None:
            quantized = tuned
        else:  # with validation data, keep the fine-tuned weights only if they do not score worse
            best, result = keep_better(evaluator, quantized, scores["quantized"].accuracy, tuned)
            scores["finetuned"] = Scores.of(result)
            kept = "finetuned" if best is tuned else "quantized"
            quantized = best
    quantized = quantizer.written(quantized, policy)
    size = None
    if out_path is not None:
        save_model(quantized, out_path)
        size = out_path.stat().st_size / 1e6
    return QuantizeResult(quantized, _source_name(model), None if out_path is None else str(out_path),
                          policy, kept=kept, size_mb=size, format=options.format,
                          capabilities=options.capabilities, **scores)


@library_errors
def compress(model: ModelSource, config: CompressConfig | None = None, *, output: str | os.PathLike | None = None,
             report: str | os.PathLike | None = None, plot: str | os.PathLike | None = None, force: bool = False,
             progress: Progress | None = None, **overrides: Any) -> CompressResult:
    """Search a policy for ``target`` under ``budgets`` and export it; a short driver over the pipeline.
    ``plot`` (.html or .png) draws the report: the accuracy-cost curve, the bits per layer, the reward."""
    config = _configure(CompressConfig, config, overrides)
    if plot is not None:
        check_plot_path(plot)
    for path in (p for p in (output, report, plot) if p is not None):
        check_output_path(path, _paths(model, config.data, config.calib_data, config.train_data), force)
    _check(config)
    stages = Stages()
    prepared = prepare(model, config.input_shapes, data=config.shapes_from())
    target = config.target if isinstance(config.target, Target) else load_target(config.target)
    stages.done("prepare")
    table = cost_table(prepared, target, config.method)
    limits = check_budgets(table, config.budgets, config.method, pin_first=config.pin_first, pin_last=config.pin_last)
    run = load_run_data(prepared, config.data, config.calib_data, config.train_data, config.finetune_epochs,
                        classes=not custom_metric(config.metric))
    stages.done("costs and data")
    options = config.quantize_options(target)
    offered = (o for row in table.options for o in row)
    quantizer = Quantizer(prepared, calibrate_model(prepared, run.calib, options, needs_calibration(offered)), options)
    stages.done("calibrate")
    evaluator = Evaluator(run.val, reference=prepared.model, metric=config.metric)
    fp32 = evaluator.evaluate(prepared.model, "the fp32 model")
    searched_on, search_fp32 = evaluator, fp32.accuracy
    samples = search_samples(prepared, len(run.val), config.search_samples)
    if samples < len(run.val):
        logger.info("the search scores each candidate on %d of the %d validation samples (`search_samples`); "
                    "the report's scores use all of them", samples, len(run.val))
        searched_on = Evaluator(run.val.subset(samples, config.seed), reference=prepared.model, metric=config.metric)
        search_fp32 = searched_on.evaluate(prepared.model, "the fp32 model").accuracy
    stages.done("reference")

    train = config.training_set(run)
    score = CandidateScorer(quantizer, searched_on, train, config.finetune(1, config.search_finetune_steps)
                            if config.search_finetune_steps and train is not None else None)
    start = time.perf_counter()
    result = search_policy(prepared, table, limits, score, search_fp32, strategy=config.strategy,
                           episodes=config.episodes, seed=config.seed, pin_first=config.pin_first,
                           pin_last=config.pin_last, reward_lambda=config.reward_lambda, reward=config.reward, strategy_config=config.strategy_config,
                           workdir=config.workdir, resume=config.resume, progress=progress,
                           workers=config.workers, ray_address=config.ray_address,
                           setup=score.setup() if config.workdir is not None else None)
    if config.finalists > 1 and train is not None:
        tuned = CandidateScorer(quantizer, searched_on, train, config.finetune(1, config.finalist_steps))
        result = pick_finalist(table, result, tuned, config.finalists, limits.values, pin_first=config.pin_first,
                               pin_last=config.pin_last)
    stages.done("search")
    reference = dict(zip(table.layer_names, table.reference(config.method)))
    w8a8_model = quantizer.export(reference)
    measured = measure_models(prepared, target, [prepared.model, w8a8_model])  # None: a modelled target
    if measured is not None:  # each timed once: one fp32, one all-8-bit figure, one latency limit
        limits = limits.measured(measured[1])
        result, result_s = correct_by_measurement(prepared, target, table, limits, result, quantizer, reference,
                                                  measured[1], score, pin_first=config.pin_first,
                                                  pin_last=config.pin_last)
        measured = [*measured, result_s]
        stages.done("measure")
    w8a8_score = evaluator.evaluate(w8a8_model, "the w8a8 model").accuracy
    final = quantizer.export(result.policy)
    if searched_on is not evaluator:  # the search saw a subset: the result's score on every sample
        result = dataclasses.replace(result, accuracy=evaluator.evaluate(final, "the searched model").accuracy)
    stages.done("score w8a8 and result")
    exported = export_and_finetune(quantizer, result.policy, final, result.accuracy, evaluator, train,
                                   config.finetune(run.epochs) if run.epochs else None)
    stages.done("export and fine-tune" if run.epochs else "export")
    built = build_report(source=_source_name(model), target=target, spec=target.name if config.target is target else config.target,
                         table=table, limits=limits,
                         prepared=prepared, fp32=fp32, w8a8_score=w8a8_score, method=config.method, result=result,
                         exported=exported, seed=config.seed, finetune_epochs=run.epochs,
                         seconds=time.perf_counter() - start, workers=config.workers, measured=measured,
                         output_format=options.format, reward=config.reward,
                         search_samples=samples if searched_on is not evaluator else None)
    if output is not None:
        save_model(quantizer.written(exported.model, result.policy), output)
        built = dataclasses.replace(built, output=str(output), output_mb=Path(output).stat().st_size / 1e6)
        stages.done("write model")
    built = dataclasses.replace(built, stages=stages.seconds)
    if report is not None:
        atomic_write_text(report, built.to_json())
    if plot is not None:
        from haqc.plot import write_plot  # matplotlib: imported only when a plot is asked for

        write_plot(built, str(plot))
    files = {what: str(p) for what, p in (("model", output), ("report", report), ("plot", plot),
                                          ("search state", config.workdir)) if p is not None}
    written = [f"{path} ({what})" for what, path in files.items()]
    missed = budget_miss(built, table, written, pin_first=config.pin_first, pin_last=config.pin_last)
    if missed is not None:
        raise missed
    if config.max_accuracy_drop is not None and built.accuracy_drop > config.max_accuracy_drop:
        raise AccuracyDropError(
            f"accuracy dropped {built.accuracy_drop:.2f} points (fp32 {100 * built.fp32.accuracy:.2f}% -> "
            f"{100 * built.result.accuracy:.2f}%), more than `max_accuracy_drop` {config.max_accuracy_drop:g}"
            f"{'; wrote ' + ', '.join(written) if written else ''}; relax the budget or fine-tune longer"
        )
    return CompressResult(built, exported.model, result, files)


def _check(config: CompressConfig) -> None:
    """What compress needs before any work, in the API's terms."""
    if not config.budgets:
        raise InputError("give at least one budget (`budgets`: latency, energy or size, e.g. latency 0.5x)")
    load_strategy(config.strategy)  # an unknown name or a broken plugin: one line before any work
    if config.episodes < 1:
        raise InputError(f"`episodes` must be at least 1, got {config.episodes}")
    if config.workers < 1:
        raise InputError(f"`workers` must be at least 1, got {config.workers}")
    if config.workers > 1 or config.ray_address is not None:
        require_ray()  # before any calibration or evaluation
    if config.data is None:
        raise InputError("compress needs validation data to measure accuracy; pass `data` (an .npz or arrays)")
    if config.search_finetune_steps and config.train_data is None:
        raise InputError("`search_finetune_steps` needs `train_data` (an .npz or arrays)")
    if config.search_samples is not None and config.search_samples < 1:
        raise InputError(f"`search_samples` must be at least 1, got {config.search_samples}")
    if config.finalists < 1 or config.finalist_steps < 1:
        raise InputError(f"`finalists` and `finalist_steps` must be at least 1, got {config.finalists} and "
                         f"{config.finalist_steps}")
    if config.finalists > 1 and config.train_data is None:
        raise InputError("`finalists` above 1 fine-tunes each finalist, so it needs `train_data` (an .npz or arrays)")
