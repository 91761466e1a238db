"""The quantizable-layer record shared by passes, hardware targets and search.

It is plain data (no protobufs), so hardware targets and the search can use it
without knowing ONNX. The extract pass (haqc.passes.extract) builds it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

LayerKind = Literal["conv", "depthwise", "fc", "matmul", "embedding"]

# Names of Layer.state columns, in the order HAQ documents (the env appends the
# per-step weight/activation flag and previous action).
STATE_FEATURES: tuple[str, ...] = (
    "index",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "feature_size",
    "params",
    "is_depthwise",
)


@dataclass(frozen=True)
class Layer:
    """One quantizable layer, seen as a (rows x K) by (K x c_out) product per sample.

    ``rows`` is how many output vectors one sample produces (output h*w for a
    convolution, the product of leading dims for a MatMul, 1 for an fc layer);
    ``reduction`` is K, the length of each dot product (c_in/groups * kh * kw).
    A hardware target needs nothing else to cost the layer.
    """

    index: int
    name: str  # the ONNX node name (unique after canonicalization)
    op: str  # Conv, ConvTranspose, Gemm, MatMul, Gather (an embedding: ``input`` is its indices)
    kind: LayerKind
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    feature_size: int  # input h*w (1 for fc / matmul)
    out_feature_size: int  # output h*w (1 for fc / matmul)
    rows: int
    reduction: int
    params: int  # weight elements (bias excluded)
    macs: int  # multiply-accumulates per sample
    input_elems: int  # activation elements read per sample
    output_elems: int  # activation elements written per sample
    weight: str  # initializer name of the weight
    input: str  # tensor name of the quantized activation input
    weight_axis: int = 0  # the weight's output-channel axis (per-channel quantization)
    input_shape: tuple[int, ...] = ()  # of ``input``, one sample where the batch is dynamic (measured targets)

    @property
    def state(self) -> list[float]:
        """The HAQ static state features, raw (unnormalized), in STATE_FEATURES order."""
        return [
            float(self.index),
            float(self.c_in),
            float(self.c_out),
            float(self.kernel[0]),
            # HAQ codes an fc layer as kernel 1, stride 0.
            float(self.stride[0]) if self.kind in ("conv", "depthwise") else 0.0,
            float(self.feature_size),
            float(self.params),
            1.0 if self.kind == "depthwise" else 0.0,
        ]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kernel"] = list(self.kernel)
        d["stride"] = list(self.stride)
        d["input_shape"] = list(self.input_shape)
        return d


def weight_leaders(layers: list[Layer]) -> tuple[int, ...]:
    """For each layer, the first layer that reads the same weight the same way (op, channel axis): a
    weight shared by layers (an LSTM unrolled over time steps, tied embeddings) is stored once, so
    those layers take one precision together."""
    first: dict[tuple[str, str, int], int] = {}
    return tuple(first.setdefault((layer.weight, layer.op, layer.weight_axis), i) for i, layer in enumerate(layers))
