"""``haqc targets``: list the hardware targets, where each comes from, and what it answers."""
from __future__ import annotations

import json
import logging

import click

from haqc.cli import main
from haqc.hw_targets import available_targets

logger = logging.getLogger(__name__)


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
def targets(as_json: bool, files: tuple[str, ...]) -> None:
    """List registered targets (built-in and plugins), plus the TOML target FILES given, after checking them."""
    infos = available_targets(files)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    rows = [("NAME", "SOURCE", "BATCH", "BITS w/a", "ENERGY", "DESCRIPTION")]
    for info in infos:
        bits = f"{_span(info.w_bits)}/{_span(info.a_bits)}"
        rows.append((info.name, info.source, str(info.batch), bits, "yes" if info.energy else "no", info.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def _span(bits: tuple[int, ...]) -> str:
    """2-8 for a contiguous range, else a comma list."""
    if list(bits) == list(range(bits[0], bits[-1] + 1)) and len(bits) > 2:
        return f"{bits[0]}-{bits[-1]}"
    return ",".join(map(str, bits))
