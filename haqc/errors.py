"""User-facing errors: one clear sentence each, mapped to a documented exit code.

The CLI catches ``HaqcError`` and prints ``error: <message>`` on one line, then
exits with ``exit_code``; anything else is a bug and keeps its traceback.
See docs/exit_codes.md.
"""
from __future__ import annotations

import functools

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BUDGET_UNREACHABLE = 3
EXIT_ACCURACY_DROP = 4
EXIT_WORKER_FAILED = 5
EXIT_RUNNER_FAILED = 6
EXIT_BUDGET_MISSED = 7
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


class BudgetMissedError(HaqcError):
    """The result misses its budget as measured (a latency the cost table's estimate met, which the
    device did not), with no faster policy left: exit code 7, the model, report and plot written."""

    exit_code = EXIT_BUDGET_MISSED


class RunnerError(HaqcError):
    """A device runner (``--target ort-cpu@HOST:PORT``) is not there, timed out, or died: exit code 6."""

    exit_code = EXIT_RUNNER_FAILED


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors are often multi-line), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# The libraries whose errors haqc turns into one line (their own exception types, or any exception
# raised from inside their Python code), and how messages name them.
_LIBRARIES = {"onnxruntime": "ONNX Runtime", "onnx_graphsurgeon": "onnx-graphsurgeon", "onnx": "onnx",
              "google.protobuf": "protobuf"}
# haqc's stages, by the module a library was called from (what the one line says failed).
_STAGES = {"haqc.passes.load": "loading", "haqc.passes.canonicalize": "canonicalization",
           "haqc.passes.extract": "layer analysis", "haqc.passes.calibrate": "calibration",
           "haqc.passes.isolate": "layer isolation", "haqc.evaluation": "evaluation", "haqc.data": "data loading"}


def _package(module: str) -> str | None:
    return next((lib for lib in _LIBRARIES if module == lib or module.startswith(lib + ".")), None)


def library_error(err: BaseException) -> HaqcError | None:
    """``err`` as one InputError line when onnx or ONNX Runtime raised it (the library, the haqc stage
    that called it, the library's own first line: node, input, shapes), else None: a haqc bug keeps
    its traceback."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    library = _package(type(err).__module__) or (_package(frames[-1]) if frames else None)
    if library is None:
        return None
    caller = next((m for m in reversed(frames) if m.startswith("haqc.")), "")
    stage = _STAGES.get(caller, caller.rsplit(".", 1)[-1].replace("_", " ") or "haqc")
    detail = " ".join(str(err).split())[:400] or type(err).__name__  # ORT spreads the shapes over lines
    return InputError(f"{_LIBRARIES[library]} failed during {stage}: {detail}; "
                      "the model (or its data) uses a construct haqc does not handle (docs/exit_codes.md)")


def library_errors(func):
    """Decorates an API function: errors from onnx / ONNX Runtime leave it as one InputError line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HaqcError:
            raise
        except Exception as err:  # noqa: BLE001 -- re-raised unless a library raised it
            converted = library_error(err)
            if converted is None:
                raise
            raise converted from None

    return wrapper
