"""Measure the corpus table of docs/models.md: every command on every corpus model, each result on its own.

For each model: `haqc inspect` (layers, what stays float and why), `haqc quantize --bits w8a8` and `w4a8`
(output SNR against the fp32 original; for w8a8 also the integer kernels ONNX Runtime runs it with on this
CPU, read from its optimized graph), ONNX Runtime's quantize_static (QDQ, per-channel) on the same
inputs, a 3-episode `haqc compress --target edge --latency 0.6x` (or the model's reachable budget), and the seconds haqc's commands took.
A command that fails fills its cell with its one line (or the traceback's last frame in haqc) and the
row goes on, so a re-run after a fix shows what moved.

    python -m tests.realmodels.table [NAME ...] > table.md   # from the repository root (all models by default)

Calibration and evaluation use 16 seeded random samples each (different seeds), at the analysis shapes.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from haqc.cli import main as cli  # noqa: E402
from haqc.evaluation import integer_kernels, sqnr_db  # noqa: E402
from realmodels.corpus import MODELS, CorpusModel, obtain  # noqa: E402

SAMPLES = 16
COLUMNS = ("model", "source", "opset", "inspect: layers", "stays float (why)",
           "w8a8 SNR dB (haqc)", "w8a8 SNR dB (ORT quantize_static)", "w8a8 kernels (haqc, ORT CPU)",
           "w4a8 SNR dB (haqc)",
           "compress edge (budget), 3 episodes: met, signal (w8a8)", "seconds")


class Failed(Exception):
    """A command that did not exit 0: its one line, or where its traceback ended."""


def _run(*args) -> tuple[float, str]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    took = time.perf_counter() - start
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        frames = [f for f in traceback.extract_tb(result.exception.__traceback__) if "/haqc/" in f.filename
                  or "/passes/" in f.filename or "/hw_targets/" in f.filename] or \
            traceback.extract_tb(result.exception.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
        message = str(result.exception).strip().splitlines()[0][:160] if str(result.exception).strip() else ""
        raise Failed(f"traceback in {where}: {type(result.exception).__name__}: {message}")
    if result.exit_code != 0:
        lines = result.output.strip().splitlines()
        raise Failed(f"exit {result.exit_code}: {lines[-1][:200] if lines else ''}")
    return took, result.output


def _snr(model: CorpusModel, path: Path, original: Path, feeds: dict[str, np.ndarray]) -> float:
    """Mean over float outputs of the SQNR (dB) against the fp32 original, per sample batch of 1."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (original, path)]
    refs, outs = [], []
    for i in range(SAMPLES):
        feed = model.sample(feeds, i)
        refs.append(sessions[0].run(None, feed))
        outs.append(sessions[1].run(None, feed))
    values = [sqnr_db(np.concatenate([np.ravel(o[k]) for o in outs]), np.concatenate([np.ravel(r[k]) for r in refs]))
              for k in range(len(refs[0])) if isinstance(refs[0][k], np.ndarray) and refs[0][k].dtype.kind == "f"]
    return float(np.mean(values))


def _ort_static(original: Path, out: Path, calib: dict[str, np.ndarray], model: CorpusModel | None = None) -> None:
    """ONNX Runtime's static QDQ quantizer, calibrated one sample at a time (``model`` says the batch axes).

    Per-channel QDQ needs opset 13 (DequantizeLinear's axis): older models are converted to 13 first.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = model or CorpusModel("", "", lambda p: None, lambda: "")
    proto = onnx.load(str(original))
    if {o.domain or "ai.onnx": o.version for o in proto.opset_import}.get("ai.onnx", 13) < 13:
        original = out.with_suffix(".opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(proto, 13), str(original))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([model.sample(calib, i) for i in range(SAMPLES)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(original), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _opset(proto: onnx.ModelProto) -> str:
    domains = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    main = str(domains.get("ai.onnx", "-"))
    return main + (" + ai.onnx.ml" if "ai.onnx.ml" in domains and any(
        n.domain == "ai.onnx.ml" for n in proto.graph.node) else "")


def _step(row: dict, key: str, run) -> None:
    """Fill ``row[key]`` with ``run()``'s result, or with why it failed."""
    try:
        row[key] = run()
    except Failed as err:
        row[key] = f"fails: {err}"
    except Exception as err:  # noqa: BLE001 -- a cell that failed says so instead of stopping the table
        row[key] = f"fails: {type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''}"


