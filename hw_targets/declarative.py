"""Targets described by a TOML file: a model family plus its parameters, no code.

A file names the family (``model = "bitserial"`` or ``"bitfusion"``) and gives
that family's parameter fields at the top level, plus an optional ``name``,
``description`` and ``[capabilities]`` table (``haqc.capabilities``). The built-in
targets are such files (``configs/``), so a file
with the same numbers reproduces a built-in exactly. Format:
docs/writing_targets.md.
"""
from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from haqc.hw_targets.base import ParametricTarget
from haqc.hw_targets.bitserial import BitSerialOverlay
from haqc.hw_targets.fusion_array import BitFusionArray

from haqc.capabilities import Capabilities, capabilities_from_mapping
from haqc.errors import InputError

logger = logging.getLogger(__name__)

FAMILIES: dict[str, type[ParametricTarget]] = {cls.family: cls for cls in (BitFusionArray, BitSerialOverlay)}
META_FIELDS = ("model", "name", "description", "capabilities")
CONFIG_DIR = Path(__file__).with_name("configs")


def load_target_file(path: str | os.PathLike[str]) -> ParametricTarget:
    """Read a TOML target description; any problem is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"target file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"target file {path} is not valid TOML ({err})") from None
    return target_from_mapping(data, origin=f"target file {path}", default_name=path.stem)


def target_from_mapping(data: Mapping[str, Any], origin: str, default_name: str) -> ParametricTarget:
    """Build a target from already-parsed TOML data; ``origin`` prefixes error messages."""
    families = ", ".join(sorted(FAMILIES))
    family = data.get("model")
    if family is None:
        raise InputError(f"{origin} misses field 'model' (one of: {families})")
    if family not in FAMILIES:
        raise InputError(f"{origin} has unknown model {family!r}; expected one of: {families}")
    cls = FAMILIES[family]
    fields = cls.Params.field_names()
    unknown = sorted(set(data) - set(META_FIELDS) - set(fields))
    if unknown:
        raise InputError(
            f"{origin} has unknown field {unknown[0]!r}; model {family!r} takes: {', '.join(META_FIELDS + fields)}"
        )
    missing = [f for f in cls.Params.required_fields() if f not in data]
    if missing:
        raise InputError(f"{origin} misses field {missing[0]!r} (required by model {family!r})")
    for key in ("name", "description"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise InputError(f"{origin} has {key} {data[key]!r}; it must be a non-empty string")
    try:
        params = cls.Params(**{k: v for k, v in data.items() if k not in META_FIELDS})
    except InputError as err:
        raise InputError(f"{origin}: {err}") from None
    name = data.get("name", default_name)
    description = data.get("description", f"{family} model from {origin}")
    caps = data.get("capabilities", {})
    if not isinstance(caps, Mapping):
        raise InputError(f"{origin}: capabilities must be a table ([capabilities])")
    capabilities = capabilities_from_mapping(caps, f"{origin} [capabilities]", Capabilities()) if caps else None
    logger.debug("loaded %s target %r from %s", family, name, origin)
    return cls(params, name=name, description=description, capabilities=capabilities)


def load_builtin(name: str) -> ParametricTarget:
    """A built-in target: its parameters and their sources live in ``configs/<name>.toml``."""
    return load_target_file(CONFIG_DIR / f"{name}.toml")
