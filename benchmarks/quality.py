"""Quality: top-1 after ``haqc.compress`` + 1 fine-tune epoch, per strategy, target and budget.

One JSON line per cell is appended to quality.jsonl as soon as the cell
finishes, so an interrupted or deadline-limited run keeps what it measured
and a re-run skips the cells already there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import CALIB, MODEL, TRAIN, VAL, Check, loadavg, log, read_json

TITLE = "## 1. Quality (bundled MNIST MobileNetV2 example)"
STRATEGIES = ("ddpg", "random", "uniform", "greedy")
QUICK_EPISODES = 10


def cells(quick: bool, size_budget: str) -> list[dict]:
    """Cells in priority order: a deadline-limited run measures the most important ones first."""
    def cell(target: str, quantity: str, budget: str, strategy: str, seed: int = 0, method: str = "linear") -> dict:
        return {"target": target, "quantity": quantity, "budget": budget, "strategy": strategy,
                "seed": seed, "method": method}

    if quick:
        return [cell("edge", "latency", "0.5x", s) for s in STRATEGIES]
    out = []
    # tier A: one seed of every strategy on every (target, budget) the issue names
    for b in ("0.5x", "0.4x", "0.6x"):
        out += [cell("edge", "latency", b, s) for s in STRATEGIES]
    out += [cell("cloud", "latency", "0.5x", s) for s in STRATEGIES]
    out += [cell("bitfusion", "latency", "0.5x", s) for s in STRATEGIES]
    out += [cell("edge", "size", size_budget, s, method="kmeans") for s in STRATEGIES]
    # tier B: seeds 1 and 2 of the random strategies on edge
    for b in ("0.5x", "0.4x", "0.6x"):
        out += [cell("edge", "latency", b, s, seed) for seed in (1, 2) for s in ("ddpg", "random")]
    # tier C: bitfusion energy, then the rest of the cloud/bitfusion budgets
    out += [cell("bitfusion", "energy", "0.5x", s) for s in STRATEGIES]
    for t in ("cloud", "bitfusion"):
        for b in ("0.4x", "0.6x"):
            out += [cell(t, "latency", b, s) for s in STRATEGIES]
    # tier D: seeds 1 and 2 of the random strategies on cloud and k-means (bitfusion is unreachable)
    for b in ("0.5x", "0.4x", "0.6x"):
        out += [cell("cloud", "latency", b, s, seed) for seed in (1, 2) for s in ("ddpg", "random")]
    out += [cell("edge", "size", size_budget, s, seed, "kmeans") for seed in (1, 2) for s in ("ddpg", "random")]
    return out


def kmeans_size_budget() -> dict:
    """0.1x of the fp32 size expressed relative to all-8-bit (haqc's 'Nx' is relative to the w8 option)."""
    from haqc.hw_targets import load_target
    from haqc.pipeline import prepare
    from haqc.precision import FP32, reference_option
    from haqc.quantities import as_units

    table = load_target("edge").cost_table(prepare(MODEL).layers, "kmeans")
    fp32, w8 = (as_units(table.policy_cost([option] * table.n_layers))["size_mb"]
                for option in (FP32, reference_option("kmeans")))
    rel = 0.1 * fp32 / w8
    return {"fp32_size_mb": fp32, "w8_size_mb": w8, "relative_to_w8": rel, "budget": f"{rel:.4f}x"}


def cell_key(c: dict) -> str:
    return f"{c['target']}/{c['method']}/{c['quantity']}={c['budget']}/{c['strategy']}/seed{c['seed']}"


def run(args: argparse.Namespace, results: Path) -> None:
    from haqc.api import CompressConfig, compress
    from haqc.errors import BudgetUnreachableError

    out = results / "quality.jsonl"
    episodes = QUICK_EPISODES if args.quick else args.episodes
    km = kmeans_size_budget()
    (results / "quality_meta.json").write_text(json.dumps({"kmeans_size": km, "episodes": episodes}, indent=2))
    done = set()
    if args.fresh:  # a new grid: earlier records (still in git history) must not mix with it
        out.unlink(missing_ok=True)
    elif out.exists():
        done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()}
    deadline = time.time() + args.deadline_min * 60 if args.deadline_min else None
    for c in cells(args.quick, km["budget"]):
        key = cell_key(c)
        if key in done:
            continue
        if deadline and time.time() > deadline:
            log(f"quality: deadline reached, skipping {key} and the rest")
            break
        config = CompressConfig(
            target=c["target"], budgets={c["quantity"]: c["budget"]}, data=VAL, calib_data=CALIB,
            train_data=TRAIN, strategy=c["strategy"], episodes=episodes, seed=c["seed"], method=c["method"],
            finetune_epochs=1,
        )
        rec = {"key": key, **c, "episodes": episodes, "load_before": loadavg()}
        t = time.perf_counter()
        try:
            report = compress(MODEL, config).report.to_dict()
            rec.update(status="ok", fp32=report["fp32"], w8a8=report["w8a8"], result=report["result"],
                       search={k: report["search"][k] for k in ("episodes", "best_episode", "seconds", "evaluations")},
                       constraints=report["constraints"])
        except BudgetUnreachableError as err:
            rec.update(status="unreachable", error=str(err))
        rec["wall_s"] = time.perf_counter() - t
        rec["load_after"] = loadavg()
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        log(f"quality {key}: {rec['status']} top1={rec.get('result', {}).get('accuracy')} wall={rec['wall_s']:.1f}s")


