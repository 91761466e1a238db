"""``haqc compress``: the HAQ search for a target and budget, then the fine-tuned export and report.

The pipeline: prepare the model, cost every layer on the target, resolve the
budgets against the all-8-bit cost, calibrate once, search (each evaluation
is a cached-weight graph rewrite plus one ONNX Runtime pass over the
validation set), then quantize the best policy, fine-tune it when training
data is given, and write the model and a versioned JSON report.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from haqc.errors import AccuracyDropError, InputError
from haqc.evaluate import Evaluator
from haqc.finetune import DEFAULT_LR, FinetuneConfig
from haqc.hw_targets import load_target, parse_budget
from haqc.hw_targets.base import Target
from haqc.hw_targets.summary import as_units, combine_costs
from haqc.io import atomic_write_text, check_output_path, save_model
from haqc.layers import Layer
from haqc.pipeline import prepare
from haqc.policy import LayerBits, Policy, policy_to_json, uniform_policy
from haqc.quantize import QuantizeOptions, Quantizer, finetune_export, keep_better, load_run_data
from haqc.search import CostTable, DDPGConfig, SearchProblem, SearchResult, format_costs, search

logger = logging.getLogger(__name__)

REPORT_SCHEMA = 1
QUANTITIES = ("latency", "energy", "size")
STRATEGIES = ("ddpg", "uniform", "random", "greedy")


@dataclass(frozen=True)
class CompressConfig:
    """Everything ``haqc compress`` takes besides the model path; defaults are the CLI's."""

    target: str = "edge"
    budgets: dict[str, str] = field(default_factory=dict)  # quantity -> budget string ("0.5x", "20ms")
    data: str | None = None
    calib_data: str | None = None
    train_data: str | None = None
    strategy: str = "ddpg"
    episodes: int = 60
    seed: int = 0
    quantize: QuantizeOptions = QuantizeOptions()
    finetune_epochs: int | None = None
    lr: float = DEFAULT_LR
    device: str = "cpu"
    trainable_clip: bool = False
    pin_first: bool = True
    pin_last: bool = True
    reward_lambda: float = 0.1
    search_finetune_steps: int = 0  # short fine-tune before each episode's evaluation (HAQ's reference did)
    workdir: str | None = None
    resume: bool = False
    max_accuracy_drop: float | None = None  # percentage points
    input_shapes: dict[str, tuple[int, ...]] | None = None
    ddpg: DDPGConfig | None = None

    def finetune(self, epochs: int, max_steps: int | None = None) -> FinetuneConfig:
        """The fine-tuning settings, for the final tune or (``max_steps``) a search candidate's."""
        return FinetuneConfig(epochs=epochs, lr=self.lr, seed=self.seed, device=self.device, max_steps=max_steps,
                              trainable_clip=self.trainable_clip)


@dataclass
class CompressResult:
    report: dict
    model: onnx.ModelProto
    search: SearchResult


