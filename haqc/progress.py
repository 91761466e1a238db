"""Progress bars on stderr for the stages that take more than a few seconds (tqdm).

On by default where stderr is a terminal; off in logs (CI) and wherever the
caller turns them off (the CLI's --quiet and --json).
"""
from __future__ import annotations

import sys

from tqdm import tqdm

_enabled: bool | None = None  # None: where stderr is a terminal


def set_progress(enabled: bool | None) -> None:
    """Show bars (True), hide them (False), or show them only on a terminal (None)."""
    global _enabled
    _enabled = enabled


def progress_bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A bar for one stage; it stays on screen when done, with the stage's time."""
    shown = _enabled if _enabled is not None else sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)
