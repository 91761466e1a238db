"""Exporters: one per family of formats, chosen from a registry by each layer's option.

A policy may mix formats (integer QDQ, k-means codebooks, blocked weight-only
MatMulNBits, dynamic int8, 16-bit float islands, float). ``Export`` gives every
layer to the exporter that claims its option and runs them in registry order, each on
its own layers (the others look float to it): integer QDQ first, because its integer
chains and requantized outputs read the graph as the model has it; then the formats
that replace a layer's weight or node. Each exporter's ``plan`` is data
(``haqc.passes.plan``); the merged plan is what fine-tuning simulates.

A new format is one file holding its pass (``plan(model) -> ExportPlan`` and
``call(model) -> model``) and a ``register(Exporter(...))`` call (docs/extending.md).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import onnx

from haqc.capabilities import Capabilities
from haqc.errors import InputError
from haqc.layers import Layer
from haqc.passes.base import Pass, store_equal_constants_once
from haqc.passes.calibrate import Calibration
from haqc.passes.plan import ExportPlan
from haqc.policy import Policy
from haqc.precision import FP32, FloatFormat, Option, register_option_parser

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportContext:
    """What every exporter may read, owned by the caller: the layers, the calibration (None when no
    option quantizes an activation statically), the weight granularity, the target's capabilities,
    the seed, one cache per exporter (filled across a search's policies), and what fine-tuning
    trained under (``weight_scales`` by weight name, ``input_clips`` by layer name)."""

    layers: list[Layer]
    calibration: Calibration | None = None
    per_channel: bool = True
    packed: bool = True  # store sub-8-bit integer weights in INT4 / INT2 containers
    capabilities: Capabilities = Capabilities()
    seed: int = 0
    caches: dict[str, dict] = field(default_factory=dict)
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    input_clips: dict[str, float] = field(default_factory=dict)

    def cache(self, exporter: str) -> dict:
        return self.caches.setdefault(exporter, {})


class PlannedPass(Protocol):
    """What an exporter builds: a pass that can also say what it will compute."""

    def plan(self, model: onnx.ModelProto) -> ExportPlan: ...

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto: ...


@dataclass(frozen=True)
class Exporter:
    """A family of formats: which options it writes (``claims``), how (``build``: the context and
    the policy of its own layers -> a planned pass), and, for a format of its own, how its option
    names read back from policies and reports (``parse``: a name -> its option, or None)."""

    name: str
    claims: Callable[[Option], bool]
    build: Callable[[ExportContext, Policy], PlannedPass]
    parse: Callable[[str], Option | None] | None = None


_REGISTRY: dict[str, Exporter] = {}
# The built-in exporters, in the order they run; each module registers itself when imported.
BUILTIN_MODULES = ("haqc.passes.quantize_linear", "haqc.passes.quantize_kmeans", "haqc.passes.quantize_nbits",
                   "haqc.passes.quantize_dynamic", "haqc.passes.quantize_float16")


def register(exporter: Exporter) -> Exporter:
    """Add ``exporter`` to the registry (after the built-ins); a name registered again is replaced."""
    _REGISTRY[exporter.name] = exporter
    if exporter.parse is not None:
        register_option_parser(exporter.parse)
    return exporter


def exporters() -> list[Exporter]:
    """Every registered exporter, in the order they run: the built-ins in ``BUILTIN_MODULES`` order,
    then the others in the order they registered."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda e: rank.get(e.build.__module__, len(rank)))


def exporter_for(option: Option) -> Exporter:
    """The exporter that writes ``option``; an InputError when none does."""
    for exporter in exporters():
        if exporter.claims(option):
            return exporter
    raise InputError(f"no exporter writes the precision {option.name}; see docs/extending.md to add one")


class Export(Pass[onnx.ModelProto]):
    """Write ``policy`` (any mix of formats) into a model: each layer by the exporter of its option."""

    def __init__(self, context: ExportContext, policy: Policy) -> None:
        self.context = context
        self.policy = policy
        self.parts: list[tuple[Exporter, Policy]] = []
        for exporter in exporters():
            mine = {name: o for name, o in policy.items() if o != FP32 and exporter.claims(o)}
            if mine:
                self.parts.append((exporter, mine))
        for layer in context.layers:
            option = policy.get(layer.name, FP32)
            if layer.kind == "embedding" and option.activation is not None and not isinstance(option.weight, FloatFormat):
                raise InputError(f"layer {layer.name!r} is an embedding lookup (its input is indices); give it a "
                                 f"weight-only option, not {option.name}")
        written = {name for _, mine in self.parts for name in mine}
        missing = [o for name, o in policy.items() if o != FP32 and name not in written]
        if missing:
            exporter_for(missing[0])  # raises: no exporter writes it

    def _passes(self) -> list[PlannedPass]:
        return [exporter.build(self.context, mine) for exporter, mine in self.parts]

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        """Every parameter the export of ``model`` uses (each exporter plans its layers on the
        model as given: none of them reads another's layers)."""
        plan = ExportPlan()
        for part in self._passes():
            plan = plan.merged(part.plan(model))
        return plan

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        for part in self._passes():
            model = part(model)
        return store_equal_constants_once(model) if self.parts else model
