"""``haqc quantize``: apply a fixed policy (uniform bits or a policy/report file) and export."""
from __future__ import annotations

import json

import click

from haqc.cli import main
from haqc.cli.inspect import input_shape_option, parse_input_shapes
from haqc.errors import InputError
from haqc.finetune import DEFAULT_LR
from haqc.passes.calibrate import CLIP_METHODS
from haqc.quantize import DEFAULT_CLIP_METHOD, METHODS, QuantizeOptions, quantize_file


def finetune_options(func):
    """Options shared by every command that fine-tunes (quantize, compress)."""
    for option in reversed(
        [
            click.option("--train-data", type=click.Path(path_type=str), help="Training .npz for fine-tuning (labels: cross-entropy; none: distillation)."),
            click.option("--finetune-epochs", type=click.IntRange(min=0), default=None, help="Fine-tuning epochs (default: 1 with --train-data, else 0)."),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_LR, show_default=True, help="Fine-tuning learning rate (Adam, cosine schedule)."),
            click.option("--trainable-clip", is_flag=True, help="Also learn each layer's activation clip while fine-tuning (PACT)."),
            click.option("--device", default="cpu", show_default=True, help="Torch device for fine-tuning, e.g. cuda."),
        ]
    ):
        func = option(func)
    return func


def quantize_options(func):
    """Options shared by every command that quantizes (quantize, compress)."""
    for option in reversed(
        [
            click.option("--method", type=click.Choice(METHODS), default="linear", show_default=True, help="linear: QDQ with calibrated clips; kmeans: codebooks (model-size setting)."),
            click.option("--calib-data", type=click.Path(path_type=str), help="Calibration .npz (default: --data)."),
            click.option("--clip-method", type=click.Choice(CLIP_METHODS), default=DEFAULT_CLIP_METHOD, show_default=True, help="How activation clips are chosen."),
            click.option("--per-tensor", is_flag=True, help="Quantize weights per tensor instead of per output channel."),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random choice."),
        ]
    ):
        func = option(func)
    return func


@main.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--bits", help="Uniform policy, e.g. w4a8 (f for float: w8af).")
@click.option("--policy", "policy_path", type=click.Path(path_type=str), help="Policy JSON or a compress report.")
@quantize_options
@finetune_options
@click.option("--data", type=click.Path(path_type=str), help="Validation .npz: report the accuracy of the result.")
@input_shape_option
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Where to write the quantized model.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def quantize(model, bits, policy_path, method, calib_data, clip_method, per_tensor, seed, train_data,
             finetune_epochs, lr, trainable_clip, device, data, input_shapes, output, force, as_json) -> None:
    """Quantize MODEL with a fixed policy and write an ONNX model ONNX Runtime runs."""
    if (bits is None) == (policy_path is None):
        raise InputError("give exactly one of --bits (e.g. w4a8) or --policy FILE.json")
    options = QuantizeOptions(method=method, clip_method=clip_method, per_channel=not per_tensor, seed=seed)
    summary = quantize_file(
        model,
        output,
        bits=bits,
        policy_path=policy_path,
        options=options,
        calib_data=calib_data,
        val_data=data,
        train_data=train_data,
        finetune_epochs=finetune_epochs,
        lr=lr,
        device=device,
        trainable_clip=trainable_clip,
        input_shapes=parse_input_shapes(input_shapes),
        force=force,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['output']} ({summary['size_mb']:.3f} MB; {summary['layers']} layers quantized, {method})")
    for key in ("fp32", "quantized", "finetuned"):
        if key in summary:
            kept = "  (written)" if summary.get("kept") == key else ""
            click.echo(f"  {key:<10} top-1 {100 * summary[key]['accuracy']:.2f}%{kept}")