def measure(name: str, tmp: Path) -> dict:
    model = MODELS[name]
    path = obtain(name)
    proto = onnx.load(str(path), load_external_data=False)
    calib, val = tmp / f"{name}.calib.npz", tmp / f"{name}.val.npz"
    calib_feeds = model.feeds(proto, SAMPLES, seed=1)
    np.savez(calib, **calib_feeds)
    feeds = model.feeds(proto, SAMPLES, seed=2)
    np.savez(val, **feeds)
    shapes = [f"--input-shape={k}={'x'.join(map(str, v))}" for k, v in model.shapes.items()]
    row = {"model": name, "source": model.source, "opset": _opset(proto), "seconds": 0.0}

    def inspect():
        took, out = _run("inspect", path, *shapes, "--json")
        row["seconds"] += took
        summary = json.loads(out)
        row["float"] = "; ".join(f"{op} x{e['count']} ({e['reason']})" for op, e in sorted(summary["kept_float"].items())) \
            or "-"
        return summary["totals"]["layers"]

    _step(row, "inspect", inspect)
    row.setdefault("float", "")
    for bits in ("w8a8", "w4a8"):
        def quantize(bits=bits):
            out = tmp / f"{name}.{bits}.onnx"
            took, _ = _run("quantize", path, "--bits", bits, "--calib-data", calib, *shapes, "-o", out, "--force")
            row["seconds"] += took
            if bits == "w8a8":
                row["kernels"] = ", ".join(f"{op} x{n}" for op, n in integer_kernels(out).items()) or "none"
            return _snr(model, out, path, feeds)

        _step(row, bits, quantize)
    row.setdefault("kernels", "")

    def ort_static():
        _ort_static(path, tmp / f"{name}.ort.onnx", calib_feeds, model)
        return _snr(model, tmp / f"{name}.ort.onnx", path, feeds)

    _step(row, "ort_w8a8", ort_static)

    def compress():
        report = tmp / f"{name}.report.json"
        took, _ = _run("compress", path, "--target", "edge", "--latency", model.latency, "--episodes", "3", "--data", val,
                       "--calib-data", calib, *shapes, "-o", tmp / f"{name}.c.onnx", "--report", report, "--force",
                       "--quiet")
        row["seconds"] += took
        data = json.loads(report.read_text())
        return (f"({model.latency}) {'met' if data['result']['meets_budget'] else 'MISSED'}, {data['signal']} "
                f"{data['result']['accuracy']:.3f} (w8a8 {data['w8a8']['accuracy']:.3f})")

    _step(row, "compress", compress)
    return row


def _cell(value) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.1f}"
    return str(value).replace("|", "/")


def main(names: list[str]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(MODELS):
            try:
                r = measure(name, Path(tmp))
            except Exception as err:  # noqa: BLE001 -- the model itself could not be obtained or fed
                print(f"| {name} | {MODELS[name].source} | fails: {str(err).splitlines()[0][:120]} |" + " |" * 8)
                continue
            cells = [r["model"], r["source"], r["opset"], r["inspect"], r["float"], r["w8a8"],
                     r["ort_w8a8"], r["kernels"], r["w4a8"], r["compress"], f"{r['seconds']:.1f}"]
            texts = [_cell(c).replace(f"{tmp}/", "") for c in cells]
            texts = [t if not t.startswith("fails") or t not in texts[:i] else "fails: the same" for i, t in enumerate(texts)]
            print("| " + " | ".join(texts) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
