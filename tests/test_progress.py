"""The progress bars: drawn on a terminal (even one that states no width), silent in logs and when turned off."""
from __future__ import annotations

import io
import os
import pty
import select
import sys

import pytest

from haqc import progress
from haqc.progress import progress_bar, set_progress


class _Terminal(io.StringIO):
    """A captured stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _default(monkeypatch):
    """Bars at their default (an in-process CLI run with --quiet earlier in this worker turned them off),
    drawn at once."""
    set_progress(None)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    yield
    set_progress(None)


def _draw(stream, monkeypatch) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    with progress_bar(3, "calibration", unit="batch", iterable=range(3)) as bar:
        for _ in bar:
            pass
    return stream.getvalue() if isinstance(stream, io.StringIO) else ""


def test_a_terminal_shows_the_bar(monkeypatch):
    assert "calibration: 100%" in _draw(_Terminal(), monkeypatch)


def test_a_log_and_quiet_show_nothing(monkeypatch):
    assert _draw(io.StringIO(), monkeypatch) == ""  # not a terminal: a CI log, a pipe
    set_progress(False)  # --quiet, --json
    assert _draw(_Terminal(), monkeypatch) == ""


def test_a_terminal_without_a_width_still_gets_a_bar(monkeypatch):
    # A pseudo-terminal that states no size (`script`, some CI runners): tqdm alone draws an empty line.
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as stream:
            assert os.get_terminal_size(follower).columns == 0
            monkeypatch.setattr(sys, "stderr", stream)
            assert progress._fixed_size() == progress.FALLBACK_SIZE
            with progress_bar(2, "cost table", unit="layer") as bar:
                bar.update(2)
        drawn = b""
        while select.select([leader], [], [], 0.1)[0]:  # everything written, in the chunks the pty gives
            drawn += os.read(leader, 4096)
    finally:
        os.close(leader)
        os.close(follower)
    assert "cost table: 100%" in drawn.decode() and "2/2" in drawn.decode()


def test_the_search_bar_stops_at_its_last_episode(monkeypatch):
    """The search's bar closes when its last episode is reported: left open, it counted the fine-tune's
    minutes as the search's (a 32 s search shown as 3:39 on shufflenet)."""
    from haqc.cli.compress import _Progress

    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = _Progress(3, {"latency": "0.5x"})
    for episode in (1, 2):
        bar.update(episode, -0.5, {"latency": 0.01})
    assert not bar.bar.disable
    bar.update(3, -0.1, {"latency": 0.005})
    assert bar.bar.disable and "3/3" in stream.getvalue()  # closed, drawn complete
    bar.close()  # the CLI's own close after the run is harmless
