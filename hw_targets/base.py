"""The hardware-target interface: what a target answers, and the conventions every target shares.

A target sees ``haqc.layers.Layer`` records and precision options, never
protobufs or accuracy. It declares each layer's options (``options``, cheapest
first; by default every (w, a) pair of its ``w_bits`` x ``a_bits``) and answers,
per layer and per (w_bits, a_bits), the latency of one batch, its energy
(``None`` when the target has no energy model: never a fake 0) and the bytes of
the layer's stored weights. ``cost_table`` turns those answers into the one
``haqc.costs.CostTable`` every stage reads. Everything here is shared so that
all targets, built-in or plugin, cost float layers and weight storage the same
way (docs/cost_models.md, "Conventions").
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import numpy as np

from haqc.capabilities import Capabilities
from haqc.costs import CostTable, LayerCost, padded
from haqc.errors import InputError
from haqc.layers import Layer
from haqc.precision import (FP32, SEARCH_BITS, FloatFormat, IntFormat, KMeansFormat, Method, Option, codebooks, grid,
                            reference_option, weight_only)

if TYPE_CHECKING:  # targets that only model costs never load ONNX; measured ones receive its models
    import onnx

logger = logging.getLogger(__name__)

# Bitwidths that mean "not quantized" when passed to Target.cost.
FLOAT_MARKERS: tuple[Any, ...] = (None, 32)
# A float layer runs as 16-bit fixed point: the accelerators have no float unit.
FLOAT_EXEC_BITS = 16
# ... and is stored as float32, as haqc writes it to the ONNX file.
FLOAT_STORAGE_BYTES = 4
HALF_STORAGE_BYTES = 2  # fp16 / bf16 weights
# Per-output-channel quantization scale stored next to quantized weights (one float32).
SCALE_BYTES_PER_CHANNEL = 4
# Widest integer width a cost model is asked about (FLOAT_EXEC_BITS included).
MAX_COST_BITS = 16


def quantized_weight_bytes(params: Any, c_out: Any, w_bits: Any) -> Any:
    """Bytes of b-bit packed weights plus one float32 scale per output channel (numpy-friendly)."""
    return params * w_bits / 8.0 + c_out * SCALE_BYTES_PER_CHANNEL


def weight_bytes(layer: Layer, w_bits: int) -> float:
    """Stored size of ``layer``'s weights at ``w_bits``: the convention every target reports."""
    return float(quantized_weight_bytes(layer.params, layer.c_out, w_bits))


