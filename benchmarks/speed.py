"""Speed of the search: seconds per episode vs one plain fp32 evaluation (the floor), a cProfile
breakdown of a short search, and quantize + evaluate of a new policy vs the floor (issue 4's figure).
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import json
import pstats
import statistics
import time
from pathlib import Path
from types import CodeType
from typing import Any, Callable

from common import CALIB, MODEL, ROOT, VAL, Check, loadavg, log, read_json

TITLE = "## 3. Speed of the search"
PROFILE_EPISODES = 10
ProfileKey = tuple[str, int, str]


def profile_key(entry: Callable[..., Any] | CodeType) -> ProfileKey:
    """cProfile's key for a function: its code's (file, first line, name), or ("~", 0, repr) for a
    C method, as _lsprof names those. Built from the function itself, so a rename fails here."""
    if not isinstance(entry, CodeType):
        function = inspect.unwrap(entry)
        if not hasattr(function, "__code__"):
            return "~", 0, repr(function)
        entry = function.__code__
    return entry.co_filename, entry.co_firstlineno, entry.co_name


def nested_code(function: Callable[..., Any], name: str) -> CodeType:
    """The code of the function ``name`` defined inside ``function``: a closure no import reaches."""
    for const in function.__code__.co_consts:
        if isinstance(const, CodeType) and const.co_name == name:
            return const
    raise LookupError(f"{function.__qualname__} defines no function {name!r}; update benchmarks/speed.py")


def profiled() -> dict[str, ProfileKey]:
    """The rows of the profile table: label -> the function whose cumulative time it reports."""
    import onnx

    import haqc.api
    from haqc.evaluation import Evaluator, make_session, predictions
    from haqc.pipeline import prepare
    from haqc.quantizer import Quantizer, calibrate_model
    from haqc.search.agent import DDPG
    from haqc.search.checkpoint import save_state
    from haqc.search.strategies import search

    entries: dict[str, Callable[..., Any] | CodeType] = {
        "compress (total)": haqc.api.compress,
        "prepare (load+canonicalize+extract)": prepare,
        "calibrate_model (calibration)": calibrate_model,
        "search()": search,
        "evaluate callback (export + ORT eval)": nested_code(haqc.api.compress, "score"),
        "Quantizer.export (graph rewrite)": Quantizer.export,
        "Evaluator.evaluate": Evaluator.evaluate,
        "make_session (ORT session creation)": make_session,
        "predictions (ORT inference)": predictions,
        "SerializeToString": onnx.ModelProto.SerializeToString,
        "DDPG update": DDPG.update,
        "DDPG act": DDPG.act,
        "checkpoint save": save_state,
    }
    return {label: profile_key(entry) for label, entry in entries.items()}


def mixed_policy(layers: list) -> dict:
    """A fixed mixed-precision policy (first and last layer w8a8, as the search pins them)."""
    from haqc.precision import Option

    pattern = [(8, 8), (6, 5), (4, 6), (5, 4), (3, 5), (4, 4)]
    return {l.name: Option(*((8, 8) if i in (0, len(layers) - 1) else pattern[i % len(pattern)]))
            for i, l in enumerate(layers)}


def run(args: argparse.Namespace, results: Path) -> None:
    from haqc.api import CompressConfig, compress
    from haqc.evaluation import Evaluator
    from haqc.pipeline import prepare
    from haqc.policy import uniform_policy
    from haqc.precision import Option
    from haqc.quantizer import QuantizeOptions, Quantizer, load_data

    rows = profiled()  # before any measuring: a renamed function fails now, not after minutes
    res: dict = {"load_before": loadavg()}
    prepared = prepare(MODEL)
    val = load_data(VAL, prepared, "`data`")
    calib = load_data(CALIB, prepared, "`calib_data`")
    evaluator = Evaluator(val)
    n_floor = 5 if args.quick else 10
    floor = [evaluator.evaluate(prepared.model).seconds for _ in range(n_floor + 1)][1:]  # first is warm-up
    res["floor_s"] = {"median": statistics.median(floor), "all": floor}
    # episode cost: a ddpg search without fine-tuning (search seconds / episodes)
    episodes = 10 if args.quick else 30
    config = CompressConfig(target="edge", budgets={"latency": "0.5x"}, data=VAL, calib_data=CALIB,
                            strategy="ddpg", episodes=episodes, seed=0, finetune_epochs=0)
    searched = compress(MODEL, config).report.search
    res["search"] = {"episodes": episodes, "seconds": searched.seconds, "evaluations": searched.evaluations,
                     "per_episode_s": searched.seconds / episodes,
                     "per_evaluation_s": searched.seconds / max(searched.evaluations, 1)}
    res["episode_over_floor"] = res["search"]["per_episode_s"] / res["floor_s"]["median"]
    # a floor measured right after the search too (load drifts)
    floor2 = [evaluator.evaluate(prepared.model).seconds for _ in range(n_floor)]
    res["floor_after_s"] = {"median": statistics.median(floor2), "all": floor2}
    log(f"speed: floor {res['floor_s']['median']:.3f}s / {res['floor_after_s']['median']:.3f}s, "
        f"episode {res['search']['per_episode_s']:.3f}s")
    # profile a short search
    prof = cProfile.Profile()
    config = CompressConfig(target="edge", budgets={"latency": "0.5x"}, data=VAL, calib_data=CALIB,
                            strategy="ddpg", episodes=PROFILE_EPISODES, seed=1, finetune_epochs=0)
    t = time.perf_counter()
    prof.enable()
    searched = compress(MODEL, config).report.search
    prof.disable()
    total = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # key -> (primitive calls, calls, own s, cumulative s, callers)
    table = {label: {"calls": stats[key][1] if key in stats else 0,
                     "cumulative_s": stats[key][3] if key in stats else 0.0} for label, key in rows.items()}
    listing = io.StringIO()
    pstats.Stats(prof, stream=listing).sort_stats("cumulative").print_stats(25)
    res["profile"] = {"episodes": PROFILE_EPISODES, "evaluations": searched.evaluations, "wall_s": total,
                      "search_s": searched.seconds, "entries": table}
    (results / "profile.txt").write_text(listing.getvalue())
    # issue-4: quantize (calibration cached) + evaluate for a new policy, vs a plain fp32 evaluation
    quantizer = Quantizer.calibrated(prepared, calib, QuantizeOptions())
    policies = {
        "w8a8": uniform_policy(prepared.layers, Option(8, 8)),
        "w4a4": uniform_policy(prepared.layers, Option(4, 4)),
        "w3a5": uniform_policy(prepared.layers, Option(3, 5)),
        "mixed": mixed_policy(prepared.layers),
    }
    n = 3 if args.quick else 5
    per = {}
    floor3 = []
    for name, policy in policies.items():
        for packed in (False, True):  # the search's export, then the final output's
            ex, ev, tot, acc = [], [], [], None
            for _ in range(n):
                t = time.perf_counter()
                model = quantizer.export(policy, packed=packed)
                t1 = time.perf_counter()
                acc = evaluator.evaluate(model).accuracy
                t2 = time.perf_counter()
                ex.append(t1 - t)
                ev.append(t2 - t1)
                tot.append(t2 - t)
                floor3.append(evaluator.evaluate(prepared.model).seconds)  # interleaved floor
            per[f"{name} {'packed' if packed else 'search'}"] = {
                "export_s": statistics.median(ex), "eval_s": statistics.median(ev),
                "total_s": statistics.median(tot), "top1": acc}
    fl = statistics.median(floor3)
    for v in per.values():
        v["ratio_to_floor"] = v["total_s"] / fl
    res["issue4"] = {"floor_interleaved_s": fl, "policies": per, "repeats": n}
    res["load_after"] = loadavg()
    (results / "speed.json").write_text(json.dumps(res, indent=2))
    log(f"speed: issue4 {json.dumps({k: round(v['ratio_to_floor'], 2) for k, v in per.items()})}")


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    """This part's section of RESULTS.md, and whether an episode costs at most 1.5 plain evaluations."""
    speed = read_json(results / "speed.json")
    if not speed:
        return None
    s = speed["search"]
    lines = [f"Floor: one plain ORT evaluation of the fp32 model on val.npz (session creation + 1,000 images), "
              f"`Evaluator(val).evaluate(model)`: median of {len(speed['floor_s']['all'])} = "
              f"**{speed['floor_s']['median']:.3f} s** (again after the search: {speed['floor_after_s']['median']:.3f} s).", "",
              f"Episode: ddpg on edge latency 0.5x, {s['episodes']} episodes, no fine-tuning: search "
              f"{s['seconds']:.1f} s = **{s['per_episode_s']:.3f} s/episode** ({s['evaluations']} real evaluations, "
              f"{s['per_evaluation_s']:.3f} s/evaluation). Episode / floor = **{speed['episode_over_floor']:.2f}x**. "
              f"Load {speed['load_before']} → {speed['load_after']}.", ""]
    p = speed["profile"]
    lines += [f"cProfile of `compress()` with {p['episodes']} ddpg episodes (no fine-tune; {p['evaluations']} evaluations; "
              f"wall {p['wall_s']:.1f} s under the profiler, search {p['search_s']:.1f} s). Cumulative seconds "
              "(nested: export and eval are inside the evaluate callback, which is inside search()):", "",
              "| entry | calls | cumulative s | per call ms |", "|---|---|---|---|"]
    for label, e in p["entries"].items():
        if e["calls"]:
            lines.append(f"| {label} | {e['calls']} | {e['cumulative_s']:.2f} | {1000 * e['cumulative_s'] / e['calls']:.1f} |")
    lines += ["", f"Full top-25 listing: `{(results / 'profile.txt').relative_to(ROOT).as_posix()}`.", ""]
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
    return lines, [Check("episode cost <= 1.5x floor", "speed", speed["episode_over_floor"] <= 1.5,
                         f"{speed['episode_over_floor']:.2f}x")]
