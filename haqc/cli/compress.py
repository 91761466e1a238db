"""``haqc compress``: the main job. Search a policy for a target and budget, export, report."""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click

from haqc.cli import main
from haqc.cli.inspect import execution_provider_option, input_shape_option, parse_input_shapes, with_provider
from haqc.cli.quantize import finetune_options, quantize_options, run_options
from haqc.errors import EXIT_INTERRUPTED, InputError
from haqc.precision import METHODS
from haqc.progress import progress_bar, set_progress
from haqc.quantities import format_costs, in_report_units, report_key
from haqc.report import Report
from haqc.settings import REWARDS, STRATEGY_NAMES, TOP1, TOP1_AGREEMENT, CompressConfig


DEFAULTS = CompressConfig()


@main.command(name="compress")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--target", default=DEFAULTS.target, show_default=True, help="Target name (haqc targets) or a .toml file.")
@execution_provider_option
@click.option("--latency", help="Latency budget: 20ms, 1.5s, 300us, or relative to all-8-bit: 0.5x, 60%.")
@click.option("--energy", help="Energy budget: 5mJ, 0.2J, or 0.5x / 50%.")
@click.option("--size", help="Weight-size budget: 2MB, 500KB, 1.5MiB, or 0.25x / 25%.")
@click.option("--data", type=click.Path(path_type=str), default=DEFAULTS.data, help="Validation .npz (inputs + optional labels).")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULTS.method, show_default=True,
              help="The options searched: linear, the target's integer formats; kmeans, weight codebooks (the size setting).")
@quantize_options
@finetune_options
@click.option("--strategy", default=DEFAULTS.strategy, show_default=True, metavar="NAME",
              help=f"{', '.join(STRATEGY_NAMES)}, or a plugin's (haqc.strategies entry points). ddpg: HAQ's agent; "
                   "ilp: measured sensitivities + an exact integer program; greedy, random, uniform: baselines "
                   "(docs/search.md).")
@click.option("--episodes", type=int, default=DEFAULTS.episodes, show_default=True, help="Search episodes (ddpg, random).")
@click.option("--no-pin-first", is_flag=True, default=not DEFAULTS.pin_first, help="Let the search choose the first layer's bits (HAQ pins w8a8).")
@click.option("--no-pin-last", is_flag=True, default=not DEFAULTS.pin_last, help="Let the search choose the last layer's bits (HAQ pins w8a8).")
@click.option("--reward-lambda", type=float, default=DEFAULTS.reward_lambda, show_default=True, help="HAQ's reward scale.")
@click.option("--reward", type=click.Choice(REWARDS), default=DEFAULTS.reward, show_default=True,
              help="What the search rewards: the metric (HAQ's), the divergence of the outputs from fp32's "
                   "(does not saturate), or both (docs/search.md).")
@click.option("--finalists", type=click.IntRange(min=1), default=DEFAULTS.finalists, show_default=True,
              help="Fine-tune the search's best N policies --finalist-steps steps each and export the best after "
                   "it (HAQ's reward for the candidates that can matter; needs --train-data).")
@click.option("--finalist-steps", type=click.IntRange(min=1), default=DEFAULTS.finalist_steps, show_default=True,
              help="Fine-tune steps per finalist.")
@click.option("--search-samples", type=click.IntRange(min=1), default=DEFAULTS.search_samples,
              help="Score each search candidate on N of the validation samples (a seeded subset) [default: all, "
                   "or fewer where a model's evaluation would be slow: docs/search.md]; the result is scored on all.")
@click.option("--search-finetune-steps", type=click.IntRange(min=0), default=DEFAULTS.search_finetune_steps,
              show_default=True, help="Fine-tune each candidate this many steps before measuring it (slow; needs --train-data).")
@click.option("--strategy-config", "--ddpg", "strategy_overrides", multiple=True, metavar="KEY=VALUE|PRESET",
              help="Set a field of the strategy's configuration, e.g. --strategy-config actor_lr=3e-4 (ddpg) or "
                   "probes=modelled (ilp); a preset first, e.g. haq: HAQ's published agent (docs/search.md).")
@click.option("--workers", type=click.IntRange(min=1), default=DEFAULTS.workers, show_default=True,
              help="Evaluate up to N candidates at once in Ray workers (haqc's ray extra; docs/parallel.md).")
@click.option("--ray-address", default=DEFAULTS.ray_address, metavar="ADDRESS",
              help="Run the workers on this Ray cluster (auto, or host:port) instead of on this machine.")
@click.option("--workdir", type=click.Path(path_type=str), default=DEFAULTS.workdir,
              help="Checkpoint the search here after every episode (every round of --workers episodes), "
                   "and keep every policy's score: later runs here with the same model, data and "
                   "quantization settings (any budget, target or strategy) reuse them.")
