"""The `bitfusion` target: the ISCA 2018 Bit Fusion array (512 fusion units, 500 MHz, 45 nm), batch 1.

Its parameters and their sources are data, in configs/bitfusion.toml; this
module is the entry point that the ``haqc.hw_targets`` group names.
"""
from __future__ import annotations

from haqc.hw_targets.base import Target
from haqc.hw_targets.declarative import load_builtin


def target() -> Target:
    return load_builtin("bitfusion")
