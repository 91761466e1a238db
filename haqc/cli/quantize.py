"""``haqc quantize``: apply a fixed policy (uniform bits or a policy/report file) and export."""
from __future__ import annotations

import json

import click

from haqc.cli import main
from haqc.cli.inspect import input_shape_option, parse_input_shapes
from haqc.progress import set_progress
from haqc.settings import (CLIP_METHODS, DEFAULT_MIN_STEPS, DEFAULT_SECONDS, FORMATS, LR_CANDIDATES, MAX_EPOCHS, TOP1,
                           TOP1_AGREEMENT, FinetuneConfig, QuantizeConfig, RunConfig)

DEFAULTS = RunConfig()
EPOCHS_HELP = (f"Fine-tuning epochs at most (default with --train-data: whole epochs, at least {DEFAULT_MIN_STEPS} "
               f"steps of {FinetuneConfig.batch_size}, at most {MAX_EPOCHS} epochs; else 0); a held-out tenth "
               "stops it early and keeps the best step.")
METRIC_HELP = ("Score with func(outputs, targets) -> float; or top1 (the first output holds class scores) or "
               "sqnr-fidelity (every output against fp32). Default: top-1 with labels; without them, top-1 "
               "agreement where a Softmax ends the first output, else sqnr-fidelity.")


def finetune_options(func):
    """Options shared by every command that fine-tunes (quantize, compress); defaults from RunConfig."""
    for option in reversed(
        [
            click.option("--train-data", type=click.Path(path_type=str), default=DEFAULTS.train_data, help="Training .npz for fine-tuning: every output distilled from fp32 (labels of the first output's classes: cross-entropy there; a --metric's labels are left to it)."),
            click.option("--finetune-epochs", type=click.IntRange(min=0), default=DEFAULTS.finetune_epochs, help=EPOCHS_HELP),
            click.option("--finetune-seconds", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.finetune_seconds, help=f"Fine-tuning's time budget [default: {DEFAULT_SECONDS:g}]."),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr, help=f"Fine-tuning learning rate (Adam, cosine schedule) [default: the best of {', '.join(f'{c:g}' for c in LR_CANDIDATES)} in a short range test]."),
            click.option("--trainable-clip", is_flag=True, default=DEFAULTS.trainable_clip, help="Also learn each layer's activation clip while fine-tuning (PACT)."),
            click.option("--device", default=DEFAULTS.device, show_default=True, help="Torch device for fine-tuning, e.g. cuda."),
        ]
    ):
        func = option(func)
    return func


def quantize_options(func):
    """Options shared by every command that quantizes (quantize, compress); defaults from RunConfig."""
    for option in reversed(
        [
            click.option("--calib-data", type=click.Path(path_type=str), default=DEFAULTS.calib_data, help="Calibration .npz (default: --data)."),
            click.option("--clip-method", type=click.Choice(CLIP_METHODS), default=DEFAULTS.clip_method, show_default=True, help="How activation clips are chosen below 8 bits (8-bit ones take the calibrated min-max range)."),
            click.option("--per-tensor", is_flag=True, default=not DEFAULTS.per_channel, help="Quantize weights per tensor instead of per output channel."),
            click.option("--format", "format", type=click.Choice(FORMATS), default=DEFAULTS.format, show_default=True, help="qdq: INT8 containers, ONNX Runtime's integer kernels; packed: INT4/INT2 containers, smallest file; qonnx: QONNX Quant nodes (FINN, hls4ml)."),
            click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed for every random choice."),
            click.option("--metric", default=DEFAULTS.metric, metavar="MODULE:FUNCTION", help=METRIC_HELP),
        ]
    ):
        func = option(func)
    return func


def signal_name(metric: str) -> str:
    """How a summary line names what was scored: top-1 (accuracy or agreement), else the signal itself."""
    return "top-1" if metric in (TOP1, TOP1_AGREEMENT) else metric


def run_options(per_tensor: bool, **options) -> dict:
    """The shared options as RunConfig fields (the flags that say the opposite of a field, inverted)."""
    return {"per_channel": not per_tensor, **options}


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--bits", default=QuantizeConfig.bits, help="Uniform policy, e.g. w4a8 (f for float: w8af).")
@click.option("--policy", "policy", type=click.Path(path_type=str), default=QuantizeConfig.policy, help="Policy JSON or a compress report.")
@click.option("--target", default=QuantizeConfig.target, show_default=True, help="The hardware whose kernels the integers are formed for (`haqc targets`, or a .toml); ort-cpu is ONNX Runtime on this machine.")
@quantize_options
@finetune_options
@click.option("--data", type=click.Path(path_type=str), default=DEFAULTS.data, help="Validation .npz: report the accuracy of the result.")
@input_shape_option
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Where to write the quantized model.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def quantize(model, output, force, quiet, as_json, input_shapes, per_tensor, **options) -> None:
    """Quantize MODEL with a fixed policy and write an ONNX model ONNX Runtime runs."""
    from haqc.api import quantize as quantize_model  # onnx, torch: when the command runs, not for --help

    config = QuantizeConfig(input_shapes=parse_input_shapes(input_shapes), **run_options(per_tensor, **options))
    set_progress(None if not quiet and not as_json else False)
    result = quantize_model(model, config, output=output, force=force)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    if quiet:
        return
    click.echo(f"wrote {result.output} ({result.size_mb:.3f} MB; {result.layers} layers quantized: {', '.join(result.formats)})")
    click.echo(f"  integers for {result.capabilities.describe()}")
    for key in ("fp32", "quantized", "finetuned"):
        if (scores := getattr(result, key)) is not None:
            kept = "  (written)" if result.kept == key else ""
            click.echo(f"  {key:<10} {signal_name(scores.metric)} {100 * scores.accuracy:.2f}%{kept}")
