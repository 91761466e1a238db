"""User-facing errors: one clear sentence each, mapped to a documented exit code.

The CLI catches ``HaqcError`` and prints ``error: <message>`` on one line, then
exits with ``exit_code``; anything else is a bug and keeps its traceback.
See docs/exit_codes.md.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BUDGET_UNREACHABLE = 3
EXIT_ACCURACY_DROP = 4
EXIT_WORKER_FAILED = 5
EXIT_RUNNER_FAILED = 6
EXIT_INTERRUPTED = 130


class HaqcError(Exception):
    """Base class of errors a user can cause; ``str(err)`` is the one line shown."""

    exit_code: int = EXIT_BAD_INPUT


class InputError(HaqcError):
    """A bad model, data file, option or target: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class BudgetUnreachableError(HaqcError):
    """Even the cheapest policy misses the budget: exit code 3."""

    exit_code = EXIT_BUDGET_UNREACHABLE


class AccuracyDropError(HaqcError):
    """The result's accuracy drop exceeds ``--max-accuracy-drop``: exit code 4."""

    exit_code = EXIT_ACCURACY_DROP


class WorkerError(HaqcError):
    """A parallel evaluation worker died or failed, or the pool could not start: exit code 5."""

    exit_code = EXIT_WORKER_FAILED


class RunnerError(HaqcError):
    """A device runner (``--target ort-cpu@HOST:PORT``) is not there, timed out, or died: exit code 6."""

    exit_code = EXIT_RUNNER_FAILED


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors are often multi-line), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
