"""Fine-tuning on the real-model corpus's non-classifiers (issue 27): does it end at least as good as before?

For every corpus model (tests/realmodels/corpus.py) whose label-free signal is not top-1 agreement
(detectors, OCR, audio scorers, regressors: the fp32 model's first output is not class scores, so
haqc scores fidelity to the fp32 outputs), runs haqc's default compress with training data:

    compress(target="edge", budgets={"latency": model.latency}, data=32 seeded samples (seed 2),
             calib_data=32 (seed 1), train_data=128 (seed 3), episodes=10, input_shapes=model.shapes)

and tabulates the signal before fine-tuning (the searched policy as calibrated), after it, whether the
tuned weights were kept, and the seconds spent after the search (export + fine-tune + evaluations).
``--episodes`` bounds the table's time; the search's length does not change what is measured (the
fine-tuning of whatever policy the search found). Which models qualify is decided from the data: a
screen scores each fp32 model against itself on two samples (haqc.evaluate with the model as its own
reference) and keeps those whose signal is not top-1; the report's own ``signal`` is recorded too.

Each model runs in its own subprocess (a failure or a memory blow-up stays there), one at a time.
Rows go to ``--out`` as JSON lines as soon as each model finishes (a re-run skips the models already
there unless ``--fresh``), and a markdown table is printed at the end.

    python benchmarks/finetune_corpus.py [NAME ...] [--deadline-min 70] [--timeout 600] [--fresh]
    python benchmarks/finetune_corpus.py --table        # only print the table from --out
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, ROOT, loadavg, log, machine, versions

sys.path.insert(0, str(ROOT))  # haqc and tests.realmodels from this checkout, before any installed copy

OUT = HERE / "results" / "finetune_corpus.json"
LOGS = ROOT / "out" / "bench" / "finetune_corpus"  # each model's log and report (ignored by git)
VAL, CALIB, TRAIN = 32, 32, 128  # samples
EPISODES = 10
# Only the order: detectors first, then OCR, then the rest (whether a model runs is the screen's answer).
DETECTORS = ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "ppocrv4_det", "nudenet_320n", "ddddocr_det", "layout_cdla")
OCR = ("ppocrv4_rec", "ddddocr_common", "slanet_table")
# Audio scorers and regressors; after them the models whose first output is a classifier's logits without a
# Softmax (torchvision, transformers, magika ...): scored by fidelity too, so they qualify, but they come last.
OTHERS = ("surfaces_gbr", "espcn", "hello_deepa_npm", "oww_hey_jarvis", "oww_hey_mycroft",
          "oww_melspectrogram", "oww_embedding", "plcmos_v2", "aecmos", "dnsmos_p808", "dnsmos_sig_bak_ovr")


def screen(names: list[str]) -> dict[str, str]:
    """Each model's label-free signal on two fp32 samples (the model scored against itself), or why none."""
    import onnx

    import haqc
    from tests.realmodels.corpus import MODELS, obtain

    signals = {}
    for name in names:
        model = MODELS[name]
        try:
            path = obtain(name)
            proto = onnx.load(str(path), load_external_data=False)
            feeds = model.feeds(proto, 2, seed=2)
            signals[name] = haqc.evaluate(str(path), feeds, reference=str(path)).metric_name
        except Exception as err:  # noqa: BLE001 -- a model the screen cannot score: compress decides
            signals[name] = f"unscreened: {type(err).__name__}: {_line(err)}"
    return signals


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def one(name: str) -> dict:
    """Compress ``name`` with training data (in this process) and return its row."""
    import logging

    import onnx

    import haqc
    from haqc.errors import HaqcError
    from tests.realmodels.corpus import MODELS, obtain

    import haqc.hw_targets
    import haqc.passes

    for package in (haqc, haqc.passes, haqc.hw_targets):  # an editable install maps these to its own checkout
        if ROOT not in Path(package.__file__).resolve().parents:
            raise SystemExit(f"{package.__name__} comes from {package.__file__}, not from {ROOT}: the row "
                             "would measure other code")
    model = MODELS[name]
    path = obtain(name)
    proto = onnx.load(str(path), load_external_data=False)
    val, calib, train = (model.feeds(proto, n, seed=s) for n, s in ((VAL, 2), (CALIB, 1), (TRAIN, 3)))
    LOGS.mkdir(parents=True, exist_ok=True)
    report_path = LOGS / f"{name}.report.json"
    report_path.unlink(missing_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    row: dict = {"model": name, "latency": model.latency,
                 "train_shapes": {k: list(v.shape) for k, v in train.items()}}
    start = time.perf_counter()
    try:
        haqc.compress(str(path), target="edge", budgets={"latency": model.latency}, data=val, calib_data=calib,
                      train_data=train, episodes=EPISODES, input_shapes=dict(model.shapes), report=report_path,
                      force=True)
    except HaqcError as err:  # a budget miss still writes the report; anything else is the row's error
        row["error"] = f"exit {getattr(err, 'exit_code', '?')}: {_line(err)}"
    except Exception as err:  # noqa: BLE001 -- a traceback in haqc: its type and one line
        row["error"] = f"traceback: {type(err).__name__}: {_line(err)}"
    row["wall_s"] = round(time.perf_counter() - start, 1)
    if report_path.exists():
        report = json.loads(report_path.read_text())
        result = report["result"]
        before, after = result["accuracy_before_finetune"], result["accuracy_finetuned"]
        row.update(signal=report["signal"], fp32=report["fp32"]["accuracy"], w8a8=report["w8a8"]["accuracy"],
                   before=before, after=after, result=result["accuracy"],
                   kept=None if after is None else after >= before, meets_budget=result["meets_budget"],
                   after_search_s=round(report["seconds"] - report["search"]["seconds"], 1),
                   search_s=round(report["search"]["seconds"], 1), evaluations=report["search"]["evaluations"],
                   finetune_epochs=report["search"]["finetune_epochs"], layers=len(report["layers"]),
                   bits=sorted({f"w{r['w_bits']}a{r['a_bits']}" for r in report["layers"]}))
    return row


def run_child(name: str, timeout: float) -> dict:
    """``one(name)`` in a fresh process (output to its log); a crash or a timeout becomes the row's error."""
    LOGS.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"{name}.log"
    start = time.perf_counter()
    with open(logfile, "w") as log_out:
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", name],
                                  stdout=subprocess.PIPE, stderr=log_out, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": name, "error": f"timed out after {timeout:.0f} s (left out)",
                    "wall_s": round(time.perf_counter() - start, 1)}
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not rows:
        tail = logfile.read_text().strip().splitlines()
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"model": name, "error": f"{how}; the log's last line: {tail[-1][:200] if tail else ''}",
                "wall_s": round(time.perf_counter() - start, 1)}
    return json.loads(rows[-1])