def option_weight_bytes(layer: Layer, option: Option) -> float:
    """What ``option`` stores for ``layer``'s weights: float32 or 16-bit floats; b-bit integers with a
    float32 scale per output channel; per block of k, a float32 scale and a b-bit zero point; k-means
    indices with a codebook of 2^b float32 centroids. A measured target reports these; a cost model
    may report its device's own storage."""
    w = option.weight
    if w is None:
        return float(layer.params * FLOAT_STORAGE_BYTES)
    if isinstance(w, FloatFormat):
        return float(layer.params * HALF_STORAGE_BYTES)
    if isinstance(w, IntFormat) and w.block:
        blocks = -(-layer.reduction // w.block) * layer.c_out
        return layer.params * w.bits / 8.0 + blocks * (SCALE_BYTES_PER_CHANNEL + w.bits / 8.0)
    if isinstance(w, KMeansFormat):
        return layer.params * w.bits / 8.0 + 2**w.bits * FLOAT_STORAGE_BYTES
    return weight_bytes(layer, w.bits)


def is_float(bits: int | None) -> bool:
    """True when ``bits`` marks an unquantized (float) tensor: None or 32."""
    return bits in FLOAT_MARKERS


class Target(abc.ABC):
    """A hardware cost model. Subclass it and implement ``layer_cost``; see docs/writing_targets.md.

    Set ``name``, ``description`` and ``batch`` (class or instance attributes);
    ``w_bits``/``a_bits`` are the bitwidths the default ``options`` offer the
    search on this hardware. ``layer_cost`` must answer for every integer width
    in 1..16 (the options' widths and FLOAT_EXEC_BITS for float tensors):
    return what the hardware does with that width, e.g. run it on the next
    wider datapath. ``capabilities`` says per layer kind which options the
    hardware runs and how its integers are formed (default: full-range integers,
    the ``w_bits`` x ``a_bits`` grid); override ``options`` for other choices.
    """

    name: str
    description: str
    batch: int = 1
    w_bits: tuple[int, ...] = SEARCH_BITS
    a_bits: tuple[int, ...] = SEARCH_BITS

    @abc.abstractmethod
    def layer_cost(self, layer: Layer, w_bits: int, a_bits: int) -> LayerCost:
        """Cost of ``layer`` with integer weight/activation widths (no float markers)."""

    def cost(self, layer: Layer, w_bits: int | None, a_bits: int | None) -> LayerCost:
        """Cost of ``layer``; None or 32 means float (run at 16-bit, weights stored as float32)."""
        w_exec = FLOAT_EXEC_BITS if is_float(w_bits) else _check_bits(w_bits, "weight")
        a_exec = FLOAT_EXEC_BITS if is_float(a_bits) else _check_bits(a_bits, "activation")
        result = self.layer_cost(layer, w_exec, a_exec)
        if is_float(w_bits):
            result = dataclasses.replace(result, weight_bytes=float(layer.params * FLOAT_STORAGE_BYTES))
        return result

    def capabilities(self) -> Capabilities:
        """What this hardware runs per layer kind and its kernels' numeric constraints (data).
        Default: full-range integers with 32-bit accumulators, the ``w_bits`` x ``a_bits`` grid."""
        return Capabilities()

    def options(self, layer: Layer, method: Method = "linear") -> tuple[Option, ...]:
        """The options the search may give ``layer``, cheapest first (the last is the most precise,
        which pinned layers get). Default: the options ``capabilities`` declares for the layer's
        kind, else every (w, a) of ``w_bits`` x ``a_bits`` within 2..8 (linear), or k-means
        codebooks of the weight widths (kmeans: activations stay float)."""
        declared = self.capabilities().of(layer).options
        if declared is not None and method == "linear":
            return declared
        w = _search_levels(self.w_bits, "weight")
        if layer.kind == "embedding" and method == "linear":  # its input is indices: int8 rows (gathered first)
            return weight_only((8,))
        return grid(w, _search_levels(self.a_bits, "activation")) if method == "linear" else codebooks(w)

    def cost_table(self, layers: Sequence[Layer], method: Method = "linear") -> CostTable:
        """Every layer at each of its options, plus fp32 and the all-8-bit option for the report."""
        rows = []
        declared = []
        for layer in layers:
            options = tuple(self.options(layer, method))
            if not options:
                raise InputError(f"target {self.name!r} offers layer {layer.name!r} no precision option")
            declared.append(len(options))
            reference = reference_option(method, layer.kind)
            rows.append(options + tuple(o for o in (FP32, reference) if o not in options))
        values = self.option_costs(layers, rows)
        return CostTable([l.name for l in layers], rows, values, declared=declared, combine=self.combine,
                         kinds=[l.kind for l in layers])

    def option_costs(self, layers: Sequence[Layer], options: Sequence[Sequence[Option]]) -> dict[str, np.ndarray | None]:
        """``{"latency", "energy", "size"}`` arrays (n_layers, max options), NaN-padded; energy None
        when the target has none. This default loops over ``cost``; parametric models vectorize it."""
        costs = [[self.cost(layer, o.w_bits, o.a_bits) for o in opts] for layer, opts in zip(layers, options)]
        energies = [c.energy_j for row in costs for c in row]
        return {
            "latency": padded([[c.latency_s for c in row] for row in costs]),
            "energy": None if None in energies else padded([[c.energy_j for c in row] for row in costs]),
            # a target costs a float layer's weights as float32: 16-bit float ones store 2 bytes each
            "size": padded([[option_weight_bytes(layer, o) if isinstance(o.weight, FloatFormat) else c.weight_bytes
                             for o, c in zip(opts, row)]
                            for layer, opts, row in zip(layers, options, costs)]),
        }

    def combine(self, per_layer: np.ndarray) -> float:
        """A model's cost from its layers' costs: the sum. Override for e.g. a pipelined dataflow device."""
        return float(np.sum(per_layer))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r} batch={self.batch}>"


