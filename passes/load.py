"""Import: read an ONNX file (with external data), validate it, and check the input shapes to analyse it at.

Everything a user can get wrong about the file itself is caught here and
reported as one ``InputError`` sentence, so later passes may assume a valid
model. User input shapes only say what haqc analyses and calibrates with:
``read_model`` keeps the model's own interface (what every output keeps),
``with_input_shapes`` makes the fixed-shape copy the analysis runs on.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from haqc.errors import InputError, first_line
from haqc.prepared import InputShapes, graph_inputs

logger = logging.getLogger(__name__)

_SHAPE_RE = re.compile(r"^([^=]+)=(\d+(?:x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` (the ``--input-shape`` option)."""
    match = _SHAPE_RE.match(text.strip())
    if not match or any(int(d) <= 0 for d in match.group(2).split("x")):
        raise InputError(
            f"malformed --input-shape {text!r}; write NAME=DIMxDIMx... with positive "
            "integers, e.g. input=1x3x224x224"
        )
    return match.group(1), tuple(int(d) for d in match.group(2).split("x"))


def load_model(path: str | os.PathLike, input_shapes: InputShapes | None = None) -> onnx.ModelProto:
    """Load and validate an ONNX model, with ``input_shapes`` applied (see ``with_input_shapes``)."""
    return with_input_shapes(read_model(path), input_shapes or {})


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and validate an ONNX model, keeping its interface (dynamic dims stay dynamic)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an ONNX file; pass the .onnx file inside it")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied; fix its permissions")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path} is not a valid ONNX model ({first_line(err)}); re-export it") from None
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{path} is not an ONNX model (no graph nodes or opset); pass a .onnx model file")
    _load_external_data(model, path)
    return _validated(model, str(path))


def validate_model(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """An in-memory model, checked as ``read_model`` checks a file (a copy: the input is not changed)."""
    if not model.graph.node or not model.opset_import:
        raise InputError(f"{label} is not an ONNX model (no graph nodes or opset); pass a model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return _validated(out, label)


def _validated(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise InputError(f"{label} fails the ONNX checker: {first_line(err)}; fix or re-export the model") from None
    _strip_initializer_inputs(model)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not external:
        return
    base = path.parent
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not (base / location).is_file():
            raise InputError(
                f"external data file {location!r} for tensor {tensor.name!r} not found next to "
                f"{path}; copy it into {base}"
            )
    try:
        load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the external data of {path}: {first_line(err)}") from None


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _strip_initializer_inputs(model: onnx.ModelProto) -> None:
    """Make initializers constants: IR >= 4 no longer needs them listed as inputs."""
    real = graph_inputs(model)
    if len(real) != len(model.graph.input):
        model.ir_version = max(model.ir_version, 4)
        del model.graph.input[:]
        model.graph.input.extend(real)


def with_input_shapes(model: onnx.ModelProto, shapes: InputShapes) -> onnx.ModelProto:
    """A copy of ``model`` with ``shapes`` fixed on its inputs, for analysis.

    A dynamic leading (batch) dimension may stay dynamic: analysis counts one
    sample. Any other dynamic dimension (a named one, ``-1`` or unset) must be
    given; one error names every input that still needs a shape.
    """
    check_input_shapes(model, shapes)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    return out


def check_input_shapes(model: onnx.ModelProto, shapes: InputShapes) -> None:
    """Raise InputError unless ``shapes`` fit ``model``'s inputs and fix every dynamic non-batch dim."""
    inputs = {i.name: i for i in graph_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise InputError(
            f"--input-shape names unknown input {unknown[0]!r}; the model's inputs are: " + ", ".join(inputs)
        )
    missing = []
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name in shapes:
            shape = shapes[name]
            if len(shape) != len(dims):
                raise InputError(
                    f"--input-shape for {name!r} has {len(shape)} dims but the model's input has "
                    f"{len(dims)} {_shape_text(dims)}; give all {len(dims)} dims"
                )
            for dim, size in zip(dims, shape):
                if _fixed(dim) and dim.dim_value != size:
                    raise InputError(
                        f"--input-shape {name}={'x'.join(map(str, shape))} contradicts the model's "
                        f"fixed shape {_shape_text(dims)}"
                    )
        elif any(not _fixed(d) for d in list(dims)[1:]):
            missing.append(value)
    if missing:
        what = ", ".join(f"{v.name!r} {_shape_text(v.type.tensor_type.shape.dim)}" for v in missing)
        batch = {d.dim_param for v in inputs.values() for d in v.type.tensor_type.shape.dim[:1] if d.dim_param}
        hint = " ".join(f"--input-shape {v.name}={'x'.join(map(str, suggest_shape(v, batch)))}" for v in missing)
        raise InputError(
            f"input{'s' if len(missing) > 1 else ''} {what} {'have' if len(missing) > 1 else 'has'} dynamic "
            f"dimensions; give the sizes to analyse at, e.g. {hint}"
        )


# Sizes suggested for a dynamic dim the model does not fix: an image side, a sequence length.
_SUGGESTED_SIDE = 224
_SUGGESTED_LENGTH = 128


def suggest_shape(value: onnx.ValueInfoProto, batch_names: set[str] = frozenset()) -> tuple[int, ...]:
    """A shape to analyse ``value`` at: its fixed dims, batch 1 (the leading dim, or a dim named
    like some input's leading dim, e.g. an RNN state's [layers, batch, hidden]), and a typical
    size for the other dynamic dims (an image side for the spatial dims of a 4-D input, else a
    sequence length)."""
    dims = list(value.type.tensor_type.shape.dim)
    out = []
    for i, dim in enumerate(dims):
        if _fixed(dim):
            out.append(dim.dim_value)
        elif i == 0 or dim.dim_param in batch_names:
            out.append(1)
        else:
            out.append(_SUGGESTED_SIDE if len(dims) == 4 and i >= 2 else _SUGGESTED_LENGTH)
    return tuple(out)


def _fixed(dim) -> bool:
    """A dim with a positive size; a named dim, ``-1`` (old exporters' dynamic) or an unset one is dynamic."""
    return dim.HasField("dim_value") and dim.dim_value > 0


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if _fixed(d) else (d.dim_param or "?") for d in dims) + "]"
