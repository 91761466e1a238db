"""The export plan: every number an export of one policy uses, as data.

Each exporter (``haqc.passes.exporters``) computes its layers' parameters (integer
weights and scales, activation ranges, codebooks, bias steps, the formats of 16-bit
float layers) before it writes any node. The torch simulation used for fine-tuning
(``haqc.finetune.build_simulation``) applies exactly these, per layer, whatever format
wrote them, so the export and the simulation cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from haqc.precision import FloatKind

if TYPE_CHECKING:  # the k-means pass defines it next to its bit-plane packing
    from haqc.passes.quantize_kmeans import Codebook


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer weights, ``q * scale`` being the weight: symmetric within +-``levels`` with one scale
    per output channel (``axis``) or per tensor (``axis`` None); or, with ``block``, asymmetric per
    block of weights along ``reduction_axis`` (``scale`` and ``zero_point`` then have the weight's
    shape with that axis counted in blocks, and q + zero point is a code in 0 .. ``levels``)."""

    q: np.ndarray  # integers: -levels .. levels, or code - zero point
    scale: np.ndarray  # float32
    bits: int  # the width of the container the export stores them in
    axis: int | None  # the output-channel axis; None: per tensor
    levels: int  # the largest magnitude (``OpCapability.weight_levels``), or the top code with ``block``
    block: int | None = None  # weights per scale along the reduction axis (blocked weight-only formats)
    reduction_axis: int | None = None  # with ``block``: the axis the blocks run along
    zero_point: np.ndarray | None = None  # with ``block``: uint8 per block


@dataclass(frozen=True)
class ActivationQuant:
    """How one activation is quantized: b-bit codes 0 .. 2^b - 1 around an integer zero point z,
    in steps s = clip / (2^b - 1 - z), so the range is [-z s, clip]. z is 0 for a non-negative
    tensor and 2^(b-1) for a symmetric signed one (the two's-complement range int8 kernels use);
    a tensor whose negative side is short gets just the codes it needs below zero (hard-swish
    outputs [-0.375, 6.7] at 8 bits: z = 14, half the symmetric range's step). What the QDQ
    holds and what the fine-tuning simulation applies."""

    bits: int
    clip: float
    zero_point: int

    @property
    def levels(self) -> int:
        """Steps above zero: 2^b - 1 - z."""
        return 2**self.bits - 1 - self.zero_point

    @property
    def scale(self) -> float:
        """The step, rounded to float32 as ONNX stores it."""
        return float(np.float32(self.clip / self.levels))

    @property
    def codes(self) -> tuple[int, int]:
        """The integer range relative to zero: [-z, 2^b - 1 - z]."""
        return -self.zero_point, self.levels

    @property
    def signed(self) -> bool:
        return self.zero_point > 0

    @property
    def bounds(self) -> tuple[float, float]:
        """The float range the dequantized values span (float32, as computed from the stored scale)."""
        lo, hi = self.codes
        return float(np.float32(self.scale * lo)), float(np.float32(self.scale * hi))


@dataclass(frozen=True)
class DynamicQuant:
    """An activation quantized at run time: uint8 over each batch's own [min(x, 0), max(x, 0)]
    (ONNX's DynamicQuantizeLinear), so nothing is calibrated."""

    bits: int = 8


@dataclass(frozen=True)
class HalfFloat:
    """A tensor rounded to a 16-bit float format (fp16 or bf16)."""

    kind: FloatKind


WeightPlan = Union[QuantizedWeight, "Codebook", HalfFloat]
ActivationPlan = Union[ActivationQuant, DynamicQuant, HalfFloat]


@dataclass(frozen=True)
class LayerQuant:
    """What the export computes for one layer: its weights, its input, and the bias step of an
    integer layer."""

    weight: WeightPlan | None = None
    activation: ActivationPlan | None = None
    bias_scale: np.ndarray | None = None  # int32 bias step per output channel (integer layers with a bias)
    output: HalfFloat | None = None  # a 16-bit float layer writes that format, cast back to float32


@dataclass(frozen=True)
class ExportPlan:
    """The parameters of one policy on one model: per layer (``layers``), and the 8-bit outputs of
    integer layers the export requantizes (``requantized``)."""

    layers: dict[str, LayerQuant] = field(default_factory=dict)
    requantized: dict[str, ActivationQuant] = field(default_factory=dict)

    def merged(self, other: ExportPlan) -> ExportPlan:
        """Both plans' layers (a layer planned by both keeps ``other``'s non-empty entry)."""
        layers = dict(self.layers)
        for name, quant in other.layers.items():
            if name not in layers or quant.weight is not None or quant.activation is not None:
                layers[name] = quant
        return ExportPlan(layers, {**self.requantized, **other.requantized})
