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
    # tier D: seeds 1 and 2 of the random strategies on cloud and k-means (bitfusion is unreachable)
    for b in ("0.5x", "0.4x", "0.6x"):
        cells += [cell("cloud", "latency", b, s, seed) for seed in (1, 2) for s in ("ddpg", "random")]
    cells += [cell("edge", "size", size_budget, s, seed, "kmeans") for seed in (1, 2) for s in ("ddpg", "random")]
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
    if args.fresh:  # a new grid: earlier records (still in git history) must not mix with it
        out.unlink(missing_ok=True)
    elif out.exists():
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



# --------------------------------------------------------------------------- peer

def run_peer(args) -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from haqc.evaluate import Evaluator, make_session, predictions
    from haqc.pipeline import prepare
    from haqc.policy import LayerBits, uniform_policy
    from haqc.quantize import QuantizeOptions, Quantizer, load_data

    prepared = prepare(MODEL)
    val = load_data(VAL, prepared, "--data")
    calib = load_data(CALIB, prepared, "--calib-data")
    evaluator = Evaluator(val)
    input_name = onnx.load(MODEL).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: f[next(iter(f))]} for f, _ in calib.batches(64)])

        def get_next(self):
            return next(self.it, None)

    res: dict = {"rounds": 5 if args.quick else 15}
    tmp = Path(tempfile.mkdtemp())
    pre = tmp / "pre.onnx"
    quant_pre_process(MODEL, str(pre))
    ort_models = {}
    for method in ("MinMax", "Entropy", "Percentile"):
        path = tmp / f"ort_{method}.onnx"
        t = time.perf_counter()
        try:
            quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=getattr(CalibrationMethod, method))
            acc = evaluator.evaluate(str(path)).accuracy
            res[f"ort_{method}"] = {"top1": acc, "quantize_s": time.perf_counter() - t}
            ort_models[method] = (acc, path)
        except Exception as err:  # noqa: BLE001 -- recorded, not fatal
            res[f"ort_{method}"] = {"error": f"{type(err).__name__}: {err}"}
        log(f"peer ORT {method}: {res[f'ort_{method}']}")
    best = max(ort_models, key=lambda m: ort_models[m][0])
    res["ort_best_method"] = best
    t = time.perf_counter()
    quantizer = Quantizer(prepared, calib, QuantizeOptions())
    haqc_model = quantizer.export(uniform_policy(prepared.layers, LayerBits(8, 8)))
    res["haqc_quantize_s"] = time.perf_counter() - t
    res["haqc_top1"] = evaluator.evaluate(haqc_model).accuracy
    res["ort_top1"] = ort_models[best][0]
    res["fp32_top1"] = evaluator.evaluate(prepared.model).accuracy
    # latency: sessions created once (haqc's session options for both), inference over the 1,000
    # validation images timed, interleaved A,B,A,B...
    sessions = {"haqc": make_session(haqc_model), "ort": make_session(str(ort_models[best][1])),
                "fp32": make_session(prepared.model)}
    for s in sessions.values():
        predictions(s, val)  # warm-up
    times = {k: [] for k in sessions}
    res["load_before"] = loadavg()
    for _ in range(res["rounds"]):
        for k, s in sessions.items():
            t = time.perf_counter()
            predictions(s, val)
            times[k].append(time.perf_counter() - t)
    res["load_after"] = loadavg()
    res["times_s"] = times
    res["median_s"] = {k: med(v) for k, v in times.items()}
    res["ratio_haqc_over_ort"] = res["median_s"]["haqc"] / res["median_s"]["ort"]
    # per-round ratios too, so the spread of the ratio is visible
    rr = [a / b for a, b in zip(times["haqc"], times["ort"])]
    res["ratio_per_round"] = {"min": min(rr), "median": med(rr), "max": max(rr)}
    nodes = {}
    for k, m in (("haqc", haqc_model), ("ort", onnx.load(str(ort_models[best][1])))):
        ops = {}
        for n in m.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        nodes[k] = ops
    res["op_counts"] = nodes
    (RESULTS / "peer.json").write_text(json.dumps(res, indent=2))
    log(f"peer: haqc {res['haqc_top1']:.4f} ort {res['ort_top1']:.4f} ratio {res['ratio_haqc_over_ort']:.3f}")