class Subgraphs(Protocol):
    """What a measured target times, built by a pass (``haqc.passes.isolate.LayerSubgraphs``)."""

    model: onnx.ModelProto  # the whole canonical model

    def geometry(self, layer: Layer, batch: int) -> str:
        """A key for what decides ``layer``'s run time (op, attributes, shapes), not its values."""

    def layer(self, layer: Layer, option: Option, batch: int) -> onnx.ModelProto:
        """``layer`` alone at ``option``, with the Quantize / Dequantize the export puts around it."""

    def conversion(self, layer: Layer, batch: int) -> onnx.ModelProto:
        """A Quantize -> Dequantize of ``layer``'s input alone."""

    def chains(self) -> list[tuple[int, int]]:
        """(producer, consumer) layer indices that run as one integer chain when both are integer."""

    def whole(self, option: Option, batch: int) -> onnx.ModelProto:
        """The whole model with every layer at ``option``."""

    def input_feed(self, layer: Layer, batch: int) -> dict[str, np.ndarray]:
        """Seeded data for ``layer``'s input in ``layer``'s standalone models (floats, or indices)."""

    def feeds(self, batch: int) -> dict[str, np.ndarray]:
        """Inputs for ``whole``."""


class MeasuredTarget(Target):
    """A target that times the model's own layers in a runtime instead of evaluating a formula.

    The pipeline hands it the layers' standalone subgraphs (``Subgraphs``); it never edits the
    user's graph. It also times whole models, so compress can check a result against what runs.
    """

    @abc.abstractmethod
    def measured_table(self, layers: Sequence[Layer], subgraphs: Subgraphs, method: Method = "linear") -> CostTable:
        """The cost table, from measurements of ``subgraphs``."""

    @abc.abstractmethod
    def time_models(self, models: Sequence[onnx.ModelProto], feeds: dict[str, np.ndarray]) -> list[float]:
        """Seconds per batch of each model on ``feeds``, median of interleaved runs."""

    def layer_cost(self, layer: Layer, w_bits: int, a_bits: int) -> LayerCost:
        raise self._needs_subgraphs()

    def cost_table(self, layers: Sequence[Layer], method: Method = "linear") -> CostTable:
        raise self._needs_subgraphs()

    def _needs_subgraphs(self) -> InputError:
        return InputError(f"target {self.name!r} measures layers in their own subgraphs: cost a model with "
                          "haqc.pipeline.cost_table (or `haqc inspect --target`), not from Layer records alone")


