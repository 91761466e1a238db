"""The ``haqc`` command line: thin wrappers over the Python API.

Each command lives in its own module and registers itself on ``main``. User
errors (``HaqcError``) become one line on stderr and a documented exit code.
"""
from __future__ import annotations

import logging
import re
import sys
import warnings

import click

from haqc import __version__
from haqc.errors import HaqcError


class _Group(click.Group):
    """Turns HaqcError into ``error: <message>`` and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HaqcError as err:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {as_flags(str(err), command)}", err=True)
            sys.exit(err.exit_code)


# API parameters a command spells as several flags.
_SPELLED = {"budgets": "--latency, --energy or --size"}


def as_flags(message: str, command: click.Command | None) -> str:
    """An API error in the command's terms: each `parameter` becomes the flag that sets it."""
    flags = dict(_SPELLED)
    for param in command.params if command is not None else ():
        longest = max(param.opts, key=len)
        if longest.startswith("--"):
            flags[param.name] = longest
            flags[longest[2:].replace("-", "_")] = longest
    return re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(1)), message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="haqc")
@click.option("-v", "--verbose", is_flag=True, help="Show haqc's progress log and ONNX Runtime's / onnx's own warnings.")
def main(verbose: bool) -> None:
    """haqc: hardware-aware mixed-precision quantization for ONNX models."""
    configure_logging(verbose)


def configure_logging(verbose: bool) -> None:
    """Quiet by default: what haqc must say is one line; library warnings (ONNX Runtime's
    optimizer notes, onnx's and torch's Python warnings) only with ``--verbose``."""
    import onnxruntime as ort

    ort.set_default_logger_severity(2 if verbose else 3)
    warnings.simplefilter("default" if verbose else "ignore")
    log = logging.getLogger("haqc")
    log.handlers = [h for h in log.handlers if not isinstance(h, _Stderr)]
    if verbose:  # without a handler, haqc's warnings still reach stderr through logging's last resort
        log.addHandler(_Stderr())
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.NOTSET)


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (click's test runner swaps it per invocation)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


# Commands register themselves on import; keep this list in CLI order.
from haqc.cli import inspect as _inspect  # noqa: E402,F401
from haqc.cli import targets as _targets  # noqa: E402,F401
from haqc.cli import eval as _eval  # noqa: E402,F401
from haqc.cli import quantize as _quantize  # noqa: E402,F401
from haqc.cli import compress as _compress  # noqa: E402,F401