@click.option("--resume", is_flag=True, default=DEFAULTS.resume, help="Continue the search checkpointed in --workdir.")
@click.option("--max-accuracy-drop", type=float, default=DEFAULTS.max_accuracy_drop, help="Exit 4 when top-1 drops more than this many points.")
@input_shape_option
@click.option("-o", "--output", type=click.Path(path_type=str), help="Where to write the compressed model.")
@click.option("--report", "report_path", type=click.Path(path_type=str), help="Where to write the JSON report.")
@click.option("--plot", "plot_path", type=click.Path(path_type=str),
              help="Accuracy-cost curve, bits per layer, reward: .html or .png [default: beside -o, as .html].")
@click.option("--no-plot", is_flag=True, help="Write no plot.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (for CI).")
def compress_command(model, latency, energy, size, per_tensor, no_pin_first, no_pin_last, strategy_overrides, input_shapes,
                     output, report_path, plot_path, no_plot, force, quiet, as_json, target, provider, threads, **options) -> None:
    """Find per-layer bitwidths for MODEL that meet a budget on a target, and export them."""
    from haqc.api import compress  # onnx, torch: when the command runs, not for --help

    budgets = {q: v for q, v in (("latency", latency), ("energy", energy), ("size", size)) if v is not None}
    config = CompressConfig(
        budgets=budgets, pin_first=not no_pin_first, pin_last=not no_pin_last, strategy_config=parse_strategy_config(options["strategy"], strategy_overrides),
        input_shapes=parse_input_shapes(input_shapes), target=with_provider(target, provider, threads),
        **run_options(per_tensor, **options),
    )
    show = not quiet and not as_json
    set_progress(None if show else False)
    bar = _Progress(config.episodes if episodic(config.strategy) else None, budgets) if show else None
    plot = plot_file(output, plot_path, no_plot)
    try:
        result = compress(model, config, output=output, report=report_path, plot=plot,
                          force=force, progress=bar.update if bar else None)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; the search state is saved in --workdir (use --resume)" if config.workdir
                   else "\ninterrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if bar:
            bar.close()
    if as_json:
        click.echo(result.to_json(), nl=False)
    elif show:
        click.echo(format_summary(result.report))
        for what, path in result.files.items():
            if what == "model":  # the model's line says its format and size instead
                what = f"{result.report.format}, {result.report.output_mb:.4f} MB"
            click.echo(f"  wrote {path} ({what})")
        if (note := container_note(result.report)) is not None:
            click.echo(note)


# The written file may exceed the target's size by this share before the summary says why.
CONTAINER_SLACK = 0.1


def container_note(report: Report) -> str | None:
    """Under a size budget, why the written model is larger than the size the target costs, where it is
    by more than CONTAINER_SLACK: the target stores b-bit weights in b bits, ONNX in its next integer type."""
    costed = report.result.costs.get("size")
    odd = sorted({o.w_bits for o in report.policy.values() if o.w_bits not in (None, 2, 4, 8)})
    if ("size" not in report.budgets or not costed or report.output_mb is None
            or report.output_mb * 1e6 <= costed * (1 + CONTAINER_SLACK) or not odd):
        return None
    widths = "/".join(map(str, odd))
    return (f"  the file is larger than the target's {costed / 1e6:.4f} MB: the target stores {widths}-bit weights "
            "in as many bits, ONNX in its next integer type (INT4, INT8), with float biases and the graph")


def plot_file(output: str | None, plot: str | None, no_plot: bool) -> str | None:
    """--plot, else the output's name with .html (every run that writes a model draws its curve)."""
    if no_plot:
        if plot:
            raise InputError("--plot and --no-plot contradict each other; give one")
        return None
    if plot or output is None:
        return plot
    return str(Path(output).with_suffix(".html"))


def episodic(strategy: str) -> bool:
    """Whether the strategy plays episodes (its progress bar counts them); False where it does not load
    (compress then says why in one line)."""
    from haqc.errors import HaqcError
    from haqc.search import load_strategy  # torch: when the command runs

    try:
        return load_strategy(strategy).episodic
    except HaqcError:
        return False


def parse_strategy_config(strategy: str, items: tuple[str, ...]) -> Any:
    """``--strategy-config`` items over the strategy's configuration defaults: ``KEY=VALUE`` pairs, after
    an optional preset (a no-argument classmethod of its config class: ddpg's ``haq``, HAQ's published
    agent); values take the field's type: true/false for switches, ``none`` where a field may be unset."""
    if not items:
        return None
    from haqc.search import load_strategy  # torch: only when the option is given

    kind = load_strategy(strategy).config_type
    if kind is None:
        raise InputError(f"--strategy-config: search strategy {strategy!r} takes no configuration")
    preset = None if "=" in items[0] else items[0]
    make = getattr(kind, preset, None) if preset is not None else kind
    if not callable(make) or (preset is not None and not isinstance(kind.__dict__.get(preset), classmethod)):
        raise InputError(f"--strategy-config {preset!r}: {kind.__name__} has no such preset; write KEY=VALUE")
    types = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind)]
    changes = {}
    for item in items[1:] if preset is not None else items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise InputError(f"--strategy-config {item!r}: write KEY=VALUE with KEY one of {', '.join(names)}")
        changes[key] = _field_value(item, key, value, types[key])
    return dataclasses.replace(make(), **changes)


