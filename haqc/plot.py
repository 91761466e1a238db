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
from haqc.quantities import REPORT_UNITS, in_report_units  # noqa: E402
from haqc.report import Report  # noqa: E402

_W_COLOR, _A_COLOR, _R_COLOR, _FRONT_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"
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
    """Accuracy against the first budgeted quantity: every evaluated policy, the non-dominated ones
    joined, the budget, the chosen policy; fp32 and w8a8 as accuracy lines (their costs, far to the
    right, are in the legend rather than stretching the axis)."""
    quantity = next(iter(report.budgets))  # compress takes at least one
    unit = REPORT_UNITS[quantity][0]

    def x(costs: dict) -> float:
        return in_report_units(quantity, costs[quantity])

    points = report.evaluated
    ax.scatter([x(p["costs"]) for p in points], [100 * p["accuracy"] for p in points], s=12, color="#999999",
               alpha=0.6, label=f"evaluated policies ({len(points)})")
    front = sorted((p for p in points if p["pareto"]), key=lambda p: x(p["costs"]))
    ax.plot([x(p["costs"]) for p in front], [100 * p["accuracy"] for p in front], "-o", color=_FRONT_COLOR,
            markersize=4, label="non-dominated")
    given = report.constraints[quantity]
    ax.axvline(in_report_units(quantity, report.limits[quantity]), color="black", linestyle="--", linewidth=1,
               label=f"budget {given['limit']} ({given['budget']})")
    ax.scatter([x(report.result.costs)], [100 * report.result.accuracy_before_finetune], marker="*", s=180,
               color=_R_COLOR, zorder=5, label="chosen (before fine-tune)")
    if report.result.accuracy_finetuned is not None:
        ax.scatter([x(report.result.costs)], [100 * report.result.accuracy], marker="P", s=90, color=_R_COLOR,
                   edgecolor="black", zorder=5, label="exported")
    for name, row, style in (("fp32", report.fp32, ":"), ("w8a8", report.w8a8, "-.")):
        ax.axhline(100 * row.accuracy, color="black", linestyle=style, linewidth=1,
                   label=f"{name} {100 * row.accuracy:.2f}% at {x(row.costs):.4g} {unit}")
    ax.set_xlabel(f"{quantity} ({unit} per batch of {report.target['batch']} on {report.target['name']})")
    ax.set_ylabel(f"{report.signal} (%)")
    ax.set_title("accuracy against cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


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
