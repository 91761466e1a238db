"""A big model end to end (issue 27): the default compress of onnx's light resnet50, stage by stage.

The corpus's light resnet50 (the light zoo's graph with seeded random weights, 54 layers, 4.1 GMACs
an image) at edge latency 0.5x, with 256 seeded random validation images and 512 training images
(``--train-data``), every other setting the default: where the time goes (the report's ``stages``)
and what the result scores (top-1 agreement with fp32; the model has random weights, so there is no
task accuracy). The same run with ``--search-samples 256`` is the search before it scored a subset
(every validation image per candidate): the time and the result that subset saves and costs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, Check, loadavg, log, read_json

TITLE = "## 8. A big model end to end: compress of light resnet50"
BUDGET_S = 15 * 60  # issue 27: under 15 minutes on two cores
CONFIGS = {"default": [], "every image searched": ["--search-samples", "256"]}
VAL, TRAIN = 256, 512


def run(args: argparse.Namespace, results: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from realmodels.corpus import obtain

    model = obtain("light_resnet50")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        data = {}
        for name, n in (("val", VAL), ("train", TRAIN)):
            data[name] = Path(tmp) / f"{name}.npz"
            np.savez(data[name], **{"gpu_0/data_0": rng.normal(0, 1, (n, 3, 224, 224)).astype(np.float32)})
        chosen = args.big_configs.split(",") if args.big_configs else list(CONFIGS)
        for config, extra in CONFIGS.items():
            if config not in chosen or (args.quick and extra):
                continue
            report = Path(tmp) / "report.json"
            command = [str(Path(sys.executable).parent / "haqc"), "compress", str(model), "--target", "edge", "--latency", "0.5x", "--data", str(data["val"]),
                        "--train-data", str(data["train"]), "-o", str(Path(tmp) / "out.onnx"), "--report",
                        str(report), "--no-plot", "--quiet", "--force", *extra]
            if args.quick:
                command += ["--episodes", "3", "--finetune-seconds", "20"]
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - start
            row = {"config": config, "args": extra, "wall_s": round(wall, 1), "load": loadavg(), "exit": proc.returncode}
            if report.exists():
                r = json.loads(report.read_text())
                row.update(stages=r["stages"], evaluations=r["search"]["evaluations"],
                           samples=r["search"].get("samples") or VAL, fp32=r["fp32"]["accuracy"],
                           w8a8=r["w8a8"]["accuracy"], searched=r["result"]["accuracy_before_finetune"],
                           finetuned=r["result"]["accuracy_finetuned"], result=r["result"]["accuracy"],
                           meets=r["result"]["meets_budget"])
                report.unlink()
            else:
                row["error"] = proc.stderr.strip().splitlines()[-1:]
            rows.append(row)
            log(f"big {config}: {row}")
    kept = [r for r in read_json(results / "big.json") or [] if r["config"] not in {row["config"] for row in rows}]
    (results / "big.json").write_text(json.dumps(kept + rows, indent=2))


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    rows = read_json(results / "big.json")
    if not rows:
        return None
    stages = list(dict.fromkeys(s for r in rows for s in r.get("stages", {})))
    lines = ["`haqc compress light_resnet50.onnx --target edge --latency 0.5x --data val.npz --train-data "
             f"train.npz` ({VAL} and {TRAIN} seeded random images; `benchmarks/big.py`, one subprocess per row). "
             "Scores are top-1 agreement with fp32 on all 256 images (random weights: no task accuracy). Seconds "
             "per stage are the report's `stages`; wall is the whole command, imports included.", "",
             "| settings | wall min | " + " | ".join(f"{s} s" for s in stages)
             + " | evaluations (images each) | w8a8 | searched | fine-tuned | result | meets | exit | load |",
             "|---|---|" + "---|" * len(stages) + "---|---|---|---|---|---|---|---|"]
    checks = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['wall_s'] / 60:.1f} | error: {r['error']} |")
            continue
        tuned = "-" if r["finetuned"] is None else f"{r['finetuned']:.3f}"
        lines.append(f"| {r['config']} | {r['wall_s'] / 60:.1f} | "
                     + " | ".join(f"{r['stages'].get(s, 0):.0f}" for s in stages)
                     + f" | {r['evaluations']} ({r['samples']}) | {r['w8a8']:.3f} | {r['searched']:.3f} | {tuned} | "
                     f"{r['result']:.3f} | {'yes' if r['meets'] else 'no'} | {r['exit']} | {r['load']} |")
        if r["config"] == "default":
            checks.append(Check("default compress of light resnet50 at edge 0.5x under 15 min", "section 8",
                                r["wall_s"] <= BUDGET_S and r["exit"] == 0, f"{r['wall_s'] / 60:.1f} min"))
    lines.append("")
    return lines, checks
