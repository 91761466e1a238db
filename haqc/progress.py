"""Progress bars on stderr for the stages that take more than a few seconds (tqdm).

On by default where stderr is a terminal; off in logs (CI) and wherever the
caller turns them off (the CLI's --quiet and --json). In the foundation, so
every stage that loops long (calibration, a measured cost table, probes, the
search, fine-tuning, k-means export) draws its bar the same way.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable

from tqdm import tqdm

_enabled: bool | None = None  # None: where stderr is a terminal
# The size assumed on a terminal that reports none (a pseudo-terminal without a size, as `script` and
# some CI runners open): tqdm would fit its bar into 0 columns and below row -1, and draw nothing.
FALLBACK_SIZE = (100, 20)
# A bar appears once its stage has run this long: a stage that ends sooner (a cached cost table,
# a small calibration set) leaves no line behind.
DELAY_S = 1.0


class Stages:
    """Wall time of consecutive stages, where a run's time went (the report's ``stages``):
    ``done(name)`` closes the stage that ran since the previous call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._last, 3)
        self._last = now


def set_progress(enabled: bool | None) -> None:
    """Show bars (True), hide them (False), or show them only on a terminal (None)."""
    global _enabled
    _enabled = enabled


def progress_bar(total: int | None, desc: str, unit: str = "it", iterable: Iterable | None = None) -> tqdm:
    """A bar for one stage, counting ``iterable``'s items as they are taken (else ``update`` calls);
    it stays on screen when done, with the stage's time (one opened while another is drawn, such as
    an export inside the search, clears itself instead)."""
    shown = _enabled if _enabled is not None else sys.stderr.isatty()
    columns, rows = _fixed_size() if shown else (None, None)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not shown, file=sys.stderr, leave=None,
                dynamic_ncols=columns is None, ncols=columns, nrows=rows, mininterval=0.5, delay=DELAY_S)


def _fixed_size() -> tuple[int, int] | tuple[None, None]:
    """(None, None) where the terminal states its size (tqdm follows it), else FALLBACK_SIZE."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):  # not a real file (a test's capture): no size to follow
        return FALLBACK_SIZE
    return (None, None) if size.columns > 0 and size.lines > 0 else FALLBACK_SIZE
