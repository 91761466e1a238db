"""Op facts: what haqc knows about ONNX ops, in one place.

Which ops are layers and where their weight, input and bias are; which ops only move
values (a quantization before them equals one after them); which activations an
integer kernel fuses. The passes, fine-tuning and layer isolation read these instead
of keeping their own lists.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerOp:
    """Where a quantizable op keeps its operands (input indices)."""

    weight: int  # the constant weight
    activation: int  # what the layer reads: a float activation, or (``indexed``) integer indices
    bias: int | None = None
    indexed: bool = False  # an embedding lookup: its input is indices, never quantized


LAYER_OPS: dict[str, LayerOp] = {
    "Conv": LayerOp(weight=1, activation=0, bias=2),
    "ConvTranspose": LayerOp(weight=1, activation=0, bias=2),
    "Gemm": LayerOp(weight=1, activation=0, bias=2),
    "MatMul": LayerOp(weight=1, activation=0),
    "Gather": LayerOp(weight=0, activation=1, indexed=True),  # a constant table: an embedding
}
# Ops whose output is their input's values in another shape: a QDQ before them gives the numbers one after would.
RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
# Ops that pass every value (and a class dimension) through unchanged.
PASS_THROUGH = ("Identity", "Cast", *RESHAPES)
# Activations an integer kernel applies before it writes its output: ONNX Runtime drops a Relu or
# Clip between a quantized Conv / Gemm and the QuantizeLinear of its output when the quantized
# range lies inside the activation's.
FUSED_ACTIVATIONS = ("Relu", "Clip")
# What runs inside an integer chain between two integer layers.
FOLDED_IN_CHAINS = (*FUSED_ACTIVATIONS, *RESHAPES)
# Ops whose outputs place values by their size (the k largest, the boxes a suppression keeps, the
# positions of nonzeros): what they produce reorders under any noise, so it is compared where it
# was selected from (haqc.evaluation.selection_sources).
SELECTIONS = ("TopK", "NonMaxSuppression", "NonZero", "Unique")