def _check_bits(bits: Any, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_COST_BITS:
        raise InputError(f"{what} bitwidth must be an integer in 1..{MAX_COST_BITS} (or None/32 for float), got {bits!r}")
    return int(bits)


def _search_levels(bits: Sequence[int], what: str) -> tuple[int, ...]:
    """The widths of ``bits`` the search covers (2..8); an InputError if none."""
    levels = tuple(sorted({int(b) for b in bits if b in SEARCH_BITS}))
    if not levels:
        raise InputError(
            f"the target supports no {what} bitwidth in {SEARCH_BITS[0]}..{SEARCH_BITS[-1]} ({list(bits)}); "
            "the search needs at least one"
        )
    dropped = sorted(set(bits) - set(levels))
    if dropped:
        logger.info("%s bitwidths %s are outside the search range %d..%d; skipped",
                    what, dropped, SEARCH_BITS[0], SEARCH_BITS[-1])
    return levels


def check_target(obj: Any, origin: str) -> Target:
    """Validate what a plugin or file produced, so a broken target fails at load time, not mid-search."""
    if not isinstance(obj, Target):
        raise InputError(f"{origin} did not produce a haqc.hw_targets.Target (got {type(obj).__name__})")
    for attr in ("name", "description"):
        if not isinstance(getattr(obj, attr, None), str) or not getattr(obj, attr):
            raise InputError(f"{origin} defines no {attr} (a non-empty string)")
    if isinstance(obj.batch, bool) or not isinstance(obj.batch, int) or obj.batch <= 0:
        raise InputError(f"{origin} has batch {obj.batch!r}; it must be a positive integer")
    for attr in ("w_bits", "a_bits"):
        try:
            _check_width_list(attr, getattr(obj, attr))
        except InputError as err:
            raise InputError(f"{origin}: {err}") from None
    return obj


@dataclass(frozen=True)
class ModelParams:
    """Base of a parametric model's parameter dataclass: every number must be positive.

    Validation lives here (not in the TOML loader) so parameters built in
    Python and parameters read from a file are checked the same way.
    Integer fields must be ints, float fields any positive finite number,
    ``tuple[int, ...]`` fields non-empty lists of widths; ``X | None``
    fields may be None.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = hints[f.name]
            if value is None and _allows_none(hint):
                continue
            if _without_none(hint) is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"parameter {f.name!r} must be an integer, got {value!r}")
            if typing.get_origin(hint) is tuple:
                _check_width_list(f.name, value)
                object.__setattr__(self, f.name, tuple(value))
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"parameter {f.name!r} must be a number, got {value!r}")
            if value <= 0:
                raise InputError(f"parameter {f.name!r} must be positive, got {value!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )


def _allows_none(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _without_none(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def _check_width_list(name: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{name!r} must be a non-empty list of bitwidths, got {value!r}")
    for b in value:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_COST_BITS:
            raise InputError(f"{name!r} must list integers in 1..{MAX_COST_BITS}, got {b!r}")


class LayerArrays(NamedTuple):
    """Per-layer GEMM geometry as float arrays: each group is an (m x k) by (k x n) product per sample."""

    groups: np.ndarray
    m: np.ndarray  # output channels per group
    k: np.ndarray  # reduction length
    n: np.ndarray  # output vectors per sample (rows)
    params: np.ndarray
    c_out: np.ndarray
    input_elems: np.ndarray
    output_elems: np.ndarray

    @classmethod
    def of(cls, layers: Sequence[Layer]) -> LayerArrays:
        def col(attr: str) -> np.ndarray:
            return np.array([getattr(layer, attr) for layer in layers], dtype=np.float64)

        groups, c_out = col("groups"), col("c_out")
        return cls(
            groups=groups,
            m=c_out / groups,
            k=col("reduction"),
            n=col("rows"),
            params=col("params"),
            c_out=c_out,
            input_elems=col("input_elems"),
            output_elems=col("output_elems"),
        )

    def expand(self) -> LayerArrays:
        """Add a trailing axis so arrays broadcast against each layer's row of options."""
        return LayerArrays(*(a[:, None] for a in self))


class ParametricTarget(Target):
    """A target computed by closed-form numpy equations, so one call costs a whole (layer, w, a) grid.

    Subclasses define ``family`` (the TOML ``model`` key), ``Params`` (a
    ModelParams dataclass) and ``breakdown_arrays``; the scalar ``layer_cost``
    and the vectorized ``cost_table`` both go through it, so they cannot disagree.
    """

    family: ClassVar[str]
    Params: ClassVar[type[ModelParams]]

    def __init__(self, params: ModelParams, *, name: str, description: str,
                 capabilities: Capabilities | None = None) -> None:
        self.params = params
        self._capabilities = capabilities or Capabilities()
        self.name = name
        self.description = description
        self.batch = params.batch  # type: ignore[attr-defined]
        self.w_bits = params.w_bits  # type: ignore[attr-defined]
        self.a_bits = params.a_bits  # type: ignore[attr-defined]

    def capabilities(self) -> Capabilities:
        return self._capabilities

    @abc.abstractmethod
    def breakdown_arrays(self, g: LayerArrays, w: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray | None]:
        """Named cost components, broadcast over (g, w, a); must include latency_s, energy_j, weight_bytes."""

    def breakdown(self, layer: Layer, w_bits: int, a_bits: int) -> dict[str, float | None]:
        """Every named component of one layer's cost (compute_s, memory_s, dram_bytes, ...), for inspection."""
        parts = self.breakdown_arrays(LayerArrays.of([layer]), np.array(float(w_bits)), np.array(float(a_bits)))
        return {k: None if v is None else float(np.asarray(v).reshape(-1)[0]) for k, v in parts.items()}

    def layer_cost(self, layer: Layer, w_bits: int, a_bits: int) -> LayerCost:
        parts = self.breakdown(layer, w_bits, a_bits)
        return LayerCost(parts["latency_s"], parts["energy_j"], parts["weight_bytes"])  # type: ignore[arg-type]

    def option_costs(self, layers: Sequence[Layer], options: Sequence[Sequence[Option]]) -> dict[str, np.ndarray | None]:
        """Every (layer, option) in one broadcast evaluation of ``breakdown_arrays``."""
        width = max(len(o) for o in options)
        w = np.full((len(layers), width), float(FLOAT_EXEC_BITS))
        a = w.copy()
        float_weights = np.zeros(w.shape, dtype=bool)
        half = np.zeros(w.shape, dtype=bool)
        for i, opts in enumerate(options):
            for j, o in enumerate(opts):
                w[i, j] = FLOAT_EXEC_BITS if o.w_bits is None else o.w_bits
                a[i, j] = FLOAT_EXEC_BITS if o.a_bits is None else o.a_bits
                float_weights[i, j] = o.w_bits is None
                half[i, j] = isinstance(o.weight, FloatFormat)
        g = LayerArrays.of(layers).expand()
        parts = self.breakdown_arrays(g, w, a)
        valid = np.array([[j < len(opts) for j in range(width)] for opts in options])

        def table(value: np.ndarray) -> np.ndarray:
            return np.where(valid, np.broadcast_to(value, w.shape), np.nan)

        size = np.where(float_weights, g.params * FLOAT_STORAGE_BYTES, np.broadcast_to(parts["weight_bytes"], w.shape))
        size = np.where(half, g.params * HALF_STORAGE_BYTES, size)
        energy = parts["energy_j"]
        return {"latency": table(parts["latency_s"]), "energy": None if energy is None else table(energy),
                "size": table(size)}


def ceil_div(x: np.ndarray, d: Any) -> np.ndarray:
    """Elementwise ceil(x / d) for non-negative float arrays holding integers."""
    return np.ceil(x / d)


def align_to(x: np.ndarray, d: Any) -> np.ndarray:
    """Round x up to a multiple of d (padding a matrix dimension to the array size)."""
    return ceil_div(x, d) * d


def roofline(cycles: np.ndarray, dram_bytes: np.ndarray, clock_hz: float, dram_bytes_per_s: float) -> dict[str, np.ndarray]:
    """Latency of an array whose fetch, compute and write-back overlap (double-buffered): the
    longer of compute and memory time; with its parts, for ``breakdown_arrays``."""
    compute_s = cycles / clock_hz
    memory_s = dram_bytes / dram_bytes_per_s
    return {"latency_s": np.maximum(compute_s, memory_s), "compute_s": compute_s, "memory_s": memory_s,
            "cycles": cycles, "dram_bytes": dram_bytes}

