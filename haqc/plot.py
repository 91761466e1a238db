"""Plots of a compress report, drawn with matplotlib: the accuracy-cost curve with its frontier, the
bits per layer (the HAQ paper's figure) and the reward over episodes.

``.png`` is a raster image; ``.html`` a page holding the same figure as inline SVG (no script, no
network when it is viewed).
"""
from __future__ import annotations

import html
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from haqc.io import atomic_write_bytes, atomic_write_text, check_plot_path  # noqa: E402
from haqc.quantities import REPORT_UNITS, format_costs, in_report_units  # noqa: E402
from haqc.report import Report  # noqa: E402

_W_COLOR, _A_COLOR, _R_COLOR, _FRONT_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"
_MISS_COLOR = _FRONT_COLOR
FLOAT_BAR = 9  # a float tensor's bar: above the widest integer width, labelled "float"


def write_plot(report: Report, path: str) -> None:
    check_plot_path(path)
    suffix = Path(path).suffix.lower()
    buffer = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "haqc"}):  # the SVG's element ids, fixed: the same report, the same page
        figure = _figure(report)
        figure.savefig(buffer, format="svg" if suffix == ".html" else "png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    if suffix == ".png":
        atomic_write_bytes(path, buffer.getvalue())
        return
    title = f"{report.model} on {report.target['name']}"
    # matplotlib's RDF metadata carries the drawing date: dropped, so a page depends on the report only.
    svg = re.sub(r"<metadata>.*?</metadata>", "", buffer.getvalue().decode(), flags=re.S)
    # The figure is wider than most windows: scaled to the page's width (its viewBox keeps the aspect).
    atomic_write_text(path, "<!doctype html><meta charset='utf-8'><style>svg{max-width:100%;height:auto}</style>"
                            f"<title>haqc: {html.escape(title)}</title><h3>{html.escape(title)}</h3>{svg}")


def _figure(report: Report):
    names = [row.layer for row in report.layers]
    figure, (curve, bits, reward) = plt.subplots(
        3, 1, figsize=(max(8.0, 0.32 * len(names) + 2), 11), gridspec_kw={"height_ratios": [3, 2.4, 1.6]})
    _curve(curve, report)
    _bits(bits, report)
    _reward(reward, report)
    figure.tight_layout()
    return figure


def _curve(ax, report: Report) -> None:
    """Accuracy against the first budgeted quantity, zoomed to the accuracies that matter
    (``accuracy_range``; policies below it marked on the bottom edge): every evaluated policy, the
    non-dominated ones joined, the budget, the chosen policy; fp32 and w8a8 as accuracy lines (their
    costs, often far to the right, written on them rather than stretching the axis); on a measured
    target, the result's measured latency beside its estimate, marked where it misses the budget."""
    quantity = next(iter(report.budgets))  # compress takes at least one
    unit = REPORT_UNITS[quantity][0]
    result = report.result
    low, high = accuracy_range(report)

    def x(costs: dict) -> float:
        return in_report_units(quantity, costs[quantity])

    def label(value: float) -> str:  # a cost as the summary states it, in its own unit
        return format_costs(quantity, value)[0]

    points = report.evaluated
    shown = [p for p in points if 100 * p["accuracy"] >= low]
    ax.scatter([x(p["costs"]) for p in shown], [100 * p["accuracy"] for p in shown], s=12, color="#999999",
               alpha=0.6, label=f"evaluated policies ({len(points)})")
    below = [p for p in points if 100 * p["accuracy"] < low]
    if below:
        ax.scatter([x(p["costs"]) for p in below], [low] * len(below), marker="v", s=18, color="#999999",
                   clip_on=False, zorder=4, label=f"{len(below)} of them below {low:.4g}%")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: x(p["costs"]))
    ax.plot([x(p["costs"]) for p in front], [100 * p["accuracy"] for p in front], "-o", color=_FRONT_COLOR,
            markersize=4, label="non-dominated")
    limit = report.limits[quantity]
    given = report.constraints[quantity]
    measured = result.measured_latency_s is not None and quantity == "latency"
    ax.axvline(in_report_units(quantity, limit), color="black", linestyle="--", linewidth=1,
               label=f"budget ({'measured ' if measured else ''}{quantity})")
    ax.annotate(f"budget {given['limit']} ({given['budget']})", (in_report_units(quantity, limit), high),
                xytext=(0, -4), textcoords="offset points", va="top", ha="center", fontsize=8, bbox=_BOX)
    for name, row, style, other in (("fp32", report.fp32, ":", report.w8a8), ("w8a8", report.w8a8, "-.", report.fp32)):
        text = f"{name} {100 * row.accuracy:.2f}% at {label(row.costs[quantity])}" + (
            f" (measured {label(row.measured_latency_s)})" if measured and row.measured_latency_s is not None else "")
        ax.axhline(100 * row.accuracy, color="black", linestyle=style, linewidth=1, label=name)
        above = row.accuracy >= other.accuracy  # the two labels on either side of their lines, never on each other
        ax.annotate(text, (1, 100 * row.accuracy), xycoords=("axes fraction", "data"), xytext=(-4, 3 if above else -3),
                    textcoords="offset points", fontsize=8, ha="right", va="bottom" if above else "top", bbox=_BOX)
    chosen = (x(result.costs), 100 * result.accuracy_before_finetune)
    ax.scatter(*chosen, marker="*", s=180, color=_R_COLOR, zorder=5, label="chosen (before fine-tune)")
    if result.accuracy_finetuned is not None:
        exported = (chosen[0], 100 * result.accuracy)
        ax.scatter(*exported, marker="P", s=90, color=_R_COLOR, edgecolor="black", zorder=5, label="exported")
    at = in_report_units("latency", result.measured_latency_s) if measured else None
    missed = measured and result.measured_latency_s > limit
    if at is not None:
        ax.annotate("", (at, chosen[1]), xytext=chosen,
                    arrowprops={"arrowstyle": "->", "color": _MISS_COLOR if missed else _R_COLOR, "linestyle": ":"})
        ax.scatter([at], [chosen[1]], marker="X" if missed else "o", s=90, color=_MISS_COLOR if missed else _R_COLOR,
                   edgecolor="black", zorder=6, label="result as measured")
    # The labels once the axis has its extent: each reads towards the middle, so none runs off the edge.
    _note(ax, f"chosen {chosen[1]:.2f}% at {label(result.costs[quantity])}", chosen, -12, _R_COLOR, bold=True)
    if result.accuracy_finetuned is not None:
        _note(ax, f"exported {exported[1]:.2f}% (fine-tuned {100 * result.accuracy_finetuned:.2f}%)", exported, 6,
              _R_COLOR)
    if at is not None:
        _note(ax, f"measured {label(result.measured_latency_s)}: {'misses' if missed else 'meets'} the budget",
              (at, chosen[1]), -12, _MISS_COLOR if missed else _R_COLOR, bold=True)
    ax.set_ylim(low, high)
    ax.set_xlabel(f"{quantity} ({unit} per batch of {report.target['batch']} on {report.target['name']}"
                  f"{', estimated' if measured else ''})")
    ax.set_ylabel(f"{report.signal} (%)")
    verdict = "meets" if result.meets_budget else "MISSES"
    ax.set_title(f"accuracy against cost: the result {verdict} the budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


_BOX = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}