def compress(
    model_path: str,
    config: CompressConfig,
    *,
    output: str | None = None,
    report_path: str | None = None,
    force: bool = False,
    progress: Callable[[int, float, dict[str, float]], None] | None = None,
) -> CompressResult:
    """Search a policy for ``config.target`` under ``config.budgets`` and export it."""
    outputs = [p for p in (output, report_path) if p]
    for path in outputs:
        check_output_path(path, (model_path, config.data, config.calib_data, config.train_data), force)
    if not config.budgets:
        raise InputError("give at least one budget: --latency, --energy or --size (e.g. --latency 0.5x)")
    if config.strategy not in STRATEGIES:
        raise InputError(f"unknown --strategy {config.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if config.episodes < 1:
        raise InputError(f"--episodes must be at least 1, got {config.episodes}")
    if config.data is None:
        raise InputError("compress needs validation data to measure accuracy; pass --data VAL.npz")
    if config.search_finetune_steps and config.train_data is None:
        raise InputError("--search-finetune-steps needs --train-data FILE.npz")
    budgets = {q: parse_budget(text, q) for q, text in config.budgets.items()}
    target = load_target(config.target)
    prepared = prepare(model_path, config.input_shapes)
    layers = prepared.layers
    table = target.cost_table(layers)
    costs = CostTable({"latency": table.latency_s, "energy": table.energy_j, "size": table.weight_bytes},
                      combine=target.combine)
    w8a8_costs = costs.w8a8()
    limits = {q: b.resolve(w8a8_costs.get(q)) for q, b in budgets.items()}

    run = load_run_data(prepared, config.data, config.calib_data, config.train_data, config.finetune_epochs)
    val, train, epochs = run.val, run.train, run.epochs

    quantizer = Quantizer(prepared, run.calib, config.quantize)
    evaluator = Evaluator(val, reference=prepared.model)
    fp32 = evaluator.evaluate(prepared.model, "the fp32 model")
    kmeans = config.quantize.method == "kmeans"

    def evaluate(policy: Policy) -> float:
        if config.search_finetune_steps:
            model = finetune_export(quantizer, policy, train, config.finetune(1, config.search_finetune_steps))
        else:  # unpacked: the same numbers, run as ONNX Runtime integer kernels
            model = quantizer.export(policy, packed=False)
        return evaluator.evaluate(model, "the quantized model").accuracy

    problem = SearchProblem(
        layer_names=[l.name for l in layers],
        state_matrix=prepared.extraction.state_matrix,
        costs=costs,
        limits=limits,
        evaluate=evaluate,
        fp32_accuracy=fp32.accuracy,
        mode="kmeans" if kmeans else "linear",
        w_bits=target.w_bits,
        a_bits=target.a_bits,
        pin_first=config.pin_first,
        pin_last=config.pin_last,
        reward_lambda=config.reward_lambda,
    )
    start = time.perf_counter()
    result = search(problem, config.strategy, config.episodes, config.seed, config=config.ddpg,
                    workdir=config.workdir, resume=config.resume, progress=progress)
    w8a8_policy = uniform_policy(layers, LayerBits(8, None if kmeans else 8))
    w8a8_acc = evaluator.evaluate(quantizer.export(w8a8_policy), "the w8a8 model").accuracy
    final = quantizer.export(result.policy)
    searched_acc = final_acc = result.accuracy
    finetuned_acc = None
    if epochs:
        tuned = finetune_export(quantizer, result.policy, train, config.finetune(epochs))
        final, tuned_result = keep_better(evaluator, final, searched_acc, tuned)
        finetuned_acc = tuned_result.accuracy
        final_acc = finetuned_acc if final is tuned else searched_acc
    report = {
        "schema": REPORT_SCHEMA,
        "model": model_path,
        "target": {"name": getattr(target, "name", config.target), "spec": config.target, "batch": target.batch},
        "constraints": {q: {"budget": config.budgets[q], "limit": format_costs(q, limits[q])[0]} for q in budgets},
        "fp32": {"accuracy": fp32.accuracy, **policy_costs(target, layers, uniform_policy(layers, LayerBits(None, None)))},
        "w8a8": {"accuracy": w8a8_acc, **policy_costs(target, layers, w8a8_policy)},
        "result": {
            "accuracy": final_acc,
            "accuracy_before_finetune": searched_acc,
            "accuracy_finetuned": finetuned_acc,
            **policy_costs(target, layers, result.policy),
            "meets_budget": result.meets_budget,
        },
        "policy": policy_to_json(result.policy),
        "layers": layer_costs(target, layers, result.policy),
        "search": {
            "strategy": result.strategy,
            "episodes": result.episodes,
            "best_episode": result.best_episode,
            "seconds": round(result.seconds, 3),
            "evaluations": result.evaluations,
            "seed": config.seed,
            "method": config.quantize.method,
            "finetune_epochs": epochs,
        },
        "history": [_history_entry(h) for h in result.history],
        "label_free": fp32.label_free,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if output:
        save_model(final, output)
        report["output"] = str(output)
    if report_path:
        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    drop = 100.0 * (fp32.accuracy - final_acc)
    if config.max_accuracy_drop is not None and drop > config.max_accuracy_drop:
        raise AccuracyDropError(
            f"accuracy dropped {drop:.2f} points (fp32 {100 * fp32.accuracy:.2f}% -> {100 * final_acc:.2f}%), "
            f"more than --max-accuracy-drop {config.max_accuracy_drop:g}; relax the budget or fine-tune longer"
        )
    return CompressResult(report, final, result)


def policy_costs(target: Target, layers: list[Layer], policy: Policy) -> dict:
    """A policy's total latency (ms), energy (mJ) and size (MB) on ``target``; float layers at the target's float convention."""
    return as_units(combine_costs(target, [target.cost(l, policy[l.name].w_bits, policy[l.name].a_bits) for l in layers]))


def layer_costs(target: Target, layers: list[Layer], policy: Policy) -> list[dict]:
    """Per-layer bits and costs of ``policy`` (for the console table and the plot)."""
    rows = []
    for l in layers:
        bits = policy[l.name]
        rows.append({"layer": l.name, "kind": l.kind, "w_bits": bits.w_bits, "a_bits": bits.a_bits,
                     **as_units(target.cost(l, bits.w_bits, bits.a_bits))})
    return rows


def _history_entry(entry: dict) -> dict:
    return {
        "episode": entry["episode"],
        "reward": entry["reward"],
        "accuracy": entry["accuracy"],
        "costs": {k: float(v) for k, v in entry["costs"].items()},
    }
