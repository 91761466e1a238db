"""Plots of a compress report: per-layer weight/activation bits (the HAQ paper's figure) and the search curve.

``.html`` needs nothing beyond the standard library (inline SVG); ``.png``
uses matplotlib when it is installed (``pip install haqc[plot]``).
"""
from __future__ import annotations

import html
import io
from pathlib import Path

from haqc.errors import InputError
from haqc.io import atomic_write_bytes, atomic_write_text
from haqc.report import Report

_W_COLOR, _A_COLOR, _R_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def write_plot(report: Report, path: str) -> None:
    suffix = Path(path).suffix.lower()
    if suffix == ".html":
        atomic_write_text(path, _html(report))
    elif suffix == ".png":
        atomic_write_bytes(path, _png(report))
    else:
        raise InputError(f"`plot` {path}: use a .html or .png file name")


def _bits(report: Report) -> tuple[list[str], list[int], list[int]]:
    rows = report.layers
    w = [r.w_bits or 32 for r in rows]
    a = [r.a_bits or 32 for r in rows]
    return [r.layer for r in rows], w, a


def _html(report: Report) -> str:
    names, w, a = _bits(report)
    n = len(names)
    width, height, pad = max(480, 22 * n + 80), 260, 40
    step = (width - 2 * pad) / max(n, 1)
    top = 8
    bars = []
    for i, (name, wb, ab) in enumerate(zip(names, w, a)):
        x = pad + i * step
        for value, color, sign in ((wb, _W_COLOR, -1), (ab, _A_COLOR, 1)):
            h = min(value, top) / top * (height / 2 - pad / 2)
            y = height / 2 - h if sign < 0 else height / 2
            bars.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{step - 4:.1f}" height="{h:.1f}" fill="{color}">'
                        f'<title>{html.escape(name)}: w{wb} a{ab}</title></rect>')
    curve = _curve_svg(report.history, width, pad)
    return (
        "<!doctype html><meta charset='utf-8'><title>haqc policy</title>"
        f"<h3>{html.escape(report.model)} on {html.escape(report.target['name'])}</h3>"
        f"<p><span style='color:{_W_COLOR}'>&#9632; weight bits (up)</span> "
        f"<span style='color:{_A_COLOR}'>&#9632; activation bits (down)</span>, one bar pair per layer, 8 bits full scale</p>"
        f"<svg width='{width}' height='{height}' style='border:1px solid #ccc'>"
        f"<line x1='{pad}' x2='{width - pad}' y1='{height / 2}' y2='{height / 2}' stroke='#333'/>{''.join(bars)}</svg>"
        f"{curve}"
    )


def _curve_svg(history: list[dict], width: int, pad: int) -> str:
    rewards = [h["reward"] for h in history]
    if len(rewards) < 2:
        return ""
    height = 200
    lo, hi = min(rewards), max(rewards)
    span = (hi - lo) or 1.0
    points = " ".join(
        f"{pad + i / (len(rewards) - 1) * (width - 2 * pad):.1f},{height - pad / 2 - (r - lo) / span * (height - pad):.1f}"
        for i, r in enumerate(rewards)
    )
    return (f"<p>reward per episode (min {lo:.4f}, max {hi:.4f})</p><svg width='{width}' height='{height}' "
            f"style='border:1px solid #ccc'><polyline fill='none' stroke='{_R_COLOR}' points='{points}'/></svg>")


def _png(report: Report) -> bytes:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("`plot` FILE.png needs matplotlib (pip install 'haqc[plot]'); or use a .html file") from None
    names, w, a = _bits(report)
    history = report.history
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.3 * len(names)), 6))
    x = range(len(names))
    axes[0].bar(x, w, color=_W_COLOR, label="weight bits")
    axes[0].bar(x, [-v for v in a], color=_A_COLOR, label="activation bits")
    axes[0].set_xticks(list(x), names, rotation=90, fontsize=6)
    axes[0].set_ylabel("bits")
    axes[0].legend(fontsize=7)
    axes[1].plot([h["episode"] for h in history], [h["reward"] for h in history], color=_R_COLOR)
    axes[1].set_xlabel("episode")
    axes[1].set_ylabel("reward")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
