"""The pass interface every graph pass follows (after onnx-ir's passes).

A pass checks its preconditions, then maps a model to a new model (or to an
analysis result) without mutating its input, so passes compose and a failed
pass leaves the caller's model intact.
"""
from __future__ import annotations

import abc
from typing import Callable, Generic, TypeVar

import onnx

R = TypeVar("R")


class Pass(abc.ABC, Generic[R]):
    """One graph transformation or analysis; ``pass_(model)`` runs it."""

    def requires(self, model: onnx.ModelProto) -> None:
        """Raise InputError when ``model`` does not meet this pass's preconditions."""

    @abc.abstractmethod
    def call(self, model: onnx.ModelProto) -> R:
        """Run the pass; must not modify ``model``."""

    def __call__(self, model: onnx.ModelProto) -> R:
        self.requires(model)
        return self.call(model)


def _copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Copy ``src``'s set fields into ``dst`` except ``skip`` (sub-messages are copied, not shared)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def without_initializers(model: onnx.ModelProto, skip_graph_fields: tuple[str, ...] = ("initializer",)) -> onnx.ModelProto:
    """A copy of ``model`` without its graph's ``skip_graph_fields`` (by default, all weight data).

    Copying or serializing a large model holds every weight again; passes that
    only need the graph's structure (shape inference, the checker, a
    calibration session fed its weights separately) start from this and add
    back what they need.
    """
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph",))
    _copy_fields(model.graph, out.graph, skip=skip_graph_fields)
    return out


def initializers_as_inputs(
    model: onnx.ModelProto, moved: Callable[[onnx.TensorProto], bool]
) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``model`` whose initializers selected by ``moved`` are typed graph inputs
    instead (without data), and those initializers.

    The checker and ONNX Runtime take a serialized model, which holds every weight again;
    they get the graph this way and the large weights some other way (or not at all).
    """
    light = without_initializers(model)
    declared = {i.name for i in model.graph.input}
    taken = []
    for tensor in model.graph.initializer:
        if not moved(tensor):
            light.graph.initializer.append(tensor)
            continue
        taken.append(tensor)
        if tensor.name not in declared:
            light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return light, taken


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (1 when it declares none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: passes return new models and never edit their input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