def _fmt_acc(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = 100 * statistics.mean(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(xs):.2f} ({100 * min(xs):.2f}–{100 * max(xs):.2f})"


def _records(path: Path) -> list[dict]:
    """The cells of quality.jsonl; the first record of a key wins (parallel or resumed runs append twice)."""
    recs, seen = [], set()
    for line in path.read_text().splitlines():
        if line.strip() and json.loads(line)["key"] not in seen:
            recs.append(json.loads(line))
            seen.add(recs[-1]["key"])
    return recs


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    """This part's section of RESULTS.md: one table per (target, budget), and the issue's targets it meets."""
    from haqc.quantities import report_key

    path = results / "quality.jsonl"
    if not path.exists():
        return None
    lines: list[str] = []
    recs = _records(path)
    meta = read_json(results / "quality_meta.json") or {}
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
        for strategy in STRATEGIES:
            rs = by.get(strategy)
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            if not ok:
                lines.append(f"| {strategy} | {len(rs)} | unreachable: {rs[0].get('error', '')[:120]} | | | | | |")
                continue
            accs = [r["result"]["accuracy"] for r in ok]
            means[strategy] = statistics.mean(accs)
            field = report_key(quantity)
            cost = statistics.mean(r["result"][field] for r in ok)
            lines.append(
                f"| {strategy} | {len(ok)} | {_fmt_acc(accs)} | {_fmt_acc([r['result']['accuracy_before_finetune'] for r in ok])} "
                f"| {100 * (ok[0]['fp32']['accuracy'] - statistics.mean(accs)):.2f} | {cost:.4g} {field.split('_')[1]} "
                f"| {statistics.median([r['search']['evaluations'] for r in ok]):g} "
                f"| {statistics.median([r['search']['seconds'] for r in ok]):.1f} |")
        lines.append("")
        label = f"{target} {quantity} {budget}" + (" k-means" if method == "kmeans" else "")
        for rival, name in (("uniform", "ddpg >= uniform"), ("random", "ddpg >= random (mean)")):
            if "ddpg" in means and rival in means:
                d = 100 * (means["ddpg"] - means[rival])
                checks.append(Check(name, label, d >= 0, f"{d:+.2f} pts"))
        if (target, quantity, budget, method) == ("edge", "latency", "0.5x", "linear") and "ddpg" in means:
            d = 100 * (fp32 - means["ddpg"])
            checks.append(Check("edge 0.5x drop <= 1 pt", label, d <= 1.0, f"drop {d:.2f} pts"))
    return lines, checks
