"""The pipeline: its stages as functions over typed results.

prepare (load, canonicalize, extract) -> cost table -> budget check ->
calibration -> search -> export -> fine-tune -> report. ``haqc.api`` drives
them for each command; scripts may call them one by one.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from typing import Any, Callable, Mapping, Sequence

import onnx

from haqc.costs import CostTable
from haqc.data import Dataset, sample_shapes
from haqc.errors import BudgetMissedError, BudgetUnreachableError, InputError
from haqc.evaluation import EvalResult, Evaluator
from haqc.finetune import FinetuneConfig
from haqc.hw_targets import MeasuredTarget, Target, cost_summary, load_target, parse_budget
from haqc.layers import weight_leaders
from haqc.policy import Policy
from haqc.precision import FP32, Method
from haqc.quantities import format_costs
from haqc.quantizer import DataSource, Quantizer, finetune_export, keep_better
from haqc.report import LayerRow, Report, Result, Scored, SearchSummary, mark_frontier
from haqc.search import SearchProblem, SearchResult, SearchSpace, check_budget, search
from haqc.search.budget import enforce_budget, unpin_remedy, violations
from haqc.search.parallel import Evaluations
from haqc.search.store import Stored, store_path
from haqc.search.score import Reward, ScoreLike, as_score
from haqc.search.strategies import Progress
from haqc.workers import RayPool
from haqc.passes.base import opset_version
from haqc.passes.canonicalize import InferShapes, ProbeShapes, canonicalize
from haqc.passes.extract import extract_layers
from haqc.passes.isolate import LayerSubgraphs
from haqc.passes.load import check_input_shapes, read_model, validate_model, with_input_shapes
from haqc.prepared import InputShapes, Prepared, input_specs

logger = logging.getLogger(__name__)


def prepare(path_or_model: str | os.PathLike | onnx.ModelProto, input_shapes: InputShapes | None = None,
            data: DataSource | None = None) -> Prepared:
    """Load, canonicalize and analyse a model; raises InputError with one clear sentence.

    ``input_shapes`` fix only the copy the layers are analysed on: the canonical
    model keeps the model's own input dims. Inputs they leave out are analysed
    at the sizes of one sample of ``data`` (when given), so a dynamic dim needs
    ``input_shapes`` only where nothing else says its size.
    """
    if isinstance(path_or_model, onnx.ModelProto):
        path, source = Path("<in-memory model>"), validate_model(path_or_model, "the model")
    else:
        path, source = Path(path_or_model), read_model(path_or_model)
    specs = input_specs(source)
    # The data fixes only dims the model leaves dynamic: shapes to fix cost a copy of every weight below.
    dynamic = {name for name, dims, _ in specs if any(not isinstance(d, int) for d in dims)}
    shapes = {**{k: v for k, v in sample_shapes(data, specs).items() if k in dynamic}, **(input_shapes or {})}
    opset = opset_version(source)
    check_input_shapes(source, shapes)
    model = canonicalize(source)
    del source
    # Without shapes to fix, the canonical model (shapes inferred) is the analysis copy: a copy
    # would hold every weight once more (vgg19's inspect peaked at 4.01x its weights with one).
    analysis = ProbeShapes()(InferShapes()(with_input_shapes(model, shapes)) if shapes else model)
    return Prepared(path, model, extract_layers(analysis), shapes, opset)


LAYER_FIELDS = ("name", "op", "kind", "c_in", "c_out", "kernel", "stride", "groups", "feature_size", "params", "macs")


def inspect_summary(prepared: Prepared, targets: Sequence[str | Target] = ()) -> dict:
    """The ``haqc inspect --json`` object: per-layer shapes, MACs, normalized HAQ state, and the
    cost on each of ``targets`` (names or TOML files) at w8a8 / w4a4 / w2a2, or a measured target's
    every option (haqc.hw_targets.summary.cost_summary)."""
    layers = prepared.layers
    rows = []
    for layer, state in zip(layers, prepared.extraction.state_matrix):
        row = {f: getattr(layer, f) for f in LAYER_FIELDS}
        row["kernel"], row["stride"] = list(layer.kernel), list(layer.stride)
        row["state"] = [round(float(v), 6) for v in state]
        rows.append(row)
    summary = {
        "model": str(prepared.path),
        "opset": prepared.source_opset,
        "layers": rows,
        # a weight that layers share (an unrolled LSTM's steps) is one weight
        "totals": {"layers": len(layers), "params": sum({l.weight: l.params for l in layers}.values()),
                   "macs": sum(l.macs for l in layers)},
        "kept_float": kept_float_summary(prepared),
    }
    if targets:
        summary["targets"] = {}
        for spec in targets:
            target = spec if isinstance(spec, Target) else load_target(spec)
            costs = cost_summary(cost_table(prepared, target, "linear"))
            summary["targets"][target.name] = costs["total"]
            summary.setdefault("offered", {})[target.name] = costs["offered"]
            summary.setdefault("capabilities", {})[target.name] = target.capabilities().to_dict()
            for row, per_layer in zip(rows, costs["per_layer"]):
                row.setdefault("targets", {})[target.name] = per_layer
    return summary


def kept_float_summary(prepared: Prepared) -> dict[str, dict]:
    """What stays float, by op: how many nodes and why (inspect's answer to "what is not quantized")."""
    out: dict[str, dict] = {}
    for node in prepared.extraction.kept_float:
        entry = out.setdefault(node.op, {"count": 0, "reason": node.reason})
        entry["count"] += 1
    return out


# The stages of ``haqc compress``, in order: prepare (above) -> cost table -> budget check ->
# calibration -> search -> (measured targets: correction by measurement) -> export -> fine-tune ->
# report. Each takes and returns typed values; ``haqc.api.compress`` drives them.


def cost_table(prepared: Prepared, target: Target, method: Method) -> CostTable:
    """Stage 2: every layer at each option the target offers it (plus fp32 and all-8-bit for the report).
    A measured target times the layers' own subgraphs (cached), built here by a pass. Layers that share
    a weight take one option together and store it once (``CostTable.sharing``)."""
    if isinstance(target, MeasuredTarget):
        subgraphs = LayerSubgraphs(prepared.model, prepared.layers, prepared.input_shapes)
        table = target.measured_table(prepared.layers, subgraphs, method)
    else:
        table = target.cost_table(prepared.layers, method)
    return table.sharing(weight_leaders(prepared.layers))


@dataclass(frozen=True)
class Limits:
    """The budgets as given, resolved to SI limits: ``values`` against the all-8-bit cost in the cost
    table (what the search checks estimates against); on a measured target with a latency budget,
    ``measured_latency`` against the all-8-bit model timed once: the one latency figure that
    measurements are checked against and that the report and messages show."""

    given: dict[str, str]  # quantity -> budget string ("0.5x", "20ms")
    values: dict[str, float]  # quantity -> seconds / joules / bytes
    measured_latency: float | None = None

    def measured(self, w8a8_s: float) -> Limits:
        """The latency budget resolved once against the all-8-bit model's measured ``w8a8_s`` (a
        relative budget; the machine's drift since the cost table cancels), an absolute one as given."""
        if "latency" not in self.given:
            return self
        budget = parse_budget(self.given["latency"], "latency")
        return dataclasses.replace(self, measured_latency=budget.resolve(w8a8_s) if budget.relative
                                   else self.values["latency"])

    @property
    def shown(self) -> dict[str, float]:
        """Each quantity's limit as checked and reported: the measured latency limit where there is one."""
        if self.measured_latency is None:
            return dict(self.values)
        return {**self.values, "latency": self.measured_latency}


def check_budgets(table: CostTable, budgets: Mapping[str, str], method: Method, *, pin_first: bool = True,
                  pin_last: bool = True) -> Limits:
    """Stage 3: parse and resolve ``budgets``; BudgetUnreachableError (exit 3) if even the cheapest
    policy misses one. Runs before any calibration or evaluation, so a hopeless budget costs nothing."""
    if method == "kmeans" and set(budgets) - {"size"}:
        raise InputError("k-means quantization keeps activations in float, so it takes only a size budget")
    parsed = {q: parse_budget(text, q) for q, text in budgets.items()}
    reference = table.policy_cost(table.reference(method))
    values = {q: b.resolve(reference.get(q)) for q, b in parsed.items()}
    check_budget(table, values, SearchSpace.build(table, pin_first, pin_last))
    return Limits(dict(budgets), values)


# Multiply-accumulates one search evaluation may cost (the model's MACs per sample times the samples
# scored) before the search scores a subset of the validation data: about 1.5 s of int8 inference on
# two cores. Sized by the model, not by a clock, so the subset is the same on every machine. The
# models of the quality benchmarks stay under it (the example: 5 GMACs for 1,000 digits); light
# resnet50 on 256 images (1 TMAC) is scored on 48 of them: its default compress took 4.4 minutes
# here, where the search alone would take about 21 on every image (benchmarks/RESULTS.md, section 8).
SEARCH_MACS = 200e9
MIN_SEARCH_SAMPLES = 32  # fewer would rank candidates by a handful of samples


def search_samples(prepared: Prepared, available: int, requested: int | None = None) -> int:
    """How many validation samples the search scores each candidate on: ``requested`` (at most
    ``available``), else as many as SEARCH_MACS allows, at least MIN_SEARCH_SAMPLES."""
    if requested is not None:
        return min(requested, available)
    macs = sum(layer.macs for layer in prepared.layers)
    affordable = int(SEARCH_MACS // macs) if macs > 0 else available
    return min(available, max(affordable, MIN_SEARCH_SAMPLES))


def search_policy(prepared: Prepared, table: CostTable, limits: Limits, score: Callable[[Policy], ScoreLike],
                  fp32_score: float, *, strategy: str, episodes: int, seed: int, pin_first: bool, pin_last: bool,
                  reward_lambda: float, reward: Reward, strategy_config: Any, workdir: str | os.PathLike | None,
                  resume: bool,
                  progress: Progress | None = None, workers: int = 1,
                  ray_address: str | None = None, setup: str | None = None) -> SearchResult:
    """Stage 5: search a policy that meets ``limits``, scoring candidates with ``score``: in this
    process, or (``workers`` > 1 or a ``ray_address``) in a pool of Ray workers (haqc.workers).
    With a ``workdir`` and the ``setup`` digest of what ``score`` depends on, scores are kept in the
    workdir and reused by later searches there (haqc.search.store)."""
    problem = SearchProblem(
        layer_names=[l.name for l in prepared.layers],
        state_matrix=prepared.extraction.state_matrix,
        costs=table,
        limits=limits.values,
        evaluate=score,
        fp32_accuracy=fp32_score,
        pin_first=pin_first,
        pin_last=pin_last,
        reward_lambda=reward_lambda,
        reward=reward,
    )
    run = partial(search, strategy=strategy, episodes=episodes, seed=seed, config=strategy_config, workdir=workdir,
                  resume=resume, progress=progress)
    if workers == 1 and ray_address is None:
        return _search_stored(run, problem, problem.evaluations, workdir, setup)
    with RayPool(score, workers, ray_address) as pool:
        return _search_stored(run, problem, pool, workdir, setup)


def pick_finalist(table: CostTable, result: SearchResult, tuned: Callable[[Policy], ScoreLike], finalists: int,
                  limits: Mapping[str, float], *, pin_first: bool, pin_last: bool) -> SearchResult:
    """Stage 5a: HAQ's reward (the accuracy after a short fine-tune) for the candidates that can matter.
    The ``finalists`` best distinct policies of the search by reward that meet ``limits`` are each scored
    by ``tuned`` (a short fine-tune, then evaluation); the best after it becomes the result, with its
    score before fine-tuning as the result's accuracy (what the search saw). The ranking before
    fine-tuning does not predict the one after it at tight budgets (benchmarks/RESULTS.md)."""
    space = SearchSpace.build(table, pin_first, pin_last)
    ranked = sorted((h for h in result.history if not violations(h["costs"], limits)), key=lambda h: -h["reward"])
    chosen = list({tuple(h["columns"]): h for h in ranked}.values())[:finalists]
    if len(chosen) < 2:
        return result
    trials = []
    for h in chosen:
        policy = dict(zip(table.layer_names, space.options(h["columns"])))
        after = as_score(tuned(policy)).metric
        trials.append({"columns": list(h["columns"]), "options": [o.name for o in policy.values()],
                       "accuracy": h["accuracy"], "tuned": after, "policy": policy, "costs": h["costs"]})
        logger.info("finalist %d of %d: %.4f before a short fine-tune, %.4f after it",
                    len(trials), len(chosen), h["accuracy"], after)
    best = max(trials, key=lambda t: t["tuned"])  # ties: the better reward, which came first
    return dataclasses.replace(result, policy=best["policy"], accuracy=best["accuracy"], costs=best["costs"],
                               finalists=[{k: t[k] for k in ("options", "accuracy", "tuned")} for t in trials])


def _search_stored(run: Callable[[SearchProblem], SearchResult], problem: SearchProblem, evaluations: Evaluations,
                   workdir: str | os.PathLike | None, setup: str | None) -> SearchResult:
    """``run`` the search over ``evaluations``, through the workdir's score file when there is a setup."""
    if workdir is not None and setup is not None:
        evaluations = Stored(evaluations, store_path(workdir, setup), setup)
    result = run(dataclasses.replace(problem, parallel=evaluations))
    if isinstance(evaluations, Stored) and evaluations.reused:
        logger.info("%d of the %d policies scored were read from %s", evaluations.reused, result.evaluations,
                    evaluations.path)
        result = dataclasses.replace(result, stored=evaluations.reused)
    return result


@dataclass(frozen=True)
class Exported:
    """Stages 6-7: the model to write and its scores before and after fine-tuning."""

    model: onnx.ModelProto
    accuracy: float  # of ``model``
    searched: float  # the searched policy as calibrated
    finetuned: float | None  # None: no fine-tuning ran


def export_and_finetune(quantizer: Quantizer, policy: Policy, final: onnx.ModelProto, searched: float,
                        evaluator: Evaluator, train: Dataset | None, finetune: FinetuneConfig | None) -> Exported:
    """Stage 7 (fine-tune) of ``final``, ``policy``'s export scoring ``searched``: the fine-tuned weights
    are kept only if they score no worse."""
    if finetune is None or train is None:
        return Exported(final, searched, searched, None)
    tuned = finetune_export(quantizer, policy, train, finetune)
    if tuned is None:
        return Exported(final, searched, searched, None)
    kept, tuned_result = keep_better(evaluator, final, searched, tuned)
    return Exported(kept, tuned_result.accuracy if kept is tuned else searched, searched, tuned_result.accuracy)


# How many times a searched policy is lowered further when its measured latency misses the budget.
MEASURED_CORRECTIONS = 3


def correct_by_measurement(prepared: Prepared, target: Target, table: CostTable, limits: Limits,
                           result: SearchResult, quantizer: Quantizer, reference: Policy, w8a8_s: float,
                           score: Callable[[Policy], ScoreLike], *, pin_first: bool,
                           pin_last: bool) -> tuple[SearchResult, float]:
    """Stage 5b, on a measured target: time the searched policy's model (seconds, returned with the
    result). While it misses ``limits.measured_latency``, tighten the search's limit by how far the
    estimate fell short and lower the policy HAQ's way until its estimate fits that (then score it):
    the cost table cannot see every effect of a mixed policy (docs/cost_models.md); the runtime can.
    Under a latency budget, a result measured slower than the all-8-bit ``reference`` (``w8a8_s``)
    is never kept: that model is faster and meets whatever budget the result meets."""
    names = [l.name for l in prepared.layers]
    space = SearchSpace.build(table, pin_first, pin_last)
    columns = table.indices([result.policy[n] for n in names])
    measured, = measure_models(prepared, target, [quantizer.export(result.policy)])
    limit = limits.measured_latency
    tightened = dict(limits.values)
    for _ in range(MEASURED_CORRECTIONS if limit is not None else 0):
        if not violations({"latency": measured}, {"latency": limit}):
            break
        # Measured over its limit, estimated under its own: the estimate's shortfall, as a factor.
        shortfall = (measured / limit) * (limits.values["latency"] / table.cost(columns)["latency"])
        tightened["latency"] = limits.values["latency"] / shortfall
        try:
            columns = enforce_budget(table, tightened, space, columns)
        except BudgetUnreachableError:
            logger.info("measured %.4g ms against a budget of %.4g ms, and no cheaper policy is left",
                        1e3 * measured, 1e3 * limit)
            break
        policy = dict(zip(names, space.options(columns)))
        logger.info("measured %.4g ms against a budget of %.4g ms: policy lowered to an estimate of %.4g ms",
                    1e3 * measured, 1e3 * limit, 1e3 * table.cost(columns)["latency"])
        result = dataclasses.replace(result, policy=policy, accuracy=as_score(score(policy)).metric, costs=table.cost(columns))
        measured, = measure_models(prepared, target, [quantizer.export(result.policy)])
    reference_costs = table.policy_cost([reference[n] for n in names])
    others = {q: v for q, v in limits.values.items() if q != "latency"}
    if limit is not None and measured > w8a8_s and not violations(reference_costs, others):
        logger.warning("the searched policy measured %.4g ms, slower than the all-8-bit model's %.4g ms: the result "
                       "is the all-8-bit policy", 1e3 * measured, 1e3 * w8a8_s)
        result = dataclasses.replace(result, policy=dict(reference), accuracy=as_score(score(reference)).metric, costs=reference_costs)
        measured = w8a8_s
    return result, measured


def measure_models(prepared: Prepared, target: Target, models: Sequence[onnx.ModelProto]) -> list[float] | None:
    """Seconds per batch of each of ``models`` on a measured target (interleaved medians, on the
    same seeded inputs the target's whole-model fit used); None for a modelled target."""
    if not isinstance(target, MeasuredTarget):
        return None
    feeds = LayerSubgraphs(prepared.model, prepared.layers, prepared.input_shapes).feeds(target.batch)
    return target.time_models(models, feeds)


def build_report(*, source: str, target: Target, spec: str, table: CostTable, limits: Limits, prepared: Prepared,
                 fp32: EvalResult, w8a8_score: float, method: Method, result: SearchResult, exported: Exported,
                 seed: int, finetune_epochs: int, seconds: float, workers: int = 1,
                 measured: Sequence[float] | None = None, output_format: str = "qdq",
                 reward: str = "metric", search_samples: int | None = None) -> Report:
    """Stage 8: the report, every estimated cost read off ``table``; ``measured``: the fp32, w8a8
    and result models' latencies on a measured target, which the result's verdict reads instead of
    its estimated latency."""
    layers = prepared.layers
    n = len(layers)
    policy = result.policy
    options = [policy[l.name] for l in layers]
    columns = table.indices(options)
    fp32_measured, w8a8_measured, result_measured = measured if measured is not None else (None, None, None)
    costs = table.cost(columns)
    return Report(
        model=source,
        target={"name": getattr(target, "name", spec), "spec": spec, "batch": target.batch,
                "capabilities": target.capabilities().to_dict()},
        budgets=dict(limits.given),
        limits=limits.shown,
        fp32=Scored(fp32.accuracy, table.policy_cost([FP32] * n), fp32_measured),
        w8a8=Scored(w8a8_score, table.policy_cost(table.reference(method)), w8a8_measured),
        result=Result(exported.accuracy, costs, result_measured, accuracy_before_finetune=exported.searched,
                      accuracy_finetuned=exported.finetuned,
                      meets_budget=not violations(checked_costs(costs, result_measured), limits.shown)),
        policy=policy,
        layers=[LayerRow(l.name, l.kind, o.w_bits, o.a_bits, table.layer_cost(i, int(c)))
                for i, (l, o, c) in enumerate(zip(layers, options, columns))],
        search=SearchSummary(result.strategy, result.episodes, result.best_episode, round(result.seconds, 3),
                             result.evaluations, seed, method, finetune_epochs, workers, result.stored, reward,
                             result.finalists, search_samples),
        history=result.history,
        evaluated=mark_frontier([{"accuracy": e["accuracy"], "divergence": e["divergence"], "costs": e["costs"]}
                                 for e in result.evaluated], list(limits.values)),
        label_free=fp32.label_free,
        signal=fp32.metric_name,
        seconds=seconds,
        format=output_format,
    )


def checked_costs(costs: Mapping[str, float], measured_latency: float | None) -> dict[str, float]:
    """What a result's budget verdict reads: its estimated costs, its measured latency where timed."""
    return {**costs, **({"latency": measured_latency} if measured_latency is not None else {})}


def budget_miss(report: Report, table: CostTable, written: Sequence[str], *, pin_first: bool,
                pin_last: bool) -> BudgetMissedError | None:
    """Stage 9: the error (exit 7) for a result that misses its budget as measured, raised once the
    ``written`` files are (so the miss can be looked at); unpinning advised only where it would lower
    the cost enough."""
    result = report.result
    checked = checked_costs(result.costs, result.measured_latency_s)
    missed = violations(checked, report.limits)
    if not missed:
        return None
    parts = []
    for q in missed:
        cost, limit = format_costs(q, checked[q], report.limits[q])
        timed = "measured " if q == "latency" and result.measured_latency_s is not None else ""
        parts.append(f"the result's {timed}{q} {cost} misses the budget {limit} ({report.budgets[q]})")
    # The limits in the cost table's terms: scaled by how far the result's estimate is from what it measured.
    estimated = {q: report.limits[q] * result.costs[q] / checked[q] for q in report.limits}
    remedy = unpin_remedy(table, estimated, SearchSpace.build(table, pin_first, pin_last))
    files = f"; wrote {', '.join(written)}" if written else ""
    return BudgetMissedError(f"{'; '.join(parts)}{files}; {remedy}")