def _note(ax, text: str, point: tuple[float, float], dy: float, color: str, bold: bool = False) -> None:
    """``text`` beside ``point``, on the side of it nearer the middle of the x axis."""
    left, right = ax.get_xlim()
    rightwards = point[0] < (left + right) / 2
    ax.annotate(text, point, xytext=(8 if rightwards else -8, dy), textcoords="offset points",
                ha="left" if rightwards else "right", fontsize=8, color=color,
                fontweight="bold" if bold else "normal", bbox=_BOX)


def accuracy_range(report: Report) -> tuple[float, float]:
    """The accuracy axis (%): from a little below the lowest of fp32, w8a8, the result and the
    non-dominated policy just cheaper than it (the trade-off the choice made), to a little above the
    best evaluated. Policies the search tried far below (a probe at 2 bits, an early episode) would
    otherwise stretch the axis to 0-100% and flatten every policy that matters into one line."""
    quantity = next(iter(report.budgets))
    result = report.result
    chosen = result.costs[quantity]
    cheaper = [p for p in report.evaluated if p["pareto"] and p["costs"][quantity] < chosen]
    nearest = [max(cheaper, key=lambda p: p["costs"][quantity])["accuracy"]] if cheaper else []
    scored = [report.fp32.accuracy, report.w8a8.accuracy, result.accuracy, result.accuracy_before_finetune,
              *([result.accuracy_finetuned] if result.accuracy_finetuned is not None else [])]
    bottom = 100 * min(scored + nearest)
    top = 100 * max(scored + [p["accuracy"] for p in report.evaluated])
    pad = max(0.25, 0.15 * (top - bottom))
    return bottom - pad, top + pad


def _bits(ax, report: Report) -> None:
    """Weight and activation bits per layer, the layer names on the axis, depthwise layers hatched."""
    rows = report.layers
    positions = range(len(rows))
    for offset, attr, color, label in ((-0.2, "w_bits", _W_COLOR, "weight bits"),
                                       (0.2, "a_bits", _A_COLOR, "activation bits")):
        heights = [getattr(r, attr) or FLOAT_BAR for r in rows]
        bars = ax.bar([p + offset for p in positions], heights, width=0.4, color=color, label=label)
        for bar, row in zip(bars, rows):
            if row.kind == "depthwise":
                bar.set_hatch("///")
                bar.set_edgecolor("white")
    ax.set_xticks(list(positions), [r.layer for r in rows], rotation=90, fontsize=6)
    ax.set_yticks(list(range(0, 9, 2)) + [FLOAT_BAR], [str(b) for b in range(0, 9, 2)] + ["float"])
    ax.set_ylabel("bits")
    ax.set_title("bits per layer (hatched: depthwise)")
    ax.legend(fontsize=7, loc="upper right")


def _reward(ax, report: Report) -> None:
    episodes = [h["episode"] for h in report.history]
    ax.plot(episodes, [h["reward"] for h in report.history], "-", color=_R_COLOR, marker="." if len(episodes) < 30 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode")
    ax.set_ylabel("reward (lambda x points)")
    ax.set_title(f"reward over {len(episodes)} episode{'s' if len(episodes) != 1 else ''} ({report.search.strategy})")
    ax.grid(alpha=0.3)
