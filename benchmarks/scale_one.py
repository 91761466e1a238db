"""One model of the scale benchmark, run in its own process (so ru_maxrss is this model's peak).

Usage: python benchmarks/scale_one.py MODEL.onnx  -> one JSON line on stdout.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def rss_mb() -> float:
    """Peak RSS of this process image in MiB: VmHWM (reset by exec). ru_maxrss is the fallback only:
    on Linux it keeps the high-water mark of the forked parent across exec, so a child of a big
    process would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(path: str) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from haqc.data import Dataset
    from haqc.hw_targets import load_target
    from haqc.pipeline import prepare
    from haqc.policy import uniform_policy
    from haqc.precision import Option
    from haqc.quantizer import QuantizeOptions, Quantizer

    out: dict = {"model": path, "rss_after_imports_mb": rss_mb()}
    t = time.perf_counter()
    prepared = prepare(path)
    out["inspect_s"] = time.perf_counter() - t
    out["rss_after_inspect_mb"] = rss_mb()
    layers = prepared.layers
    out["layers"] = len(layers)
    out["weight_bytes_fp32"] = int(sum(
        numpy_helper.to_array(init).nbytes for init in prepared.model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT))
    out["cost_table_s"] = {}
    for name in ("edge", "cloud", "bitfusion"):
        t = time.perf_counter()
        load_target(name).cost_table(layers)
        out["cost_table_s"][name] = time.perf_counter() - t
    inp = prepared.model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    n = 4
    batch = shape[0] if shape and shape[0] > 1 else 1
    rng = np.random.default_rng(0)
    calib = Dataset({inp.name: rng.standard_normal([max(n, batch)] + shape[1:]).astype(np.float32)}, None,
                    f"{n} random inputs")
    t = time.perf_counter()
    quantizer = Quantizer.calibrated(prepared, calib, QuantizeOptions(calib_batch_size=batch))
    out["calibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    quantizer.export(uniform_policy(layers, Option(8, 8)))
    out["export_w8a8_s"] = time.perf_counter() - t
    out["calib_samples"] = len(calib)
    out["peak_rss_mb"] = rss_mb()
    out["peak_rss_over_weights"] = out["peak_rss_mb"] * 2**20 / max(out["weight_bytes_fp32"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
