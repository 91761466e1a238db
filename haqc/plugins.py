"""Entry-point groups: how haqc finds its targets and strategies, its own and other packages' alike.

haqc registers its built-ins in the same groups a plugin package uses (setup.cfg), so there is one
discovery path; on a name clash haqc's own entry wins, and a warning names both sources.
"""
from __future__ import annotations

import logging
import re
from importlib.metadata import EntryPoint, entry_points

logger = logging.getLogger(__name__)

BUILTIN_DIST = "haqc-onnx"  # setup.cfg's [metadata] name: entry points of this distribution are built-ins


def registered(group: str, what: str) -> dict[str, EntryPoint]:
    """The ``group``'s entry points by name, haqc's own first; ``what`` names them in warnings."""
    eps = sorted(entry_points(group=group), key=lambda ep: not is_builtin(ep))
    found: dict[str, EntryPoint] = {}
    for ep in eps:
        if ep.name in found:
            logger.warning("%s %r is registered by both %s and %s; using the first",
                           what, ep.name, source(found[ep.name]), source(ep))
            continue
        found[ep.name] = ep
    return found


def is_builtin(ep: EntryPoint) -> bool:
    return ep.dist is not None and re.sub(r"[-_.]+", "-", ep.dist.name).lower() == BUILTIN_DIST


def source(ep: EntryPoint) -> str:
    """"built-in", or "plugin <distribution> <version>"."""
    if is_builtin(ep):
        return "built-in"
    if ep.dist is None:
        return "plugin"
    return f"plugin {ep.dist.name} {ep.dist.version}"


def one_line(err: BaseException) -> str:
    """A plugin's exception as one line with its type (its own bug, reported as such)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
