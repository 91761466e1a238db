"""Policies: which precision option each layer gets.

A policy maps layer names to ``haqc.precision.Option``; ``None`` bits mean the
tensor is left in float. It is what the search produces, what the quantize
passes consume, and what a report stores, so ``haqc quantize --policy`` can
re-apply it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.precision import Option

Policy = dict[str, Option]


def uniform_policy(layers: Iterable[Layer], option: Option) -> Policy:
    return {layer.name: option for layer in layers}


def policy_to_json(policy: Policy) -> list[dict]:
    return [{"layer": name, "option": o.name, "w_bits": o.w_bits, "a_bits": o.a_bits} for name, o in policy.items()]


def policy_from_json(entries: list[dict], layers: list[Layer], source: str = "policy") -> Policy:
    """Validate a JSON policy against the model's layers (names must match exactly)."""
    try:
        policy = {str(e["layer"]): Option(_bits(e.get("w_bits")), _bits(e.get("a_bits"))) for e in entries}
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
