"""The prepared model: a canonical ONNX model, its interface and its layer analysis.

Every command starts from a ``Prepared`` (``haqc.pipeline.prepare`` builds it: load,
canonicalize, extract). It is plain data, so the stages below the pipeline (the
quantizer, fine-tuning, the measured targets' layer isolation) take it without
importing the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import networkx as nx
import numpy as np
import onnx
from onnx import helper

from haqc.errors import InputError
from haqc.layers import Layer

# Input name -> the shape a model is analysed at (fixing its dynamic dims).
InputShapes = dict[str, tuple[int, ...]]
Dim = Union[int, str, None]
# (input name, shape with an int per fixed dim and a str/None per dynamic one, numpy dtype)
InputSpec = tuple[str, tuple[Dim, ...], np.dtype]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (IR < 4 lists both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers) as (name, shape, dtype)."""
    specs = []
    for value in graph_inputs(model):
        if not value.type.HasField("tensor_type"):
            raise InputError(f"model input {value.name!r} is not a tensor; haqc feeds tensor inputs only")
        tensor = value.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tensor.shape.dim
        )
        specs.append((value.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return specs


@dataclass(frozen=True)
class FloatNode:
    """A main-graph node haqc leaves in float, and why."""

    name: str
    op: str
    reason: str


@dataclass(frozen=True)
class Extraction:
    """The layers, their min-max normalized HAQ state matrix, the model's dataflow graph, and
    the compute that stays float."""

    layers: list[Layer]
    state_matrix: np.ndarray  # (n_layers, len(STATE_FEATURES)), float32
    graph: nx.DiGraph  # nodes: ONNX node names (attr op, layer index or None); edges: tensors
    kept_float: list[FloatNode] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """A canonical model and its layer analysis; the starting point of every command.

    ``model`` keeps the original interface (dynamic dims stay dynamic): it is what
    is calibrated, quantized, exported and evaluated, with the data's own shapes.
    ``extraction`` analysed the same graph (same node names) at ``input_shapes``.
    """

    path: Path
    model: onnx.ModelProto
    extraction: Extraction
    input_shapes: InputShapes = field(default_factory=dict)
    source_opset: int | None = None  # the opset of the model as given (``model`` is at the canonical one)

    @property
    def layers(self) -> list[Layer]:
        return self.extraction.layers

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in graph_inputs(self.model)]
