"""The `cloud` target: the BISMO overlay family scaled to a VU9P (AWS F1), batch 16.

Its parameters and their sources are data, in configs/cloud.toml; this module
is the entry point that the ``haqc.hw_targets`` group names.
"""
from __future__ import annotations

from haqc.hw_targets.base import Target
from haqc.hw_targets.declarative import load_builtin


def target() -> Target:
    return load_builtin("cloud")
