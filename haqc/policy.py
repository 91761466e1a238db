"""Policies: which precision option each layer gets.

A policy maps layer names to ``haqc.precision.Option``, any mix of formats. It is
what the search produces, what the exporters consume, and what a report stores
(by option name, with the widths beside it), so ``haqc quantize --policy`` can
re-apply it; files written before options had names (widths only, and a global
``method``) still read back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.precision import FloatFormat, IntFormat, KMeansFormat, Option, parse_option

Policy = dict[str, Option]


def uniform_policy(layers: Iterable[Layer], option: Option) -> Policy:
    """Every layer at ``option``; an embedding lookup, whose input is indices, takes the option's
    weights alone: int8 rows for any integer format (its rows are gathered as int8, then scaled),
    the codebook or the 16-bit float format as given."""
    return {layer.name: option if layer.kind != "embedding" else _lookup(option) for layer in layers}


def _lookup(option: Option) -> Option:
    w = option.weight
    if isinstance(w, IntFormat):
        return Option(IntFormat(8))
    return option if isinstance(w, FloatFormat) else Option(w)


def policy_to_json(policy: Policy) -> list[dict]:
    return [{"layer": name, "option": o.name, "w_bits": o.w_bits, "a_bits": o.a_bits} for name, o in policy.items()]


def policy_from_json(entries: list[dict], layers: list[Layer], source: str = "policy", method: str = "linear") -> Policy:
    """Validate a JSON policy against the model's layers (names must match exactly). Entries name
    their option; older ones give widths, weight-only widths meaning codebooks where ``method`` was kmeans."""
    try:
        policy = {str(e["layer"]): _option(e, method) for e in entries}
    except InputError as err:
        raise InputError(f"{source}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InputError(f"{source} is malformed; each entry needs 'layer' and 'option' (or 'w_bits' and 'a_bits')") from None
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
    method = (data.get("search") or {}).get("method") or data.get("method") if isinstance(data, dict) else None
    return policy_from_json(entries, layers, source=str(path), method=method or "linear")


def _option(entry: dict, method: str) -> Option:
    option = parse_option(entry["option"]) if "option" in entry else Option(_bits(entry["w_bits"]), _bits(entry["a_bits"]))
    if method == "kmeans" and isinstance(option.weight, IntFormat) and option.activation is None and not option.weight.block:
        return Option(KMeansFormat(option.weight.bits))  # written when one global method said "codebooks"
    return option


def _bits(value) -> int | None:
    if value is None or value == "float":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(value)
    return value
