"""``haqc inspect``: the quantizable layers of a model, their shapes, MACs and HAQ state."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from haqc.cli import main
from haqc.errors import InputError

if TYPE_CHECKING:  # numpy and the cost tables: not needed for --help
    from haqc.hw_targets import Target


def input_shape_option(func):
    """``--input-shape NAME=1x3x224x224`` (repeatable), shared by every command that loads a model."""
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=DIMS",
        help="Fix an input's dynamic dims, e.g. input=1x3x224x224 (repeatable).",
    )(func)


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from haqc.passes.load import parse_input_shape  # onnx: imported when a command runs, not for --help

    return dict(parse_input_shape(v) for v in values)


def execution_provider_option(func):
    """``--execution-provider EP`` and ``--threads N``: how the ort-cpu target measures."""
    func = click.option("--threads", type=click.IntRange(min=0), metavar="N",
                        help="Intra-op threads the ort-cpu target measures with (default 1, or ort-cpu@HOST:PORT's "
                             "runner's own; 0: ONNX Runtime's default, all physical cores).")(func)
    return click.option("--execution-provider", "provider", metavar="EP",
                        help="Measure the ort-cpu target on this ONNX Runtime execution provider (CPU, CUDA, "
                             "TensorRT, ...; that build of onnxruntime must be installed, on the runner's device for "
                             "ort-cpu@HOST:PORT).")(func)


def with_provider(spec: str, provider: str | None, threads: int | None) -> str | Target:
    """The target ``spec`` names, measured on ``provider`` with ``threads`` when given (ort-cpu only)."""
    if provider is None and threads is None:
        return spec
    from haqc.hw_targets.ort_cpu import OrtTarget, RemoteOrtTarget  # onnxruntime: only for a measured target

    name, _, address = spec.partition("@")
    if name != "ort-cpu":
        raise InputError(f"--execution-provider and --threads configure the measured ort-cpu target, not {spec!r}")
    if address:  # on a device runner: what it is not told, it takes from its own settings
        return RemoteOrtTarget(address, provider=provider, threads=threads)
    return OrtTarget(provider=provider or "CPU", threads=1 if threads is None else threads or None)


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@input_shape_option
@click.option("--target", "targets", multiple=True, metavar="NAME_OR_FILE",
              help="Add costs on this target: at w8a8/w4a4/w2a2, or at every option a measured target times "
                   "(repeatable; see haqc targets).")
@execution_provider_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect(model: str, input_shapes: tuple[str, ...], targets: tuple[str, ...], provider: str | None,
            threads: int | None, as_json: bool) -> None:
    """List MODEL's quantizable layers with their shapes, MACs and HAQ state (and costs on targets)."""
    from haqc.api import inspect as inspect_model  # onnx, torch: when the command runs, not for --help

    summary = inspect_model(model, input_shapes=parse_input_shapes(input_shapes),
                            targets=[with_provider(t, provider, threads) for t in targets])
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(_table(summary))
    if summary["kept_float"]:
        click.echo("kept in float: " + "; ".join(f"{e['count']} {op} ({e['reason']})"
                                                  for op, e in summary["kept_float"].items()))
    for name, totals in summary.get("targets", {}).items():
        click.echo(_cost_table(name, summary["layers"], totals, summary["offered"][name]))
        click.echo(f"{name} forms integers as: {summary['capabilities'][name]['summary']}")


def _table(summary: dict) -> str:
    head = ("#", "layer", "kind", "c_in", "c_out", "kernel", "stride", "groups", "feature", "params", "MACs")
    rows = [
        (
            str(i),
            r["name"],
            r["kind"],
            str(r["c_in"]),
            str(r["c_out"]),
            "x".join(map(str, r["kernel"])),
            str(r["stride"][0]),
            str(r["groups"]),
            str(r["feature_size"]),
            f"{r['params']:,}",
            f"{r['macs']:,}",
        )
        for i, r in enumerate(summary["layers"])
    ]
    t = summary["totals"]
    rows.append(("", "total", "", "", "", "", "", "", "", f"{t['params']:,}", f"{t['macs']:,}"))
    widths = [max(len(r[c]) for r in (head, *rows)) for c in range(len(head))]
    lines = [f"{summary['model']}: {t['layers']} quantizable layers (opset {summary['opset']})"]
    for r in (head, *rows):
        lines.append("  ".join(v.ljust(w) if c < 3 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _cost_table(target: str, layers: list[dict], totals: dict, offered: list[list[str]]) -> str:
    """Per-layer latency (ms) at each option a layer is costed at ("-": not one of its options; "*":
    costed but not offered to the search), then the totals with energy and size."""
    settings = sorted(dict.fromkeys(name for r in layers for name in r["targets"][target]), key=lambda s: s == "fp32")
    lines = [f"\n{target}: latency ms per layer at {', '.join(settings)}"]
    width = max(len(r["name"]) for r in layers)
    lines.append(f"{'':<3} {'':<{width}}  " + "  ".join(f"{s:>11}" for s in settings))
    for i, (r, choices) in enumerate(zip(layers, offered)):
        costs = r["targets"][target]
        cells = (f"{costs[s]['latency_ms']:>10.4f}{' ' if s in choices else '*'}" if s in costs else f"{'-':>10} "
                 for s in settings)
        lines.append(f"{i:<3} {r['name']:<{width}}  " + "  ".join(cells))
    if any(s not in choices for r, choices in zip(layers, offered) for s in r["targets"][target]):
        lines.append("* timed but not offered to the search: no faster than fp32 there")
    for s, t in totals.items():
        energy = "n/a" if t["energy_mj"] is None else f"{t['energy_mj']:.4f} mJ"
        lines.append(f"total {s}: latency {t['latency_ms']:.4f} ms, energy {energy}, size {t['size_mb']:.4f} MB")
    return "\n".join(lines)
