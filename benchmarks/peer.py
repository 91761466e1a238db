"""Peer: haqc's uniform w8a8 export vs ONNX Runtime's ``quantize_static`` (best of its calibrations).

Top-1 of each, and ORT latency of both measured interleaved (haqc, ORT,
fp32, haqc, ...) so load drift on the shared machine hits them alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import CALIB, MODEL, VAL, Check, loadavg, log, read_json

TITLE = "## 2. Peer: haqc w8a8 export vs ONNX Runtime `quantize_static`"
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


def run(args: argparse.Namespace, results: Path) -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from haqc.evaluation import Evaluator, make_session, predictions
    from haqc.pipeline import prepare
    from haqc.policy import uniform_policy
    from haqc.precision import Option
    from haqc.quantizer import QuantizeOptions, Quantizer, load_data

    prepared = prepare(MODEL)
    val = load_data(VAL, prepared, "`data`")
    calib = load_data(CALIB, prepared, "`calib_data`")
    evaluator = Evaluator(val)
    input_name = prepared.input_names[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{input_name: f[input_name]} for f, _ in calib.batches(64)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    res: dict = {"rounds": 5 if args.quick else 15}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(MODEL, str(pre))
        ort_models = {}
        for method in ORT_METHODS:
            path = Path(tmp) / f"ort_{method}.onnx"
            t = time.perf_counter()
            try:
                quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                calibrate_method=getattr(CalibrationMethod, method))
                acc = evaluator.evaluate(str(path)).accuracy
                res[f"ort_{method}"] = {"top1": acc, "quantize_s": time.perf_counter() - t}
                ort_models[method] = (acc, onnx.load(str(path)))
            except Exception as err:  # noqa: BLE001 -- recorded, not fatal
                res[f"ort_{method}"] = {"error": f"{type(err).__name__}: {err}"}
            log(f"peer ORT {method}: {res[f'ort_{method}']}")
    best = max(ort_models, key=lambda m: ort_models[m][0])
    res["ort_best_method"] = best
    ort_top1, ort_model = ort_models[best]
    t = time.perf_counter()
    quantizer = Quantizer.calibrated(prepared, calib, QuantizeOptions())
    haqc_model = quantizer.export(uniform_policy(prepared.layers, Option(8, 8)))
    res["haqc_quantize_s"] = time.perf_counter() - t
    res["haqc_top1"] = evaluator.evaluate(haqc_model).accuracy
    res["ort_top1"] = ort_top1
    res["fp32_top1"] = evaluator.evaluate(prepared.model).accuracy
    # latency: sessions created once (haqc's session options for both), inference over the 1,000
    # validation images timed, interleaved A,B,A,B...
    sessions = {"haqc": make_session(haqc_model), "ort": make_session(ort_model), "fp32": make_session(prepared.model)}
    for s in sessions.values():
        predictions(s, val)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sessions}
    res["load_before"] = loadavg()
    for _ in range(res["rounds"]):
        for k, s in sessions.items():
            t = time.perf_counter()
            predictions(s, val)
            times[k].append(time.perf_counter() - t)
    res["load_after"] = loadavg()
    res["times_s"] = times
    res["median_s"] = {k: statistics.median(v) for k, v in times.items()}
    res["ratio_haqc_over_ort"] = res["median_s"]["haqc"] / res["median_s"]["ort"]
    # per-round ratios too, so the spread of the ratio is visible
    rr = [a / b for a, b in zip(times["haqc"], times["ort"])]
    res["ratio_per_round"] = {"min": min(rr), "median": statistics.median(rr), "max": max(rr)}
    res["op_counts"] = {k: dict(Counter(n.op_type for n in m.graph.node))
                        for k, m in (("haqc", haqc_model), ("ort", ort_model))}
    (results / "peer.json").write_text(json.dumps(res, indent=2))
    log(f"peer: haqc {res['haqc_top1']:.4f} ort {res['ort_top1']:.4f} ratio {res['ratio_haqc_over_ort']:.3f}")


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    """This part's section of RESULTS.md, and whether haqc's export is as fast and as accurate as ORT's."""
    peer = read_json(results / "peer.json")
    if not peer:
        return None
    lines = ["`quantize_static` on the `quant_pre_process`ed model: QDQ, per-channel, QInt8 weights, "
              "QUInt8 activations, calib.npz (256 images, batches of 64); haqc: `Quantizer.calibrated(prepared, calib, "
              "QuantizeOptions()).export(uniform w8a8)` (MSE clips, int32 bias). Both evaluated by haqc's "
              "`Evaluator` on val.npz; latency = inference over the 1,000 validation images (batches of 256, "
              "sessions created once with haqc's session options, warm-up run discarded), "
              f"interleaved haqc, ORT, fp32 × {peer['rounds']} rounds.", "",
              "| model | top-1 % | median latency (1,000 images) |", "|---|---|---|"]
    for meth in ORT_METHODS:
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
    return lines, [Check("haqc w8a8 ORT latency <= 1.05x quantize_static at >= top-1", "peer", ok,
                         f"ratio {peer['ratio_haqc_over_ort']:.3f}, top-1 {100 * peer['haqc_top1']:.2f} vs "
                         f"{100 * peer['ort_top1']:.2f}")]
