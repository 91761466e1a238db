"""Finding targets: the ``haqc.hw_targets`` entry-point group, and TOML files given by path.

Built-ins register through the same group a third-party package uses (see
setup.cfg), so there is one discovery path. An entry point names a Target
instance, a Target subclass, or a zero-argument callable returning a Target.
A plugin that fails to load is skipped with a warning naming it; the others
still work. Asking for that plugin by name is an InputError.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint

from haqc.hw_targets.base import MeasuredTarget, Target, check_target
from haqc.hw_targets.declarative import load_target_file

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.plugins import one_line, registered, source

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "haqc.hw_targets"

# A tiny fc layer used to ask a target whether it estimates energy.
_PROBE = Layer(
    index=0, name="probe", op="Gemm", kind="fc", c_in=16, c_out=16, kernel=(1, 1), stride=(1, 1),
    groups=1, feature_size=1, out_feature_size=1, rows=1, reduction=16, params=256, macs=256,
    input_elems=16, output_elems=16, weight="probe.w", input="probe.x",
)  # fmt: skip


@dataclass(frozen=True)
class TargetInfo:
    """What ``haqc targets`` lists: a target, where it comes from, and what it can answer."""

    name: str
    source: str  # "built-in", "plugin <distribution> <version>" or "file <path>"
    description: str
    batch: int
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    energy: bool  # False: the target reports energy as unknown

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "batch": self.batch,
            "w_bits": list(self.w_bits),
            "a_bits": list(self.a_bits),
            "energy": self.energy,
        }


def load_target(name_or_path: str) -> Target:
    """A registered target by name, a TOML file by path (anything ending in .toml or containing a '/'),
    or ``ort-cpu@HOST:PORT``: ort-cpu measured by the device runner there (docs/runner.md)."""
    if _is_path(name_or_path):
        return check_target(load_target_file(name_or_path), f"target file {name_or_path}")
    name, at, address = name_or_path.partition("@")
    if at:
        if name != "ort-cpu":
            raise InputError(f"target {name_or_path!r}: only ort-cpu measures on a device runner; "
                             "write ort-cpu@HOST:PORT")
        from haqc.hw_targets.ort_cpu import RemoteOrtTarget  # onnx, only for a measured target

        return RemoteOrtTarget(address)
    registered = _registered()
    if name_or_path not in registered:
        names = ", ".join(sorted(registered)) or "none"
        raise InputError(
            f"unknown target {name_or_path!r}; available: {names} (or give the path of a .toml target file)"
        )
    ep = registered[name_or_path]
    try:
        return _instantiate(ep)
    except InputError:
        raise
    except Exception as err:  # a plugin's own bug, reported as the user's bad input: one line, exit 2
        raise InputError(
            f"hardware target plugin {ep.name!r} ({source(ep)}) failed to load: {one_line(err)}"
        ) from err


def available_targets(files: Sequence[str] = ()) -> list[TargetInfo]:
    """Every registered target that loads (broken plugins are skipped with a warning), then ``files``."""
    infos = []
    for name, ep in sorted(_registered().items()):
        try:
            target = _instantiate(ep)
            infos.append(_info(name, source(ep), target))
        except Exception as err:  # one broken plugin must not hide the others
            logger.warning(
                "skipping hardware target plugin %r (%s): it failed to load: %s",
                name, source(ep), one_line(err),
            )  # fmt: skip
    for path in files:
        target = check_target(load_target_file(path), f"target file {path}")
        infos.append(_info(target.name, f"file {path}", target))
    return infos


def _registered() -> dict[str, EntryPoint]:
    """Entry points by target name; on a name clash the built-in, else the first found, wins."""
    return registered(ENTRY_POINT_GROUP, "hardware target")


def _instantiate(ep: EntryPoint) -> Target:
    obj = ep.load()
    target = obj if isinstance(obj, Target) else obj()
    target = check_target(target, f"hardware target plugin {ep.name!r} ({source(ep)})")
    logger.debug("loaded hardware target %r from %s", ep.name, source(ep))
    return target


def _info(name: str, source: str, target: Target) -> TargetInfo:
    energy = not isinstance(target, MeasuredTarget) and target.cost(_PROBE, 8, 8).energy_j is not None
    return TargetInfo(
        name, source, target.description, target.batch, tuple(target.w_bits), tuple(target.a_bits), energy
    )


def _is_path(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(".toml") or "/" in name_or_path or os.sep in name_or_path
