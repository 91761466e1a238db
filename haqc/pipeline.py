"""The Python API behind the CLI: import a model, canonicalize it, extract its layers.

Everything the CLI does goes through here, so scripts can do the same.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from typing import Sequence

import onnx

from haqc.hw_targets import cost_summary, load_target
from haqc.passes.base import opset_version
from haqc.passes.canonicalize import canonicalize
from haqc.passes.extract import Extraction, extract_layers
from haqc.passes.load import InputShapes, graph_inputs, load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A canonical model and its layer analysis; the starting point of every command."""

    path: Path
    model: onnx.ModelProto
    extraction: Extraction

    @property
    def layers(self):
        return self.extraction.layers

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in graph_inputs(self.model)]


def prepare(path: str | os.PathLike, input_shapes: InputShapes | None = None) -> Prepared:
    """Load, canonicalize and analyse ``path``; raises InputError with one clear sentence."""
    model = canonicalize(load_model(path, input_shapes))
    return Prepared(Path(path), model, extract_layers(model))


LAYER_FIELDS = ("name", "op", "kind", "c_in", "c_out", "kernel", "stride", "groups", "feature_size", "params", "macs")


def inspect_summary(prepared: Prepared, targets: Sequence[str] = ()) -> dict:
    """The ``haqc inspect --json`` object: per-layer shapes, MACs, normalized HAQ state, and the
    cost on each of ``targets`` (names or TOML files) at w8a8 / w4a4 / w2a2."""
    layers = prepared.layers
    rows = []
    for layer, state in zip(layers, prepared.extraction.state_matrix):
        row = {f: getattr(layer, f) for f in LAYER_FIELDS}
        row["kernel"], row["stride"] = list(layer.kernel), list(layer.stride)
        row["state"] = [round(float(v), 6) for v in state]
        rows.append(row)
    opset = opset_version(prepared.model)
    summary = {
        "model": str(prepared.path),
        "opset": opset,
        "layers": rows,
        "totals": {"layers": len(layers), "params": sum(l.params for l in layers), "macs": sum(l.macs for l in layers)},
    }
    if targets:
        summary["targets"] = {}
        for spec in targets:
            target = load_target(spec)
            costs = cost_summary(target, layers)
            summary["targets"][target.name] = costs["total"]
            for row, per_layer in zip(rows, costs["per_layer"]):
                row.setdefault("targets", {})[target.name] = per_layer
    return summary
