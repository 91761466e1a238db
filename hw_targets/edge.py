"""The `edge` target: BISMO's published 8x256x8 overlay on a PYNQ-Z1 (Zynq-7020), batch 1.

Its parameters and their sources are data, in configs/edge.toml; this module
is the entry point that the ``haqc.hw_targets`` group names.
"""
from __future__ import annotations

from haqc.hw_targets.base import Target
from haqc.hw_targets.declarative import load_builtin


def target() -> Target:
    return load_builtin("edge")
