"""Target capabilities: what a target runs and how its integers are formed, as data.

HAQ's premise is that the hardware decides. A target therefore declares, per kind of
layer (conv, depthwise, fc, matmul, embedding), the precision options it runs (cheapest first; None
leaves the target's default grid) and the numeric constraints of its kernels, the way
torch.ao's backend configs do. The quantize passes read the constraints (today: whether
8-bit weights under 8-bit inputs must stay within +-64), the search reads the options, and
inspect and the report show both, so a user sees what shaped the export.

``reduced_range`` exists for one kind of kernel: x86 CPUs without VNNI multiply uint8
activations by int8 weights with vpmaddubsw, which adds each pair of products into a
saturating int16 (2 x 255 x 127 > 32767). ONNX Runtime's u8s8 kernels there compute wrong
values with full-range int8 weights; within +-64 (2 x 255 x 64 = 32640) they are exact.
VNNI, ARM's dot product and the FPGA overlays accumulate in 32 bits and need no such cap.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from haqc.errors import InputError
from haqc.layers import Layer, LayerKind
from haqc.precision import Option, parse_option

# The widest product of an 8-bit input code and a weight code a saturating kernel can add in pairs.
_PAIR_SUM_MAX = 2**15 - 1


@dataclass(frozen=True)
class OpCapability:
    """What a target does with one kind of layer."""

    options: tuple[Option, ...] | None = None  # cheapest first; None: the target's default options
    reduced_range: bool = False  # its integer kernel adds pairs of uint8 x int8 products in int16

    def weight_levels(self, bits: int, input_bits: int | None) -> int:
        """The largest integer magnitude of symmetric ``bits``-bit weights on this kernel.

        2^(b-1) - 1, capped where the kernel saturates and the input is quantized to
        ``input_bits``: so that no pair of products passes int16 (only 8-bit weights under
        8-bit inputs reach it, capped to +-64 as ``quantize_static``'s ``reduce_range`` does).
        Weight-only layers are dequantized to float and run float kernels: never capped.
        """
        levels = 2 ** (bits - 1) - 1
        if not self.reduced_range or input_bits is None:
            return levels
        return min(levels, _PAIR_SUM_MAX // (2 * (2**input_bits - 1)))

    def to_dict(self) -> dict:
        return {"options": None if self.options is None else [o.name for o in self.options],
                "reduced_range": self.reduced_range}


@dataclass(frozen=True)
class Capabilities:
    """A target's capabilities per layer kind, and where they come from (``source``)."""

    conv: OpCapability = OpCapability()
    depthwise: OpCapability = OpCapability()
    fc: OpCapability = OpCapability()
    matmul: OpCapability = OpCapability()
    embedding: OpCapability = OpCapability()  # lookups of a constant table: weight-only options
    source: str = "full-range integers (32-bit accumulators)"

    @classmethod
    def uniform(cls, op: OpCapability, source: str) -> Capabilities:
        """The same capability for every layer kind."""
        return cls(**{kind: op for kind in KINDS}, source=source)

    def of(self, layer: Layer) -> OpCapability:
        return getattr(self, layer.kind)

    @property
    def reduced_range(self) -> bool:
        """Whether any kind's kernel needs the reduced 8-bit range."""
        return any(getattr(self, kind).reduced_range for kind in KINDS)

    def to_dict(self) -> dict:
        return {"summary": self.describe(), "source": self.source,
                **{kind: getattr(self, kind).to_dict() for kind in KINDS}}

    def describe(self) -> str:
        """One line for inspect and the report summary."""
        reduced = [kind for kind in KINDS if getattr(self, kind).reduced_range]
        rng = f"8-bit weights under 8-bit inputs within +-64 on {', '.join(reduced)}" if reduced else \
            "full-range int8"
        return f"{rng} ({self.source})"


KINDS: tuple[LayerKind, ...] = tuple(f.name for f in fields(Capabilities) if f.name != "source")  # type: ignore[misc]


def capabilities_from_mapping(data: Mapping[str, Any], origin: str, base: Capabilities) -> Capabilities:
    """``base`` with a TOML ``[capabilities]`` table applied: ``reduced_range`` and ``options`` for
    every kind at its top level, or per kind in ``[capabilities.<kind>]``."""
    allowed = ("reduced_range", "options")
    unknown = sorted(set(data) - set(allowed) - set(KINDS))
    if unknown:
        raise InputError(f"{origin}: unknown capability {unknown[0]!r}; use {', '.join(allowed + KINDS)}")
    shared = _op_fields(data, origin)
    ops = {}
    for kind in KINDS:
        table = data.get(kind, {})
        if not isinstance(table, Mapping):
            raise InputError(f"{origin}: capabilities.{kind} must be a table")
        extra = sorted(set(table) - set(allowed))
        if extra:
            raise InputError(f"{origin}: unknown capability {kind}.{extra[0]}; use {', '.join(allowed)}")
        ops[kind] = replace(getattr(base, kind), **{**shared, **_op_fields(table, f"{origin} ({kind})")})
    return Capabilities(**ops, source=origin)


def _op_fields(data: Mapping[str, Any], origin: str) -> dict:
    out: dict = {}
    if "reduced_range" in data:
        if not isinstance(data["reduced_range"], bool):
            raise InputError(f"{origin}: reduced_range must be true or false")
        out["reduced_range"] = data["reduced_range"]
    if "options" in data:
        names = data["options"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"{origin}: options must be a non-empty list of option names, e.g. [\"w4a8\", \"w8a8\"]")
        out["options"] = tuple(parse_option(n) for n in names)
    return out
