"""Import: read an ONNX file (with external data), validate it, and fix its input shapes.

Everything a user can get wrong about the file itself is caught here and
reported as one ``InputError`` sentence, so later passes may assume a valid
model with known shapes (but a possibly dynamic batch).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from haqc.errors import InputError, first_line

logger = logging.getLogger(__name__)

InputShapes = dict[str, tuple[int, ...]]

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


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (IR < 4 lists both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def load_model(path: str | os.PathLike, input_shapes: InputShapes | None = None) -> onnx.ModelProto:
    """Load and validate an ONNX model; apply user input shapes.

    A dynamic leading (batch) dimension may stay dynamic: ONNX Runtime then
    evaluates any batch size, and analysis costs one sample. Any other dynamic
    dimension must be fixed by ``input_shapes``.
    """
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
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise InputError(f"{path} fails the ONNX checker: {first_line(err)}; fix or re-export the model") from None
    _strip_initializer_inputs(model)
    _apply_input_shapes(model, input_shapes or {})
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


def _apply_input_shapes(model: onnx.ModelProto, shapes: InputShapes) -> None:
    inputs = {i.name: i for i in model.graph.input}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise InputError(
            f"--input-shape names unknown input {unknown[0]!r}; the model's inputs are: "
            + ", ".join(inputs)
        )
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name in shapes:
            shape = shapes[name]
            if len(shape) != len(dims):
                raise InputError(
                    f"--input-shape for {name!r} has {len(shape)} dims but the model's input has "
                    f"{len(dims)}; give all {len(dims)} dims"
                )
            for dim, size in zip(dims, shape):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise InputError(
                        f"--input-shape {name}={'x'.join(map(str, shape))} contradicts the model's "
                        f"fixed shape {_shape_text(dims)}"
                    )
                dim.Clear()
                dim.dim_value = size
            continue
        dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value") or d.dim_value <= 0]
        if [i for i in dynamic if i != 0]:
            raise InputError(
                f"input {name!r} has dynamic dimensions {_shape_text(dims)}; fix them with "
                f"--input-shape {name}=" + "x".join("1" if i in dynamic else str(d.dim_value) for i, d in enumerate(dims))
            )


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"
