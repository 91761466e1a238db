"""``haqc eval``: a model's accuracy (or agreement with a reference) on a dataset, measured as given."""
from __future__ import annotations

import json

import click

from haqc.cli import main
from haqc.cli.inspect import input_shape_option, parse_input_shapes
from haqc.cli.quantize import METRIC_HELP
from haqc.settings import BATCH_ELEMENTS, DEFAULT_BATCH, FIDELITY, FIDELITY_DB, TOP1, TOP1_AGREEMENT


@main.command("eval")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", required=True, metavar="VAL.npz",
              help="Inputs named after the model's inputs, optional 'labels'.")
@click.option("--batch-size", type=int, default=None,
              help=f"Samples per run (default: {DEFAULT_BATCH}, fewer where they would hold over "
                   f"{BATCH_ELEMENTS:,} input values; or the model's fixed batch).")
@click.option("--metric", default=None, metavar="MODULE:FUNCTION", help=METRIC_HELP)
@click.option("--reference", default=None, metavar="FP32.onnx",
              help="Without labels, score top-1 agreement with this model.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def eval_(
    model: str,
    data: str,
    batch_size: int | None,
    metric: str | None,
    reference: str | None,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure MODEL on --data exactly as given (no canonicalization), so quantized models are scored as shipped."""
    from haqc.api import evaluate  # onnx, ONNX Runtime: when the command runs, not for --help

    result = evaluate(model, data, reference=reference, metric=metric, batch_size=batch_size,
                      input_shapes=parse_input_shapes(input_shapes))
    if as_json:
        click.echo(json.dumps({
            "model": model,
            "data": data,
            "accuracy": result.accuracy,
            "samples": result.samples,
            "seconds": round(result.seconds, 4),
            "label_free": result.label_free,
            "metric": result.metric_name,
        }))
        return
    if result.metric_name == FIDELITY:
        what = f"{FIDELITY} against {reference} (label-free; 1 = outputs within {FIDELITY_DB:g} dB SQNR of it)"
    elif result.metric_name == TOP1_AGREEMENT:
        what = f"agreement with {reference} (label-free)"
    elif result.metric_name == TOP1:
        what = "top-1 accuracy"
    else:
        what = f"metric {metric}" + (" (label-free)" if result.label_free else "")
    click.echo(f"{model}: {what} {result.accuracy:.4f} on {result.samples} samples in {result.seconds:.3f} s")
