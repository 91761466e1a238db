"""Bitwidth policies: which (weight bits, activation bits) each layer gets.

A policy maps layer names to ``LayerBits``; ``None`` bits mean the tensor is
left in float. It is what the search produces, what the quantize passes
consume, and what a report stores, so ``haqc quantize --policy`` can re-apply it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from haqc.errors import InputError
from haqc.layers import Layer

MIN_BITS, MAX_BITS = 1, 8


@dataclass(frozen=True)
class LayerBits:
    w_bits: int | None  # None: weights stay float
    a_bits: int | None  # None: the activation input stays float

    def __post_init__(self) -> None:
        for bits in (self.w_bits, self.a_bits):
            if bits is not None and not (MIN_BITS <= bits <= MAX_BITS):
                raise InputError(f"bitwidth {bits} is out of range; use {MIN_BITS}..{MAX_BITS} or 'float'")


Policy = dict[str, LayerBits]

_BITS_RE = re.compile(r"^w(\d+|f(?:loat)?)a(\d+|f(?:loat)?)$")


def parse_bits(text: str) -> LayerBits:
    """Parse ``w4a8`` (or ``w8af`` / ``wfloata8`` for float) as given to ``--bits``."""
    match = _BITS_RE.match(text.strip().lower())
    if not match:
        raise InputError(f"malformed --bits {text!r}; write wNaM, e.g. w4a8 (N, M in 1..8, or f for float)")
    w, a = (None if g.startswith("f") else int(g) for g in match.groups())
    return LayerBits(w, a)


def uniform_policy(layers: Iterable[Layer], bits: LayerBits) -> Policy:
    return {layer.name: bits for layer in layers}


def policy_to_json(policy: Policy) -> list[dict]:
    return [{"layer": name, "w_bits": b.w_bits, "a_bits": b.a_bits} for name, b in policy.items()]


def policy_from_json(entries: list[dict], layers: list[Layer], source: str = "policy") -> Policy:
    """Validate a JSON policy against the model's layers (names must match exactly)."""
    try:
        policy = {str(e["layer"]): LayerBits(_bits(e.get("w_bits")), _bits(e.get("a_bits"))) for e in entries}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source} is malformed; each entry needs 'layer', 'w_bits' and 'a_bits'") from None
    names = [layer.name for layer in layers]
    unknown = [n for n in policy if n not in names]
    missing = [n for n in names if n not in policy]
    if unknown or missing:
        which = f"unknown layer {unknown[0]!r}" if unknown else f"no entry for layer {missing[0]!r}"
        raise InputError(f"{source} does not match this model ({which}); was it made for another model?")
    return {n: policy[n] for n in names}


def load_policy(path: str | Path, layers: list[Layer]) -> Policy:
    """Read a policy file: a list of entries, or a search report holding one under "policy"."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"policy file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read policy file {path}: {err}") from None
    entries = data.get("policy") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputError(f"{path} holds no policy; expected a list of layer entries or a report with 'policy'")
    return policy_from_json(entries, layers, source=str(path))


def _bits(value) -> int | None:
    if value is None or value == "float":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(value)
    return value
