"""Parallel evaluation (issue 15): candidate evaluations per second, serial and in Ray workers.

Configurations, interleaved round by round so the shared machine's load hits them alike: serial (this
process, ONNX Runtime on every core), one Ray worker and two Ray workers (1 ORT thread each). Each
scores the same seeded random policies, warmed once first (weight caches), so a timed round is a
graph rewrite plus one evaluation per policy. The overhead Ray adds per round (a policy out, a float
back, scheduling) is timed with a scorer that does nothing (``len``); the recipe's one transfer with
its size and the pool's start. Then the same on a two-node Ray cluster on this machine (``ray start
--head`` plus a second ``ray start``, one CPU each, so each worker lands on its own node).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common import CALIB, MODEL, VAL, Check, loadavg, log, read_json

TITLE = "## 5. Parallel evaluation (`--workers`, Ray)"
CORPUS = Path.home() / ".cache" / "haqc-corpus"
HEAD_PORT = 6391


def scorer(name: str, images: int | None) -> Any:
    """The CandidateScorer compress builds: mnist from the example, resnet18 on random images."""
    from haqc.evaluation import Evaluator
    from haqc.pipeline import prepare
    from haqc.quantizer import CandidateScorer, QuantizeOptions, Quantizer, load_run_data

    if name == "mnist":
        prepared = prepare(MODEL)
        run = load_run_data(prepared, VAL, CALIB, None, None)
    else:
        prepared = prepare(next(CORPUS.glob("resnet18_ts-*/resnet18_ts.onnx")))
        x = np.random.default_rng(0).standard_normal((images, 3, 224, 224)).astype(np.float32)
        run = load_run_data(prepared, {prepared.input_names[0]: x}, None, None, None)
    quantizer = Quantizer.calibrated(prepared, run.calib, QuantizeOptions())
    return CandidateScorer(quantizer, Evaluator(run.val, reference=prepared.model)), prepared.layers


def policies(layers: list, count: int) -> list[dict]:
    from haqc.precision import Option

    rng = np.random.default_rng(0)
    return [{l.name: Option(int(rng.integers(2, 9)), int(rng.integers(2, 9))) for l in layers} for _ in range(count)]


def timed(evaluate: Callable[[list], list], batch: list) -> float:
    start = time.perf_counter()
    evaluate(batch)
    return time.perf_counter() - start


def measure(name: str, images: int | None, count: int, rounds: int) -> dict:
    import ray

    from haqc.workers import RayPool

    score, layers = scorer(name, images)
    batch = policies(layers, count)
    out: dict[str, Any] = {"model": name, "images": len(score.evaluator.dataset), "policies": count,
                           "recipe_mb": len(ray.cloudpickle.dumps(score)) / 1e6}
    t = time.perf_counter()
    ray.put(score)
    out["put_s"] = time.perf_counter() - t
    pools = {}
    for workers in (1, 2):
        t = time.perf_counter()
        pools[workers] = RayPool(score, workers, threads=1).__enter__()
        out[f"start_{workers}_s"] = time.perf_counter() - t
    configs = {"serial (2 threads)": lambda b: [score(p) for p in b],
               "1 worker (1 thread)": pools[1].map, "2 workers (1 thread each)": pools[2].map}
    answers = {label: evaluate(batch) for label, evaluate in configs.items()}  # warm-up, and the same scores
    out["same_scores"] = len({json.dumps(a) for a in answers.values()}) == 1
    seconds: dict[str, list[float]] = {label: [] for label in configs}
    for r in range(rounds):
        for label, evaluate in configs.items():
            seconds[label].append(timed(evaluate, batch))
        log(f"parallel {name} round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in seconds.items()))
    out["evals_per_s"] = {k: count / statistics.median(v) for k, v in seconds.items()}
    out["load"] = loadavg()
    for pool in pools.values():
        pool.__exit__(None, None, None)
    with RayPool(len, 2, threads=1) as noop:  # Ray's own cost of one round of two policies
        noop.map(batch[:2])
        out["round_overhead_ms"] = 1e3 * statistics.median(timed(noop.map, batch[:2]) for _ in range(50))
    return out


def two_nodes(count: int, rounds: int) -> dict:
    """Two workers on a two-node cluster on this machine (one CPU per node), mnist."""
    import ray

    from haqc.workers import RayPool

    ray_cli = str(Path(sys.executable).parent / "ray")
    quiet = {"capture_output": True, "text": True}
    head = subprocess.run([ray_cli, "start", "--head", f"--port={HEAD_PORT}", "--num-cpus=1",
                           "--include-dashboard=false", "--disable-usage-stats"], **quiet)
    node = subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{HEAD_PORT}", "--num-cpus=1"], **quiet)
    try:
        if head.returncode or node.returncode:
            return {"error": (head.stderr + node.stderr).strip().splitlines()[-1:]}
        score, layers = scorer("mnist", None)
        batch = policies(layers, count)
        t = time.perf_counter()
        with RayPool(score, 2, address=f"127.0.0.1:{HEAD_PORT}", threads=1) as pool:
            start = time.perf_counter() - t
            nodes = len({a["NodeID"] for a in ray.nodes() if a["Alive"]})
            pool.map(batch)
            seconds = [timed(pool.map, batch) for _ in range(rounds)]
        with RayPool(len, 2, address=f"127.0.0.1:{HEAD_PORT}", threads=1) as noop:
            noop.map(batch[:2])
            overhead = 1e3 * statistics.median(timed(noop.map, batch[:2]) for _ in range(50))
        return {"nodes": nodes, "start_s": start, "evals_per_s": count / statistics.median(seconds),
                "round_overhead_ms": overhead, "load": loadavg()}
    finally:
        subprocess.run([ray_cli, "stop", "--force"], **quiet)


def run(args: argparse.Namespace, results: Path) -> None:
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")  # 3 pools at once
    try:
        rows = [measure("mnist", None, 8, 2 if args.quick else 4)]
        if not args.quick:
            rows.append(measure("resnet18", 256, 4, 3))
    finally:
        ray.shutdown()
    data = {"local": rows, "two_nodes": two_nodes(8, 2 if args.quick else 4)}
    log(f"parallel: {data}")
    (results / "parallel.json").write_text(json.dumps(data, indent=2))


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    data = read_json(results / "parallel.json")
    if not data:
        return None
    labels = list(data["local"][0]["evals_per_s"])
    lines = ["Candidate evaluations per second (a quantized export of a seeded random policy plus one ONNX Runtime "
             "pass over the images), median of interleaved rounds after a warm-up round; `benchmarks/parallel.py`. "
             "The machine has 2 cores, shared with other work (load average in the last column).", "",
             "| model | images | " + " | ".join(labels) + " | 2 workers / serial | same scores | load |",
             "|---|---|" + "---|" * len(labels) + "---|---|---|"]
    checks = []
    for r in data["local"]:
        e = r["evals_per_s"]
        ratio = e[labels[2]] / e[labels[0]]
        lines.append(f"| {r['model']} | {r['images']} | " + " | ".join(f"{e[k]:.2f}" for k in labels)
                     + f" | {ratio:.2f}x | {r['same_scores']} | {r['load']} |")
        checks.append(Check(f"2 workers score like serial ({r['model']})", "parallel", r["same_scores"],
                            f"{ratio:.2f}x serial's rate"))
    lines += ["", "Ray's costs, per pool and per round:", "",
              "| model | recipe MB (pickled once) | ray.put s | start 1 worker s | start 2 workers s | "
              "round of 2 no-op policies ms |", "|---|---|---|---|---|---|"]
    for r in data["local"]:
        lines.append(f"| {r['model']} | {r['recipe_mb']:.1f} | {r['put_s']:.3f} | {r['start_1_s']:.1f} | "
                     f"{r['start_2_s']:.1f} | {r['round_overhead_ms']:.2f} |")
    lines.append("")
    for r in data["local"]:
        one = 1e3 / r["evals_per_s"][labels[1]]  # ms per evaluation on one worker
        lines.append(f"- {r['model']}: Ray's round trip is {r['round_overhead_ms']:.2f} ms against {one:.0f} ms for one "
                     f"evaluation on one worker ({100 * r['round_overhead_ms'] / one:.2f}%): with N workers a round "
                     f"costs the slowest of N evaluations plus that, so on machines with free cores the rate scales "
                     f"with N until the driver's agent update (ms) or the start (recipe {r['recipe_mb']:.0f} MB once "
                     "per node, a few seconds) dominates.")
    two = data["two_nodes"]
    lines.append("")
    if "error" in two:
        lines.append(f"Two-node cluster: could not start ({two['error']}).")
    else:
        lines.append(f"Two-node cluster on this machine (`ray start --head --num-cpus=1` plus a second "
                     f"`ray start --address=... --num-cpus=1`; {two['nodes']} nodes alive, one worker each), mnist: "
                     f"pool start {two['start_s']:.1f} s (the recipe copied to the second node's object store), "
                     f"{two['evals_per_s']:.2f} evaluations/s, a round of 2 no-op policies "
                     f"{two['round_overhead_ms']:.2f} ms (load {two['load']}).")
    lines.append("")
    return lines, checks
