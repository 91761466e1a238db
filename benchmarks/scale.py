"""Scale: time and peak RSS of inspect, cost tables, calibration and a w8a8 export on large models.

Each model runs ``scale_one.py`` in a fresh process, so its peak RSS is that
model's own and not the high-water mark of everything measured before it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, Check, loadavg, log, read_json

TITLE = "## 4. Scale (onnx's light models, one subprocess each)"
MODELS = ("resnet50", "densenet121", "vgg19")


def run(args: argparse.Namespace, results: Path) -> None:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    rows = []
    for name in MODELS[:1] if args.quick else MODELS:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / "scale_one.py"), str(light / f"light_{name}.onnx")],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            rows.append({"name": name, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall})
        else:
            rows.append({"name": name, **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall,
                         "load": loadavg()})
        log(f"scale {name}: {rows[-1]}")
    (results / "scale.json").write_text(json.dumps(rows, indent=2))


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    """This part's section of RESULTS.md (the issue sets no target for it)."""
    scale = read_json(results / "scale.json")
    if not scale:
        return None
    lines = ["Each model runs `benchmarks/scale_one.py` in its own process: `prepare` (inspect), cost tables for "
              "edge/cloud/bitfusion, `Quantizer` calibration on 4 random [1,3,224,224] inputs and one uniform "
              "w8a8 `export`. Peak RSS = that process's `VmHWM` (`ru_maxrss` where /proc is missing; includes ~the "
              "import baseline shown). "
              "Weight bytes = float32 initializers of the canonical (folded) model.", "",
              "| model | layers | fp32 weights MB | inspect s | cost tables s (edge/cloud/bitfusion) | calibrate s | export w8a8 s | RSS after imports MB | peak RSS MB | peak RSS / weights | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in scale:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} |||||||||")
            continue
        ct = r["cost_table_s"]
        lines.append(f"| {r['name']} | {r['layers']} | {r['weight_bytes_fp32'] / 1e6:.1f} | {r['inspect_s']:.2f} | "
                     f"{ct['edge']:.3f} / {ct['cloud']:.3f} / {ct['bitfusion']:.3f} | {r['calibrate_s']:.2f} | "
                     f"{r['export_w8a8_s']:.2f} | {r['rss_after_imports_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_over_weights']:.1f} | {r['load']} |")
    lines.append("")
    return lines, []