# --------------------------------------------------------------------------- speed

def mixed_policy(layers):
    from haqc.policy import LayerBits

    pattern = [(8, 8), (6, 5), (4, 6), (5, 4), (3, 5), (4, 4)]
    pol = {}
    for i, l in enumerate(layers):
        w, a = (8, 8) if i in (0, len(layers) - 1) else pattern[i % len(pattern)]
        pol[l.name] = LayerBits(w, a)
    return pol


def run_speed(args) -> None:
    from haqc.compress import CompressConfig, compress
    from haqc.evaluate import Evaluator
    from haqc.pipeline import prepare
    from haqc.policy import LayerBits, uniform_policy
    from haqc.quantize import QuantizeOptions, Quantizer, load_data

    res: dict = {"load_before": loadavg()}
    prepared = prepare(MODEL)
    val = load_data(VAL, prepared, "--data")
    calib = load_data(CALIB, prepared, "--calib-data")
    evaluator = Evaluator(val)
    n_floor = 5 if args.quick else 10
    floor = [evaluator.evaluate(prepared.model).seconds for _ in range(n_floor + 1)][1:]  # first is warm-up
    res["floor_s"] = {"median": med(floor), "all": floor}
    # episode cost: a ddpg search without fine-tuning (search seconds / episodes)
    episodes = 10 if args.quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CompressConfig(target="edge", budgets={"latency": "0.5x"}, data=VAL, calib_data=CALIB,
                             strategy="ddpg", episodes=episodes, seed=0, finetune_epochs=0)
        rep = compress(MODEL, cfg, report_path=os.path.join(tmp, "r.json")).report
    res["search"] = {"episodes": episodes, "seconds": rep["search"]["seconds"],
                     "evaluations": rep["search"]["evaluations"],
                     "per_episode_s": rep["search"]["seconds"] / episodes,
                     "per_evaluation_s": rep["search"]["seconds"] / max(rep["search"]["evaluations"], 1)}
    res["episode_over_floor"] = res["search"]["per_episode_s"] / res["floor_s"]["median"]
    # a floor measured right after the search too (load drifts)
    floor2 = [evaluator.evaluate(prepared.model).seconds for _ in range(n_floor)]
    res["floor_after_s"] = {"median": med(floor2), "all": floor2}
    log(f"speed: floor {med(floor):.3f}s / {med(floor2):.3f}s, episode {res['search']['per_episode_s']:.3f}s")
    # profile a short search
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CompressConfig(target="edge", budgets={"latency": "0.5x"}, data=VAL, calib_data=CALIB,
                             strategy="ddpg", episodes=10, seed=1, finetune_epochs=0)
        t = time.perf_counter()
        prof.enable()
        rep = compress(MODEL, cfg, report_path=os.path.join(tmp, "r.json")).report
        prof.disable()
        total = time.perf_counter() - t
    stats = pstats.Stats(prof)
    want = {
        "compress (total)": ("haqc/compress.py", "compress"),
        "prepare (load+canonicalize+extract)": ("haqc/pipeline.py", "prepare"),
        "Quantizer.__init__ (calibration)": ("haqc/quantize.py", "__init__"),
        "search()": ("haqc/search/strategies.py", "search"),
        "evaluate callback (export + ORT eval)": ("haqc/compress.py", "evaluate"),
        "Quantizer.export (graph rewrite)": ("haqc/quantize.py", "export"),
        "Evaluator.evaluate": ("haqc/evaluate.py", "evaluate"),
        "make_session (ORT session creation)": ("haqc/evaluate.py", "make_session"),
        "predictions (ORT inference)": ("haqc/evaluate.py", "predictions"),
        "SerializeToString": ("~", "<method 'SerializeToString' of 'google._upb._message.Message' objects>"),
        "DDPG update": ("haqc/search/agent.py", "update"),
        "DDPG act": ("haqc/search/agent.py", "act"),
        "checkpoint save": ("haqc/search/checkpoint.py", "save"),
    }
    table = {}
    for label, (fname, func) in want.items():
        calls = cum = 0.0
        for (f, _line, fn), (cc, nc, tt, ct, _callers) in stats.stats.items():
            if fn == func and (f.endswith(fname) or fname == "~" and f == "~"):
                calls += nc
                cum += ct
        table[label] = {"calls": int(calls), "cumulative_s": cum}
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    res["profile"] = {"episodes": 10, "evaluations": rep["search"]["evaluations"], "wall_s": total,
                      "search_s": rep["search"]["seconds"], "entries": table}
    (RESULTS / "profile.txt").write_text(s.getvalue())
    # issue-4: quantize (calibration cached) + evaluate for a new policy, vs a plain fp32 evaluation
    quantizer = Quantizer(prepared, calib, QuantizeOptions())
    policies = {
        "w8a8": uniform_policy(prepared.layers, LayerBits(8, 8)),
        "w4a4": uniform_policy(prepared.layers, LayerBits(4, 4)),
        "w3a5": uniform_policy(prepared.layers, LayerBits(3, 5)),
        "mixed": mixed_policy(prepared.layers),
    }
    n = 3 if args.quick else 5
    per = {}
    floor3 = []
    for name, pol in policies.items():
        for packed in (False, True):  # the search's export, then the final output's
            ex, ev, tot, acc = [], [], [], None
            for _ in range(n):
                t = time.perf_counter()
                m = quantizer.export(pol, packed=packed)
                t1 = time.perf_counter()
                r = evaluator.evaluate(m)
                t2 = time.perf_counter()
                ex.append(t1 - t)
                ev.append(t2 - t1)
                tot.append(t2 - t)
                acc = r.accuracy
                floor3.append(evaluator.evaluate(prepared.model).seconds)  # interleaved floor
            per[f"{name} {'packed' if packed else 'search'}"] = {"export_s": med(ex), "eval_s": med(ev),
                                                                "total_s": med(tot), "top1": acc}
    fl = med(floor3)
    for v in per.values():
        v["ratio_to_floor"] = v["total_s"] / fl
    res["issue4"] = {"floor_interleaved_s": fl, "policies": per, "repeats": n}
    res["load_after"] = loadavg()
    (RESULTS / "speed.json").write_text(json.dumps(res, indent=2))
    log(f"speed: issue4 {json.dumps({k: round(v['ratio_to_floor'], 2) for k, v in per.items()})}")


