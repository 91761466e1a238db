"""The runner's wire format: one message each way per connection.

A message is ``HQR1``, a 4-byte header length and an 8-byte body length (big-endian), a
JSON header (an object) and a binary body (model bytes, or input arrays back to back).
Lengths come first so the reader can refuse an oversized message before reading it, and
the body is raw bytes so a model or an array is never re-encoded.
"""
from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping

import numpy as np

MAGIC = b"HQR1"
_PREFIX = struct.Struct(">4sIQ")
MAX_HEADER_BYTES = 1 << 20
# Input dtypes a feed may have: numbers and booleans, never Python objects.
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
          "uint64", "bool")


class ProtocolError(ValueError):
    """A message that does not follow the wire format (its text is the one line sent back)."""


def send(sock: socket.socket, header: Mapping, body: bytes = b"") -> None:
    data = json.dumps(header).encode()
    sock.sendall(_PREFIX.pack(MAGIC, len(data), len(body)) + data)
    if body:
        sock.sendall(body)


def read_prefix(sock: socket.socket) -> tuple[int, int]:
    """``(header bytes, body bytes)`` of the next message; a ProtocolError if it is not one."""
    magic, header_len, body_len = _PREFIX.unpack(recv_exact(sock, _PREFIX.size))
    if magic != MAGIC:
        raise ProtocolError("not a haqc runner message (bad magic bytes); talk to the runner with haqc's client")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header of {header_len} bytes is over the {MAX_HEADER_BYTES}-byte bound")
    return header_len, body_len


def read_header(sock: socket.socket, length: int) -> dict:
    try:
        header = json.loads(recv_exact(sock, length))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"message header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ProtocolError("message header is not a JSON object")
    return header


def receive(sock: socket.socket, max_body: int) -> tuple[dict, bytes]:
    """One whole message, its body at most ``max_body`` bytes (the client's side)."""
    header_len, body_len = read_prefix(sock)
    if body_len > max_body:
        raise ProtocolError(f"message body of {body_len} bytes is over the {max_body}-byte bound")
    return read_header(sock, header_len), recv_exact(sock, body_len)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; a ConnectionError if the peer closes first."""
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError(f"connection closed {n - left} bytes into a {n}-byte read")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[list[dict], bytes]:
    """``(specs, body)``: each array's name, dtype and shape, and their bytes back to back."""
    specs, parts = [], []
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        specs.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        parts.append(a.tobytes())
    return specs, b"".join(parts)


def unpack_arrays(specs: object, body: bytes) -> dict[str, np.ndarray]:
    """The arrays ``pack_arrays`` packed, checked against the body's length."""
    if not isinstance(specs, list):
        raise ProtocolError("`inputs` must be a list of {name, dtype, shape}")
    arrays, offset = {}, 0
    for spec in specs:
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec.get("dtype") in DTYPES
                and isinstance(spec.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in spec["shape"])):
            raise ProtocolError(f"bad input spec {str(spec)[:200]}; give name, dtype (one of {', '.join(DTYPES)}) "
                                "and a shape of non-negative integers")
        dtype = np.dtype(spec["dtype"])
        n = int(np.prod(spec["shape"], dtype=np.float64)) * dtype.itemsize
        if offset + n > len(body):
            raise ProtocolError(f"input {spec['name']!r} needs {n} bytes; the body has {len(body) - offset} left")
        arrays[spec["name"]] = np.frombuffer(body, dtype, n // dtype.itemsize, offset).reshape(spec["shape"])
        offset += n
    if offset != len(body):
        raise ProtocolError(f"the body has {len(body) - offset} bytes beyond its inputs")
    return arrays