def order(names: list[str]) -> list[str]:
    """Detectors first, then OCR, audio and regressors, then the rest; within each group smaller files
    first (faster), so a deadline leaves out the slowest."""
    from tests.realmodels.corpus import obtain

    def key(name: str) -> tuple[int, int]:
        group = 0 if name in DETECTORS else 1 if name in OCR else 2 if name in OTHERS or "silero" in name else 3
        return group, obtain(name).stat().st_size

    return sorted(names, key=key)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def table(rows: list[dict]) -> str:
    lines = ["| model | signal | fp32 | w8a8 | before fine-tune | after | after - before | kept | "
             "budget met | s after search | s total |", "|" + "---|" * 11]
    for r in rows:
        if "before" not in r:
            error = r.get("error", "?").split("; haqc's executor supports")[0].replace("|", "/")  # the op list: long
            lines.append(f"| {r['model']} | {r.get('signal', '-')} | fails: {error[:160]} "
                         f"| | | | | | | | {r.get('wall_s', '-')} |")
            continue
        delta = "-" if r["after"] is None else f"{r['after'] - r['before']:+.4f}"
        lines.append(f"| {r['model']} | {r['signal']} | {_f(r['fp32'])} | {_f(r['w8a8'])} | {_f(r['before'])} | "
                     f"{_f(r['after'])} | {delta} | {'yes' if r['kept'] else 'no'} | "
                     f"{'yes' if r['meets_budget'] else 'no'} | {r['after_search_s']} | {r['wall_s']} |")
    measured = [r for r in rows if r.get("after") is not None]
    better = sum(r["after"] > r["before"] for r in measured)
    equal = sum(r["after"] == r["before"] for r in measured)
    worse = sum(r["after"] < r["before"] for r in measured)
    lines.append("")
    lines.append(f"{len(measured)} fine-tuned: {better} better after fine-tuning, {equal} equal, {worse} worse "
                 f"(before the keep-or-not rule); result >= before on {sum(r['result'] >= r['before'] for r in measured)}")
    return "\n".join(lines)


def read_rows(path: Path) -> tuple[dict | None, list[dict]]:
    if not path.exists():
        return None, []
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = next((i for i in items if "meta" in i), None)
    return meta, [i for i in items if "model" in i]


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "haqc", "passes", "hw_targets")
    return (head + (" (with uncommitted changes to haqc's code)" if dirty else "")) if head else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="corpus models to screen (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: compress one model, print its row
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model before it is left out")
    parser.add_argument("--deadline-min", type=float, help="start no new model after this many minutes")
    parser.add_argument("--fresh", action="store_true", help="measure again the models already in --out")
    parser.add_argument("--table", action="store_true", help="only print the table from --out")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git's HEAD of this checkout)")
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(one(args.one)), flush=True)
        return
    if args.table:
        print(table(read_rows(args.out)[1]))
        return
    from tests.realmodels.corpus import MODELS

    start = time.perf_counter()
    _, done = read_rows(args.out) if not args.fresh else (None, [])
    if args.fresh or not args.out.exists():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": args.commit or commit(),
                         "command": " ".join(["python", "benchmarks/finetune_corpus.py", *sys.argv[1:]]),
                         "cpu_affinity": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS"),
                         "samples": {"val": VAL, "calib": CALIB, "train": TRAIN}, "episodes": EPISODES,
                         "versions": versions(), "machine": machine()}}
        args.out.write_text(json.dumps(meta) + "\n")
    log("screening the corpus's signals")
    signals = screen(args.names or list(MODELS))
    classifiers = sorted(n for n, s in signals.items() if s in ("top1", "top1-agreement"))
    log(f"top-1 signal (not run): {', '.join(classifiers)}")
    chosen = order([n for n in signals if n not in classifiers])
    log(f"to run, in order: {', '.join(f'{n} ({signals[n]})' for n in chosen)}")
    skip = {r["model"] for r in done}
    for name in chosen:
        if name in skip:
            continue
        if args.deadline_min is not None and time.perf_counter() - start > 60 * args.deadline_min:
            log(f"deadline: {name} and the models after it not run")
            break
        log(f"{name}: compress with --train-data")
        row = {**run_child(name, args.timeout), "screen": signals[name], "load": loadavg()}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(json.dumps(row))
    rows = read_rows(args.out)[1]
    print(table([r for n in chosen for r in rows if r["model"] == n]))
    log(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
