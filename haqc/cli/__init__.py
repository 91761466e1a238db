"""The ``haqc`` command line: thin wrappers over the Python API.

Each command lives in its own module and registers itself on ``main``. User
errors (``HaqcError``) become one line on stderr and a documented exit code.
"""
from __future__ import annotations

import ast
import importlib
import logging
import re
import sys
import warnings
from pathlib import Path

import click
from click.utils import make_default_short_help

from haqc import __version__
from haqc.errors import HaqcError


# Command name -> the module that defines it, in CLI order. A module is imported only when its command
# runs or shows its own help: ``haqc --help`` imports neither onnx nor torch (it reads the commands'
# docstrings from their source), so it answers at once.
COMMANDS = {"inspect": "inspect", "targets": "targets", "eval": "eval", "quantize": "quantize", "compress": "compress"}


class _Command(click.Command):
    """Quiets the libraries when the command runs, after its options are parsed: ``--help`` exits
    before that, so it never imports ONNX Runtime (a second of imports) to set its logger."""

    def invoke(self, ctx: click.Context):
        configure_logging(ctx.find_root().params["verbose"])
        return super().invoke(ctx)


class _Group(click.Group):
    """Loads commands on first use; turns HaqcError into ``error: <message>`` and its exit code, never a traceback."""

    command_class = _Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            importlib.import_module(f"haqc.cli.{COMMANDS[name]}")  # registers itself on ``main``
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands
                 else make_default_short_help(_docstring(COMMANDS[name], name), limit)) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HaqcError as err:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {as_flags(str(err), command)}", err=True)
            sys.exit(err.exit_code)


# API parameters a command spells as several flags.
_SPELLED = {"budgets": "--latency, --energy or --size", "pin_first": "--no-pin-first", "pin_last": "--no-pin-last"}


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


def _docstring(module: str, command: str) -> str:
    """The docstring of the function that defines ``command`` in haqc/cli/<module>.py, read without importing it."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and command in (_command_name(d, node) for d in node.decorator_list):
            return ast.get_docstring(node) or ""
    return ""


def _command_name(decorator: ast.expr, func: ast.FunctionDef) -> str | None:
    """The name ``@main.command(...)`` gives ``func`` (its argument, else the function's name); None for others."""
    if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command"):
        return None
    names = [a.value for a in decorator.args] + [k.value.value for k in decorator.keywords if k.arg == "name"]
    return names[0] if names else func.name