def _field_value(item: str, key: str, value: str, annotation: Any) -> object:
    """One ``--strategy-config`` value by its field's type (bool, int, float, str, a Literal, or optional)."""
    choices = [a for a in typing.get_args(annotation) if a is not type(None)] if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else [annotation]
    if len(choices) < len(typing.get_args(annotation)) and value.lower() == "none":
        return None
    kind = choices[0]
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise InputError(f"--strategy-config {item!r}: {key} takes one of {', '.join(map(str, typing.get_args(kind)))}")
        return value
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise InputError(f"--strategy-config {item!r}: {key} takes true or false")
        return value.lower() in ("true", "1")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"--strategy-config {item!r}: {key} takes a{'n' if kind is int else ''} "
                         f"{getattr(kind, '__name__', kind)}") from None


class _Progress:
    """The search's bar on stderr (haqc.progress): episode, best reward, best cost."""

    def __init__(self, total: int | None, budgets: dict) -> None:
        self.total, self.quantities = total, list(budgets)
        self.bar = None  # opened at the first episode, so its clock is the search's

    def update(self, episode: int, best_reward: float, costs: dict[str, float]) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.total, "search", unit="episode")
        cost = " ".join(f"{q} {format_costs(q, costs[q])[0]}" for q in self.quantities if q in costs)
        self.bar.set_postfix_str(f"best reward {best_reward:+.4f}, {cost}", refresh=False)
        self.bar.update(episode - self.bar.n)
        if self.total is not None and self.bar.n >= self.total:
            self.bar.close()  # the search is over: its time stops here, not after the fine-tune

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_summary(report: Report) -> str:
    """The per-layer table and the fp32 / w8a8 / result comparison."""
    search = report.search
    stored = f" ({search.stored} read from the workdir)" if search.stored else ""
    lines = [f"{report.model} on {report.target['name']}: {search.strategy}, {search.episodes} episode{'s' * (search.episodes != 1)}, "
             f"{search.evaluations} evaluations{stored}"
             + (f" on {search.samples} samples each" if search.samples is not None else "")
             + f", {search.seconds:.1f} s"]
    total = in_report_units("latency", sum(r.costs["latency"] for r in report.layers)) or 1.0
    # Whole names, numbered as `inspect` numbers them: a detector's heads share long prefixes.
    wide, index = max([5, *(len(r.layer) for r in report.layers)]), len(str(len(report.layers)))
    lines.append(f"  {'#':>{index}} {'layer':<{wide}} {'kind':<9} {'w':>2} {'a':>2} {'latency ms':>11} {'share':>6}")
    for i, r in enumerate(report.layers):
        w = "f" if r.w_bits is None else r.w_bits
        a = "f" if r.a_bits is None else r.a_bits
        latency = in_report_units("latency", r.costs["latency"])
        lines.append(f"  {i:>{index}} {r.layer:<{wide}} {r.kind:<9} {w:>2} {a:>2} {latency:>11.4f} "
                     f"{100 * latency / total:>5.1f}%")
    lines.append("")
    score = "top-1" if report.signal in (TOP1, TOP1_AGREEMENT) else "score"
    measured = report.result.measured_latency_s is not None
    lines.append(f"  {'':<8} {score:>8} {'latency ms':>11} {'energy mJ':>10} {'size MB':>9}"
                 + (f" {'measured ms':>12}" if measured else ""))
    for key, row in (("fp32", report.fp32), ("w8a8", report.w8a8), ("result", report.result)):
        units = row.to_dict()
        energy = "-" if units[report_key("energy")] is None else f"{units[report_key('energy')]:.4f}"
        lines.append(f"  {key:<8} {100 * row.accuracy:>7.2f}% {units[report_key('latency')]:>11.4f} {energy:>10} "
                     f"{units[report_key('size')]:>9.4f}" + (f" {units['measured_latency_ms']:>12.4f}" if measured else ""))
    budget = ", ".join(f"{q} <= {c['limit']} ({c['budget']}{', measured' * (measured and q == 'latency')})"
                       for q, c in report.constraints.items())
    verdict = "meets" if report.result.meets_budget else "MISSES"
    lines.append(f"  result {verdict} the budget: {budget}")
    if report.label_free:
        what = "top-1 agreement with" if report.signal == TOP1_AGREEMENT else f"{report.signal} against"
        lines.append(f"  (label-free: accuracy is {what} the fp32 model)")
    result = report.result
    if result.accuracy_finetuned is not None:
        before, after = 100 * result.accuracy_before_finetune, 100 * result.accuracy_finetuned
        kept = ("kept" if after >= before else
                "not kept: the un-tuned weights score higher and were written")
        lines.append(f"  fine-tuning: {score} {before:.2f}% -> {after:.2f}%, {kept}")
    return "\n".join(lines)