# --------------------------------------------------------------------------- scale

SCALE_MODELS = ("resnet50", "densenet121", "vgg19")


def run_scale(args) -> None:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    rows = []
    for name in SCALE_MODELS[:1] if args.quick else SCALE_MODELS:
        path = light / f"light_{name}.onnx"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / "scale_one.py"), str(path)], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            rows.append({"name": name, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall})
        else:
            rows.append({"name": name, **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall,
                         "load": loadavg()})
        log(f"scale {name}: {rows[-1]}")
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=2))


# --------------------------------------------------------------------------- render

def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    import haqc

    return {"haqc": getattr(haqc, "__version__", "?"), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__}


def _machine() -> dict:
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    return {"nproc": sh("nproc"), "free_g": sh("free -g | sed -n 2p"), "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"),
            "platform": platform.platform()}


def _fmt_acc(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = 100 * statistics.mean(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(xs):.2f} ({100 * min(xs):.2f}–{100 * max(xs):.2f})"


def render_quality(lines: list[str]) -> list[str]:
    path = RESULTS / "quality.jsonl"
    if not path.exists():
        lines.append("_quality: not measured in this run._\n")
        return []
    recs, seen = [], set()
    for line in path.read_text().splitlines():  # first record of a key wins (parallel/resumed runs)
        if line.strip() and json.loads(line)["key"] not in seen:
            recs.append(json.loads(line))
            seen.add(recs[-1]["key"])
    meta = json.loads((RESULTS / "quality_meta.json").read_text()) if (RESULTS / "quality_meta.json").exists() else {}
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["target"], r["method"], r["quantity"], r["budget"]), {}).setdefault(r["strategy"], []).append(r)
    checks = []
    fp32 = next((r["fp32"]["accuracy"] for r in recs if r["status"] == "ok"), None)
    if fp32 is not None:
        lines.append(f"fp32 top-1 on val.npz (1,000 images): **{100 * fp32:.2f}%**. "
                     f"Each cell: one in-process `compress()` ({recs[0]['episodes']} episodes for ddpg/random), "
                     "then `finetune_epochs=1` on train.npz (4,000 images); **top-1** is the exported model's "
                     "(compress keeps the fine-tuned weights only if they score at least as well), "
                     "*before FT* is the searched policy as calibrated. Mean ± stdev (min–max) over seeds where n > 1.\n")
    if meta.get("kmeans_size"):
        k = meta["kmeans_size"]
        lines.append(f"K-means size budget: 0.1x of the fp32 weight size = 0.1 × {k['fp32_size_mb']:.4f} MB = "
                     f"{0.1 * k['fp32_size_mb'] * 1000:.1f} kB; haqc's `Nx` is relative to all-8-bit "
                     f"({k['w8_size_mb']:.4f} MB), so the cell runs `--size {k['budget']}` "
                     f"(= {k['relative_to_w8']:.4f} × w8 size).\n")
    for (target, method, quantity, budget), by in groups.items():
        anyok = next((r for rs in by.values() for r in rs if r["status"] == "ok"), None)
        head = f"#### {target}, {quantity} {budget}" + (" (k-means)" if method == "kmeans" else "")
        if anyok:
            head += f" — limit {anyok['constraints'][quantity]['limit']}; w8a8 top-1 {100 * anyok['w8a8']['accuracy']:.2f}%"
        lines += [head, "", "| strategy | n | top-1 % | before FT % | drop vs fp32 (pts) | achieved cost | evaluations | search s (median) |",
                  "|---|---|---|---|---|---|---|---|"]
        means = {}
        for strategy in ("ddpg", "random", "uniform", "greedy"):
            rs = by.get(strategy)
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            if not ok:
                lines.append(f"| {strategy} | {len(rs)} | unreachable: {rs[0].get('error', '')[:120]} | | | | | |")
                continue
            accs = [r["result"]["accuracy"] for r in ok]
            means[strategy] = statistics.mean(accs)
            unit = {"latency": "latency_ms", "energy": "energy_mj", "size": "size_mb"}[quantity]
            cost = statistics.mean(r["result"][unit] for r in ok)
            lines.append(
                f"| {strategy} | {len(ok)} | {_fmt_acc(accs)} | {_fmt_acc([r['result']['accuracy_before_finetune'] for r in ok])} "
                f"| {100 * (ok[0]['fp32']['accuracy'] - statistics.mean(accs)):.2f} | {cost:.4g} {unit.split('_')[1]} "
                f"| {med([r['search']['evaluations'] for r in ok]):g} | {med([r['search']['seconds'] for r in ok]):.1f} |")
        lines.append("")
        label = f"{target} {quantity} {budget}" + (" k-means" if method == "kmeans" else "")
        if "ddpg" in means and "uniform" in means:
            d = 100 * (means["ddpg"] - means["uniform"])
            checks.append(("ddpg >= uniform", label, d >= 0, f"{d:+.2f} pts"))
        if "ddpg" in means and "random" in means:
            d = 100 * (means["ddpg"] - means["random"])
            checks.append(("ddpg >= random (mean)", label, d >= 0, f"{d:+.2f} pts"))
        if (target, quantity, budget, method) == ("edge", "latency", "0.5x", "linear") and "ddpg" in means:
            d = 100 * (fp32 - means["ddpg"])
            checks.append(("edge 0.5x drop <= 1 pt", label, d <= 1.0, f"drop {d:.2f} pts"))
    return checks


