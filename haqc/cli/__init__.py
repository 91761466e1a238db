"""The ``haqc`` command line: thin wrappers over the Python API.

Each command lives in its own module and registers itself on ``main``. User
errors (``HaqcError``) become one line on stderr and a documented exit code.
"""
from __future__ import annotations

import sys

import click

from haqc import __version__
from haqc.errors import HaqcError


class _Group(click.Group):
    """Turns HaqcError into ``error: <message>`` and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HaqcError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="haqc")
def main() -> None:
    """haqc: hardware-aware mixed-precision quantization for ONNX models."""


# Commands register themselves on import; keep this list in CLI order.
from haqc.cli import inspect as _inspect  # noqa: E402,F401
from haqc.cli import targets as _targets  # noqa: E402,F401
from haqc.cli import eval as _eval  # noqa: E402,F401
from haqc.cli import quantize as _quantize  # noqa: E402,F401
from haqc.cli import compress as _compress  # noqa: E402,F401
