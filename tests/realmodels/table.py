"""Measure the corpus table of docs/models.md: layers, what stays float, output SNR of haqc's w8a8 and w4a8
and of ONNX Runtime's quantize_static (QDQ, per-channel) on the same inputs, a short compress, seconds.

    python -m tests.realmodels.table [NAME ...] > table.md   # from the repository root

Calibration and evaluation use 16 seeded random samples each (different seeds), at the analysis shapes.
"""
from __future__ import annotations

import collections
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from haqc.cli import main as cli  # noqa: E402
from haqc.evaluation import sqnr_db  # noqa: E402
from haqc.pipeline import prepare  # noqa: E402
from realmodels.corpus import MODELS, obtain  # noqa: E402

SAMPLES = 16


def _run(*args) -> tuple[float, str]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(result.output.strip().splitlines()[-1] if result.output.strip() else repr(result.exception))
    return time.perf_counter() - start, result.output


def _snr(model: Path, original: Path, feeds: dict[str, np.ndarray]) -> float:
    """Mean over float outputs of the SQNR (dB) against the fp32 original, per sample batch of 1."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (original, model)]
    refs, outs = [], []
    for i in range(SAMPLES):
        feed = {k: v[i:i + 1] if v.ndim else v for k, v in feeds.items()}
        refs.append(sessions[0].run(None, feed))
        outs.append(sessions[1].run(None, feed))
    values = [sqnr_db(np.concatenate([np.ravel(o[k]) for o in outs]), np.concatenate([np.ravel(r[k]) for r in refs]))
              for k in range(len(refs[0])) if refs[0][k].dtype.kind == "f"]
    return float(np.mean(values))


def _ort_static(original: Path, out: Path, calib: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{k: v[i:i + 1] if v.ndim else v for k, v in calib.items()} for i in range(SAMPLES)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(original), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def measure(name: str, tmp: Path) -> dict:
    model = MODELS[name]
    path = obtain(name)
    proto = onnx.load(str(path), load_external_data=False)
    calib, val = tmp / f"{name}.calib.npz", tmp / f"{name}.val.npz"
    np.savez(calib, **model.feeds(proto, SAMPLES, seed=1))
    feeds = model.feeds(proto, SAMPLES, seed=2)
    np.savez(val, **feeds)
    shapes = [f"--input-shape={k}={'x'.join(map(str, v))}" for k, v in model.shapes.items()]
    prepared = prepare(path, model.shapes)
    kept = collections.Counter(f.op for f in prepared.extraction.kept_float)
    row = {"model": name, "source": model.source, "layers": len(prepared.layers),
           "float": ", ".join(f"{op} x{n}" for op, n in sorted(kept.items())) or "-"}
    seconds = 0.0
    for bits in ("w8a8", "w4a8"):
        out = tmp / f"{name}.{bits}.onnx"
        took, _ = _run("quantize", path, "--bits", bits, "--calib-data", calib, *shapes, "-o", out, "--force")
        seconds += took
        row[bits] = _snr(out, path, feeds)
    try:
        _ort_static(path, tmp / f"{name}.ort.onnx", {k: np.load(calib)[k] for k in feeds})
        row["ort_w8a8"] = _snr(tmp / f"{name}.ort.onnx", path, feeds)
    except Exception as err:  # noqa: BLE001 -- the table says why ORT's quantizer did not run
        row["ort_w8a8"] = f"fails: {str(err).splitlines()[0][:60]}"
    report = tmp / f"{name}.report.json"
    took, _ = _run("compress", path, "--target", "edge", "--latency", "0.6x", "--episodes", "3", "--data", val,
                   "--calib-data", calib, *shapes, "-o", tmp / f"{name}.c.onnx", "--report", report, "--force", "--quiet")
    seconds += took
    data = json.loads(report.read_text())
    signal = "top-1 agreement" if not data.get("metric") else data["metric"]
    row["compress"] = (f"{'met' if data['result']['meets_budget'] else 'MISSED'}, "
                       f"{data['result']['accuracy']:.3f} (w8a8 {data['w8a8']['accuracy']:.3f})")
    row["seconds"] = seconds
    return row


def _db(value) -> str:
    return value if isinstance(value, str) else ("inf" if math.isinf(value) else f"{value:.1f}")


def main(names: list[str]) -> None:
    print("| model | source | layers | stays float | w8a8 SNR dB (haqc) | w8a8 SNR dB (ORT quantize_static) "
          "| w4a8 SNR dB | compress edge 0.6x, 3 episodes: budget, signal (w8a8) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(MODELS):
            try:
                r = measure(name, Path(tmp))
            except Exception as err:  # noqa: BLE001 -- a row that failed says so instead of stopping the table
                print(f"| {name} | {MODELS[name].source} | fails: {str(err).splitlines()[0][:80]} |||||||")
                continue
            print(f"| {r['model']} | {r['source']} | {r['layers']} | {r['float']} | {_db(r['w8a8'])} | "
                  f"{_db(r['ort_w8a8'])} | {_db(r['w4a8'])} | {r['compress']} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
