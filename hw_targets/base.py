"""The hardware-target interface: what a target answers, and the conventions every target shares.

A target sees ``haqc.layers.Layer`` records and bitwidths, never protobufs or
accuracy. It answers, per layer and per (w_bits, a_bits), the latency of one
batch, its energy (``None`` when the target has no energy model: never a fake
0) and the bytes of the layer's stored weights. Everything here is shared so
that all targets, built-in or plugin, cost float layers and weight storage the
same way (docs/cost_models.md, "Conventions").
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from haqc.errors import InputError
from haqc.layers import Layer

logger = logging.getLogger(__name__)

# The bitwidths the search chooses from and cost tables cover: index b - 2.
TABLE_BITS: tuple[int, ...] = tuple(range(2, 9))
# Bitwidths that mean "not quantized" when passed to Target.cost.
FLOAT_MARKERS: tuple[Any, ...] = (None, 32)
# A float layer runs as 16-bit fixed point: the accelerators have no float unit.
FLOAT_EXEC_BITS = 16
# ... and is stored as float32, as haqc writes it to the ONNX file.
FLOAT_STORAGE_BYTES = 4
# Per-output-channel quantization scale stored next to quantized weights (one float32).
SCALE_BYTES_PER_CHANNEL = 4
# Widest integer width a cost model is asked about (FLOAT_EXEC_BITS included).
MAX_BITS = 16


@dataclass(frozen=True)
class LayerCost:
    """The cost of one layer (or a whole model) for one batch of ``Target.batch`` samples."""

    latency_s: float
    energy_j: float | None  # None: this target cannot estimate energy
    weight_bytes: float


class CostTable(NamedTuple):
    """Costs of every layer at every (w, a) in TABLE_BITS, indexed ``[layer, w - 2, a - 2]``.

    Arrays have shape (n_layers, 7, 7); ``energy`` is None when the target has
    no energy model. A policy's cost is a fancy-index reduction, see
    ``Target.policy_cost``.
    """

    latency_s: np.ndarray
    energy_j: np.ndarray | None
    weight_bytes: np.ndarray


def quantized_weight_bytes(params: Any, c_out: Any, w_bits: Any) -> Any:
    """Bytes of b-bit packed weights plus one float32 scale per output channel (numpy-friendly)."""
    return params * w_bits / 8.0 + c_out * SCALE_BYTES_PER_CHANNEL


def weight_bytes(layer: Layer, w_bits: int) -> float:
    """Stored size of ``layer``'s weights at ``w_bits``: the convention every target reports."""
    return float(quantized_weight_bytes(layer.params, layer.c_out, w_bits))


def is_float(bits: int | None) -> bool:
    """True when ``bits`` marks an unquantized (float) tensor: None or 32."""
    return bits in FLOAT_MARKERS


class Target(abc.ABC):
    """A hardware cost model. Subclass it and implement ``layer_cost``; see docs/writing_targets.md.

    Set ``name``, ``description`` and ``batch`` (class or instance attributes);
    ``w_bits``/``a_bits`` are the bitwidths the search may choose on this
    hardware. ``layer_cost`` must answer for every integer width in 1..16 (the
    search's 2..8 and FLOAT_EXEC_BITS for float layers): return what the
    hardware does with that width, e.g. run it on the next wider datapath.
    """

    name: str
    description: str
    batch: int = 1
    w_bits: tuple[int, ...] = TABLE_BITS
    a_bits: tuple[int, ...] = TABLE_BITS

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

    def cost_table(self, layers: Sequence[Layer]) -> CostTable:
        """All layers at all (w, a) in 2..8. This default loops over ``layer_cost``; models vectorize it."""
        n, k = len(layers), len(TABLE_BITS)
        latency = np.empty((n, k, k))
        energy = np.empty((n, k, k))
        size = np.empty((n, k, k))
        has_energy = True
        for i, layer in enumerate(layers):
            for wi, w in enumerate(TABLE_BITS):
                for ai, a in enumerate(TABLE_BITS):
                    c = self.layer_cost(layer, w, a)
                    latency[i, wi, ai] = c.latency_s
                    size[i, wi, ai] = c.weight_bytes
                    has_energy = has_energy and c.energy_j is not None
                    energy[i, wi, ai] = c.energy_j if c.energy_j is not None else math.nan
        return CostTable(latency, energy if has_energy else None, size)

    def combine(self, per_layer: np.ndarray) -> float:
        """A model's cost from its layers' costs: the sum. Override for e.g. a pipelined dataflow device."""
        return float(np.sum(per_layer))

    def model_cost(self, latency_s: np.ndarray, energy_j: np.ndarray | None, weight_bytes: np.ndarray) -> LayerCost:
        """A model's cost from its layers' costs: latency and energy via ``combine``, size always summed."""
        return LayerCost(
            latency_s=self.combine(latency_s),
            energy_j=None if energy_j is None else self.combine(energy_j),
            weight_bytes=float(np.sum(weight_bytes)),
        )

    def policy_cost(self, table: CostTable, w_bits: Sequence[int], a_bits: Sequence[int]) -> LayerCost:
        """Total cost of a policy (one (w, a) in 2..8 per layer) from a cost table."""
        first = TABLE_BITS[0]
        pick = (np.arange(table.latency_s.shape[0]), np.asarray(w_bits) - first, np.asarray(a_bits) - first)
        energy = None if table.energy_j is None else table.energy_j[pick]
        return self.model_cost(table.latency_s[pick], energy, table.weight_bytes[pick])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r} batch={self.batch}>"


def _check_bits(bits: Any, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise InputError(f"{what} bitwidth must be an integer in 1..{MAX_BITS} (or None/32 for float), got {bits!r}")
    return int(bits)


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
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS:
            raise InputError(f"{name!r} must list integers in 1..{MAX_BITS}, got {b!r}")


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
        """Add two trailing axes so arrays broadcast against a (w, a) grid."""
        return LayerArrays(*(a[:, None, None] for a in self))


class ParametricTarget(Target):
    """A target computed by closed-form numpy equations, so one call costs a whole (layer, w, a) grid.

    Subclasses define ``family`` (the TOML ``model`` key), ``Params`` (a
    ModelParams dataclass) and ``breakdown_arrays``; the scalar ``layer_cost``
    and the vectorized ``cost_table`` both go through it, so they cannot disagree.
    """

    family: ClassVar[str]
    Params: ClassVar[type[ModelParams]]

    def __init__(self, params: ModelParams, *, name: str, description: str) -> None:
        self.params = params
        self.name = name
        self.description = description
        self.batch = params.batch  # type: ignore[attr-defined]
        self.w_bits = params.w_bits  # type: ignore[attr-defined]
        self.a_bits = params.a_bits  # type: ignore[attr-defined]

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

    def cost_table(self, layers: Sequence[Layer]) -> CostTable:
        bits = np.array(TABLE_BITS, dtype=np.float64)
        g = LayerArrays.of(layers).expand()
        parts = self.breakdown_arrays(g, bits[None, :, None], bits[None, None, :])
        shape = (len(layers), len(TABLE_BITS), len(TABLE_BITS))
        energy = parts["energy_j"]
        return CostTable(
            np.broadcast_to(parts["latency_s"], shape).copy(),
            None if energy is None else np.broadcast_to(energy, shape).copy(),
            np.broadcast_to(parts["weight_bytes"], shape).copy(),
        )


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