def render(args) -> None:
    lines = ["# haqc benchmarks — results", "",
             "Generated by `benchmarks/run.py` from the raw results in `benchmarks/results/` "
             "(regenerate with `python benchmarks/run.py --render`). Every figure below was measured; "
             "nothing is copied from the docs.", ""]
    run_meta = json.loads((RESULTS / "run_meta.json").read_text()) if (RESULTS / "run_meta.json").exists() else {}
    v = run_meta.get("versions") or _versions()
    m = run_meta.get("machine") or _machine()
    lines += ["## Setup", "",
              f"- Date: {run_meta.get('date', datetime.date.today().isoformat())}",
              f"- Command(s): {'; '.join('`' + c + '`' for c in run_meta.get('commands', [])) or '`python benchmarks/run.py`'}",
              f"- Machine: {m['nproc']} cores ({m['cpu']}), `free -g` Mem row: `{m['free_g']}`, {m['platform']}",
              "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
              "- Load: the 1/5/15-minute load average (`uptime`) is recorded next to every timing; the machine "
              "has 2 cores and was shared (see notes).", ""]
    lines += ["## 1. Quality (bundled MNIST MobileNetV2 example)", ""]
    checks = render_quality(lines)
    peer = json.loads((RESULTS / "peer.json").read_text()) if (RESULTS / "peer.json").exists() else None
    lines += ["## 2. Peer: haqc w8a8 export vs ONNX Runtime `quantize_static`", ""]
    if peer:
        lines += ["`quantize_static` on the `quant_pre_process`ed model: QDQ, per-channel, QInt8 weights, "
                  "QUInt8 activations, calib.npz (256 images, batches of 64); haqc: `Quantizer(prepared, calib, "
                  "QuantizeOptions()).export(uniform w8a8)` (MSE clips, int32 bias). Both evaluated by haqc's "
                  "`Evaluator` on val.npz; latency = inference over the 1,000 validation images (batches of 256, "
                  "sessions created once with haqc's session options, warm-up run discarded), "
                  f"interleaved haqc, ORT, fp32 × {peer['rounds']} rounds.", "",
                  "| model | top-1 % | median latency (1,000 images) |", "|---|---|---|"]
        for meth in ("MinMax", "Entropy", "Percentile"):
            r = peer.get(f"ort_{meth}", {})
            lines.append(f"| ORT quantize_static {meth} | {100 * r['top1']:.2f} | {'(timed, best)' if meth == peer['ort_best_method'] else ''} |"
                         if "top1" in r else f"| ORT quantize_static {meth} | error: {r.get('error', '')[:100]} | |")
        ms = peer["median_s"]
        lines += [f"| **ORT best ({peer['ort_best_method']})** | {100 * peer['ort_top1']:.2f} | {1000 * ms['ort']:.1f} ms |",
                  f"| **haqc w8a8** | {100 * peer['haqc_top1']:.2f} | {1000 * ms['haqc']:.1f} ms |",
                  f"| fp32 (reference) | {100 * peer['fp32_top1']:.2f} | {1000 * ms['fp32']:.1f} ms |", "",
                  f"Ratio of medians haqc / ORT: **{peer['ratio_haqc_over_ort']:.3f}** (per-round ratio min/median/max "
                  f"{peer['ratio_per_round']['min']:.3f} / {peer['ratio_per_round']['median']:.3f} / "
                  f"{peer['ratio_per_round']['max']:.3f}); load {peer['load_before']} → {peer['load_after']}.", "",
                  f"Op counts — haqc: `{peer['op_counts']['haqc']}`; ORT: `{peer['op_counts']['ort']}`.", ""]
        ok = peer["ratio_haqc_over_ort"] <= 1.05 and peer["haqc_top1"] >= peer["ort_top1"]
        checks.append(("haqc w8a8 ORT latency <= 1.05x quantize_static at >= top-1", "peer", ok,
                       f"ratio {peer['ratio_haqc_over_ort']:.3f}, top-1 {100 * peer['haqc_top1']:.2f} vs {100 * peer['ort_top1']:.2f}"))
    else:
        lines.append("_not measured in this run._\n")
    speed = json.loads((RESULTS / "speed.json").read_text()) if (RESULTS / "speed.json").exists() else None
    lines += ["## 3. Speed of the search", ""]
    if speed:
        s = speed["search"]
        lines += [f"Floor: one plain ORT evaluation of the fp32 model on val.npz (session creation + 1,000 images), "
                  f"`Evaluator(val).evaluate(model)`: median of {len(speed['floor_s']['all'])} = "
                  f"**{speed['floor_s']['median']:.3f} s** (again after the search: {speed['floor_after_s']['median']:.3f} s).", "",
                  f"Episode: ddpg on edge latency 0.5x, {s['episodes']} episodes, no fine-tuning: search "
                  f"{s['seconds']:.1f} s = **{s['per_episode_s']:.3f} s/episode** ({s['evaluations']} real evaluations, "
                  f"{s['per_evaluation_s']:.3f} s/evaluation). Episode / floor = **{speed['episode_over_floor']:.2f}x**. "
                  f"Load {speed['load_before']} → {speed['load_after']}.", ""]
        p = speed["profile"]
        lines += [f"cProfile of `compress()` with 10 ddpg episodes (no fine-tune; {p['evaluations']} evaluations; "
                  f"wall {p['wall_s']:.1f} s under the profiler, search {p['search_s']:.1f} s). Cumulative seconds "
                  "(nested: export and eval are inside the evaluate callback, which is inside search()):", "",
                  "| entry | calls | cumulative s | per call ms |", "|---|---|---|---|"]
        for label, e in p["entries"].items():
            if e["calls"]:
                lines.append(f"| {label} | {e['calls']} | {e['cumulative_s']:.2f} | {1000 * e['cumulative_s'] / e['calls']:.1f} |")
        lines += ["", "Full top-25 listing: `benchmarks/results/profile.txt`.", ""]
        i4 = speed["issue4"]
        lines += [f"Issue-4 figure: a new policy = `Quantizer.export` (calibration cached) + `Evaluator.evaluate` of the "
                  f"result, median of {i4['repeats']}, vs a plain fp32 evaluation measured interleaved with them "
                  f"(median {i4['floor_interleaved_s']:.3f} s). `search` rows: `export(policy, packed=False)`, what "
                  "the search evaluates (INT8 weight containers, ORT integer kernels); `packed` rows: the final "
                  "output (INT4/INT2 weights, which ORT runs as float Convs):", "",
                  "| policy | export ms | ORT eval s | total s | total / fp32 eval | top-1 % (no FT) |", "|---|---|---|---|---|---|"]
        for name, r in i4["policies"].items():
            lines.append(f"| {name} | {1000 * r['export_s']:.1f} | {r['eval_s']:.3f} | {r['total_s']:.3f} | "
                         f"**{r['ratio_to_floor']:.2f}x** | {100 * r['top1']:.2f} |")
        lines.append("")
        checks.append(("episode cost <= 1.5x floor", "speed", speed["episode_over_floor"] <= 1.5,
                       f"{speed['episode_over_floor']:.2f}x"))
    else:
        lines.append("_not measured in this run._\n")
    scale = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").exists() else None
    lines += ["## 4. Scale (onnx's light models, one subprocess each)", ""]
    if scale:
        lines += ["Each model runs `benchmarks/scale_one.py` in its own process: `prepare` (inspect), cost tables for "
                  "edge/cloud/bitfusion, `Quantizer` calibration on 4 random [1,3,224,224] inputs and one uniform "
                  "w8a8 `export`. Peak RSS = `ru_maxrss` of that process (includes ~the import baseline shown). "
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
    else:
        lines.append("_not measured in this run._\n")
    lines += ["## Targets", "", "| target | where | met | figure |", "|---|---|---|---|"]
    for name, where, ok, fig in checks:
        lines.append(f"| {name} | {where} | {'yes' if ok else '**no**'} | {fig} |")
    lines.append("")
    notes = RESULTS / "notes.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


# --------------------------------------------------------------------------- main

PARTS = ("quality", "peer", "speed", "scale")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run (fewer cells/episodes/rounds)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="quality: start no new cell after this many minutes (cells run in priority order)")
    ap.add_argument("--episodes", type=int, default=EPISODES, help="ddpg/random episodes per quality cell")
    ap.add_argument("--fresh", action="store_true", help="quality: start results/quality.jsonl afresh (default: resume it)")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from benchmarks/results/")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(exist_ok=True)
    if not args.render:
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        bad = [p for p in parts if p not in PARTS]
        if bad:
            ap.error(f"unknown part(s) {bad}; choose from {PARTS}")
        meta_path = RESULTS / "run_meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"commands": []}
        meta.update(date=datetime.datetime.now().isoformat(timespec="minutes"), versions=_versions(), machine=_machine())
        cmd = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        if cmd.strip() not in meta["commands"]:
            meta["commands"].append(cmd.strip())
        meta_path.write_text(json.dumps(meta, indent=2))
        for part in parts:
            log(f"--- {part}")
            {"quality": run_quality, "peer": run_peer, "speed": run_speed, "scale": run_scale}[part](args)
    render(args)


if __name__ == "__main__":
    main()
