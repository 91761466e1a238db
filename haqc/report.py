"""The compress report: one typed record that the CLI prints, the plot draws and the benchmarks read.

``Report.to_dict()`` is the documented JSON schema (docs/report_schema.md);
``schema`` is bumped only when a field changes meaning. Costs are stated in
the report units of ``haqc.quantities`` (ms, mJ, MB).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from haqc.policy import Policy, policy_to_json
from haqc.quantities import as_units, format_costs, in_report_units

REPORT_SCHEMA = 1


@dataclass(frozen=True)
class Scored:
    """A model's score and its cost on the target (SI costs by quantity; None: not estimated), and on
    a measured target the latency its whole model measured (seconds per batch)."""

    accuracy: float
    costs: dict[str, float | None]
    measured_latency_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, **as_units(self.costs), **self._measured()}

    def _measured(self) -> dict[str, float]:
        if self.measured_latency_s is None:
            return {}
        return {"measured_latency_ms": in_report_units("latency", self.measured_latency_s)}


@dataclass(frozen=True)
class Result(Scored):
    """The exported model: its score, how it got there, and whether it meets every budget."""

    accuracy_before_finetune: float = 0.0
    accuracy_finetuned: float | None = None
    meets_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "accuracy_before_finetune": self.accuracy_before_finetune,
                "accuracy_finetuned": self.accuracy_finetuned, **as_units(self.costs), **self._measured(),
                "meets_budget": self.meets_budget}


@dataclass(frozen=True)
class LayerRow:
    """One layer of the result: its option and what it costs there."""

    layer: str
    kind: str
    w_bits: int | None
    a_bits: int | None
    costs: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "w_bits": self.w_bits, "a_bits": self.a_bits,
                **as_units(self.costs)}


@dataclass(frozen=True)
class SearchSummary:
    strategy: str
    episodes: int
    best_episode: int
    seconds: float
    evaluations: int
    seed: int
    method: str
    finetune_epochs: int
    workers: int = 1  # candidates evaluated at once (the search's round size)
    stored: int = 0  # of ``evaluations``, the scores read from the workdir's score file
    reward: str = "metric"  # what the reward measured (haqc.settings.REWARDS)
    finalists: list[dict] = field(default_factory=list)  # options, accuracy before and after a short fine-tune
    samples: int | None = None  # validation samples each candidate was scored on; None: all of them


@dataclass(frozen=True)
class Report:
    """Everything ``haqc compress`` found, in the documented schema's terms."""

    model: str
    target: dict[str, Any]  # name, spec, batch
    budgets: dict[str, str]  # quantity -> the budget as given ("0.5x", "20ms")
    limits: dict[str, float]  # quantity -> the resolved limit, SI units
    fp32: Scored
    w8a8: Scored
    result: Result
    policy: Policy
    layers: list[LayerRow]
    search: SearchSummary
    history: list[dict[str, Any]]
    evaluated: list[dict[str, Any]]  # every scored policy: accuracy, costs (SI), pareto (non-dominated)
    label_free: bool
    signal: str  # what "accuracy" measures: top1, top1-agreement, or a metric's name
    seconds: float
    output: str | None = None
    output_mb: float | None = None  # the size of the file written
    format: str = "qdq"  # how the output stores the quantization (haqc.quantizer.FORMATS)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds (haqc.progress.Stages)
    schema: int = field(default=REPORT_SCHEMA)

    @property
    def constraints(self) -> dict[str, dict[str, str]]:
        """Each budget as given and its resolved limit with a unit (the JSON's ``constraints``)."""
        return {q: {"budget": self.budgets[q], "limit": format_costs(q, self.limits[q])[0]} for q in self.budgets}

    @property
    def accuracy_drop(self) -> float:
        """Percentage points lost from fp32 to the result."""
        return 100.0 * (self.fp32.accuracy - self.result.accuracy)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "model": self.model,
            "target": dict(self.target),
            "constraints": self.constraints,
            "fp32": self.fp32.to_dict(),
            "w8a8": self.w8a8.to_dict(),
            "result": self.result.to_dict(),
            "policy": policy_to_json(self.policy),
            "layers": [row.to_dict() for row in self.layers],
            "search": dict(vars(self.search)),
            "history": [
                {"episode": h["episode"], "reward": h["reward"], "accuracy": h["accuracy"],
                 "divergence": h.get("divergence"), "costs": {k: float(v) for k, v in h["costs"].items()}}
                for h in self.history
            ],
            "evaluated": [{"accuracy": e["accuracy"], "divergence": e.get("divergence"),
                           "costs": {k: float(v) for k, v in e["costs"].items()}, "pareto": e["pareto"]}
                          for e in self.evaluated],
            "label_free": self.label_free,
            "signal": self.signal,
            "seconds": round(self.seconds, 3),
        }
        out["format"] = self.format
        out["stages"] = dict(self.stages)
        if self.output is not None:
            out["output"] = self.output
            out["output_mb"] = self.output_mb
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def mark_frontier(points: list[dict[str, Any]], quantities: list[str]) -> list[dict[str, Any]]:
    """``points`` (accuracy, costs) each with ``pareto``: no other point is at least as accurate and
    at most as costly in every one of ``quantities``, and better in one."""
    def dominates(a: dict, b: dict) -> bool:
        no_worse = a["accuracy"] >= b["accuracy"] and all(a["costs"][q] <= b["costs"][q] for q in quantities)
        better = a["accuracy"] > b["accuracy"] or any(a["costs"][q] < b["costs"][q] for q in quantities)
        return no_worse and better

    return [{**p, "pareto": not any(dominates(o, p) for o in points)} for p in points]
