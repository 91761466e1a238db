"""What the runner refuses before ONNX Runtime sees a model: custom-op domains and external data.

The runner may not import onnx, so this walks the ModelProto's protobuf wire format itself,
reading only the fields that matter: opset imports and node domains (a domain ONNX Runtime
does not ship needs a custom-op library, which the runner never loads), and tensors whose data
lives in another file (a path the sender chose, read on the device). Everything else is skipped
unread. ONNX Runtime would refuse both anyway (no custom-op library is registered; bytes have no
directory for external data); checking first makes the refusal one clear line.
"""
from __future__ import annotations

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_DOMAIN, _EXTERNAL, _LOCATION = "domain", "external", "location"
# Message -> {field number: the message it holds, or what the field is}; from onnx.proto.
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 8: "opset", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute", 7: _DOMAIN},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: _EXTERNAL, 14: _LOCATION},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 9: "opset"},
    "opset": {1: _DOMAIN},
}
_MAX_DEPTH = 64  # graphs nest in attributes (If, Loop, Scan); deeper than this is an attack, not a model
_EXTERNAL_LOCATION = 1  # TensorProto.DataLocation.EXTERNAL


class Refused(ValueError):
    """A model the runner does not run; the text is the one line sent back."""


def screen(model: bytes) -> None:
    """Raise Refused if ``model`` is not a protobuf ModelProto, uses a custom-op domain or external data."""
    if not model:
        raise Refused("the model is empty")
    _walk(memoryview(model), "model", 0)


def _walk(data: memoryview, message: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise Refused(f"the model nests graphs more than {_MAX_DEPTH} deep")
    fields = _SCHEMA[message]
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Refused("the model is not an ONNX protobuf (field number 0)")
        if wire == 0:
            value, pos = _varint(data, pos)
            if fields.get(number) == _LOCATION and value == _EXTERNAL_LOCATION:
                raise Refused("the model references external data files; send a model with its weights inside it")
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise Refused("the model is not an ONNX protobuf (a field runs past its end)")
            what, value = fields.get(number), data[pos:pos + length]
            pos += length
            if what == _EXTERNAL:
                raise Refused("the model references external data files; send a model with its weights inside it")
            if what == _DOMAIN:
                domain = bytes(value).decode("utf-8", "replace")
                if domain not in ALLOWED_DOMAINS:
                    raise Refused(f"the model uses the custom-op domain {domain!r}; the runner runs only ONNX "
                                  f"Runtime's own ops ({', '.join(sorted(d or repr(d) for d in ALLOWED_DOMAINS))})")
            elif what in _SCHEMA:
                _walk(value, what, depth + 1)
        else:
            raise Refused(f"the model is not an ONNX protobuf (wire type {wire})")
    if pos != len(data):
        raise Refused("the model is not an ONNX protobuf (truncated)")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise Refused("the model is not an ONNX protobuf (bad varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
