"""haqc benchmarks (issue 6): quality, peer, speed, scale. Not part of the test suite.

    python benchmarks/run.py [--quick] [--only quality,peer,speed,scale] [--deadline-min M] [--fresh]
    python benchmarks/run.py --render          # only rewrite RESULTS.md from benchmarks/results/*.json

Raw results go to benchmarks/results/ (quality is appended one JSON line per cell, so an
interrupted or deadline-limited run keeps what it measured and a re-run skips finished cells);
benchmarks/RESULTS.md is rendered from them. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
EX = ROOT / "examples" / "mnist"
MODEL = str(EX / "mnist_mbv2.onnx")
VAL, CALIB, TRAIN = str(EX / "val.npz"), str(EX / "calib.npz"), str(EX / "train.npz")
EPISODES = 60


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", flush=True)


def med(xs):
    return statistics.median(xs)


# --------------------------------------------------------------------------- quality

def quality_cells(quick: bool, size_budget: str) -> list[dict]:
    """Cells in priority order: a deadline-limited run measures the most important ones first."""
    def cell(target, quantity, budget, strategy, seed=0, method="linear"):
        return {"target": target, "quantity": quantity, "budget": budget, "strategy": strategy,
                "seed": seed, "method": method}

    four = [("ddpg", 0), ("random", 0), ("uniform", 0), ("greedy", 0)]
    if quick:
        return [cell("edge", "latency", "0.5x", s, seed) for s, seed in four]
    cells = []
    # tier A: one seed of every strategy on every (target, budget) the issue names
    for b in ("0.5x", "0.4x", "0.6x"):
        cells += [cell("edge", "latency", b, s, seed) for s, seed in four]
    cells += [cell("cloud", "latency", "0.5x", s, seed) for s, seed in four]
    cells += [cell("bitfusion", "latency", "0.5x", s, seed) for s, seed in four]
    cells += [cell("edge", "size", size_budget, s, seed, "kmeans") for s, seed in four]
    # tier B: seeds 1 and 2 of the random strategies on edge
    for b in ("0.5x", "0.4x", "0.6x"):
        cells += [cell("edge", "latency", b, s, seed) for seed in (1, 2) for s in ("ddpg", "random")]
    # tier C: bitfusion energy, then the rest of the cloud/bitfusion budgets
    cells += [cell("bitfusion", "energy", "0.5x", s, seed) for s, seed in four]
    for t in ("cloud", "bitfusion"):
        for b in ("0.4x", "0.6x"):
            cells += [cell(t, "latency", b, s, seed) for s, seed in four]
    return cells


def kmeans_size_budget() -> dict:
    """0.1x of the fp32 size expressed relative to all-8-bit (haqc's 'Nx' is relative to w8a8)."""
    from haqc.compress import policy_costs
    from haqc.hw_targets import load_target
    from haqc.pipeline import prepare
    from haqc.policy import LayerBits, uniform_policy

    prepared = prepare(MODEL)
    target = load_target("edge")
    fp32 = policy_costs(target, prepared.layers, uniform_policy(prepared.layers, LayerBits(None, None)))["size_mb"]
    w8 = policy_costs(target, prepared.layers, uniform_policy(prepared.layers, LayerBits(8, None)))["size_mb"]
    rel = 0.1 * fp32 / w8
    return {"fp32_size_mb": fp32, "w8_size_mb": w8, "relative_to_w8": rel, "budget": f"{rel:.4f}x"}


def cell_key(c: dict) -> str:
    return f"{c['target']}/{c['method']}/{c['quantity']}={c['budget']}/{c['strategy']}/seed{c['seed']}"


def run_quality(args) -> None:
    from haqc.compress import CompressConfig, compress
    from haqc.errors import BudgetUnreachableError
    from haqc.quantize import QuantizeOptions

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("quality_quick.jsonl" if args.quick else "quality.jsonl")
    meta_path = RESULTS / "quality_meta.json"
    km = kmeans_size_budget()
    meta_path.write_text(json.dumps({"kmeans_size": km, "episodes": args.episodes}, indent=2))
    done = set()
    if out.exists() and not args.fresh:
        done = {json.loads(l)["key"] for l in out.read_text().splitlines() if l.strip()}
    deadline = time.time() + args.deadline_min * 60 if args.deadline_min else None
    for c in quality_cells(args.quick, km["budget"]):
        key = cell_key(c)
        if key in done:
            continue
        if deadline and time.time() > deadline:
            log(f"quality: deadline reached, skipping {key} and the rest")
            break
        episodes = 10 if args.quick else args.episodes
        config = CompressConfig(
            target=c["target"], budgets={c["quantity"]: c["budget"]}, data=VAL, calib_data=CALIB,
            train_data=TRAIN, strategy=c["strategy"], episodes=episodes, seed=c["seed"],
            quantize=QuantizeOptions(method=c["method"]), finetune_epochs=1,
        )
        rec = {"key": key, **c, "episodes": episodes, "load_before": loadavg()}
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                report = compress(MODEL, config, report_path=os.path.join(tmp, "report.json")).report
                rec.update(status="ok", fp32=report["fp32"], w8a8=report["w8a8"],
                           result={k: v for k, v in report["result"].items()},
                           search={k: report["search"][k] for k in ("episodes", "best_episode", "seconds", "evaluations")},
                           constraints=report["constraints"])
            except BudgetUnreachableError as err:
                rec.update(status="unreachable", error=str(err))
        rec["wall_s"] = time.perf_counter() - t
        rec["load_after"] = loadavg()
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        acc = rec.get("result", {}).get("accuracy")
        log(f"quality {key}: {rec['status']} top1={acc} wall={rec['wall_s']:.1f}s")

