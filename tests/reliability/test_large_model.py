"""Issue 7, large models: vgg19 (about 575 MB of fp32 weights once folded) through ``haqc inspect``
and a uniform ``haqc quantize --bits w8a8``, each in a fresh subprocess whose peak RSS must stay
under 4x the folded weight bytes.

Each command runs under a small Python wrapper whose only child is the command, so
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is that command's peak and nothing else's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import light_path

HAQC = Path(sys.executable).parent / "haqc"
BOUND = 4.0  # peak RSS / folded fp32 weight bytes

_WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stderr[-3000:])
print(done.stdout)
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", done.returncode)
"""


def _measure(*args) -> tuple[int, str]:
    """(peak RSS in bytes, stdout) of ``haqc ARGS`` run alone in a subprocess."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, str(HAQC), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    tail = done.stdout.strip().splitlines()[-1].split()
    assert tail[0] == "MAXRSS_KB" and tail[3] == "0", done.stdout[-2000:] + done.stderr[-2000:]
    return int(tail[1]) * 1024, done.stdout


@pytest.mark.slow
def test_vgg19_inspect_and_w8a8_quantize_peak_memory(tmp_path):
    model = light_path("vgg19")
    peak_inspect, out = _measure("inspect", model, "--json")
    summary = json.loads(out[: out.rindex("MAXRSS_KB")])
    assert summary["totals"]["layers"] == 19
    weight_bytes = 4 * summary["totals"]["params"]  # fp32 weights of the 19 layers, folded
    calib = tmp_path / "calib.npz"
    np.savez(calib, data_0=np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    output = tmp_path / "vgg19.w8a8.onnx"
    peak_quantize, _ = _measure("quantize", model, "--bits", "w8a8", "--calib-data", calib, "-o", output)
    print(f"vgg19: folded weights {weight_bytes / 1e6:.0f} MB; peak RSS inspect {peak_inspect / 1e6:.0f} MB "
          f"({peak_inspect / weight_bytes:.2f}x), quantize w8a8 {peak_quantize / 1e6:.0f} MB "
          f"({peak_quantize / weight_bytes:.2f}x)")
    quantized = onnx.load(str(output), load_external_data=False)
    assert sum(n.op_type == "DequantizeLinear" for n in quantized.graph.node) >= 19
    assert peak_inspect <= BOUND * weight_bytes
    assert peak_quantize <= BOUND * weight_bytes


def test_models_over_the_protobuf_limit_are_written_with_external_data(tmp_path, monkeypatch):
    """The >2 GB path, exercised on a small model by lowering the threshold: the weights go to
    NAME.data beside the model, written through the same atomic rename, and load back intact."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import haqc.io
    from conftest import EXAMPLE

    model = onnx.load(EXAMPLE)
    monkeypatch.setattr(haqc.io, "_EXTERNAL_DATA_ABOVE", 1000)
    out = tmp_path / "big.onnx"
    haqc.io.save_model(model, out)
    assert (tmp_path / "big.onnx.data").exists()
    assert out.stat().st_size < 100_000 < (tmp_path / "big.onnx.data").stat().st_size
    loaded = onnx.load(str(out))
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(EXAMPLE).graph.initializer}
    for tensor in loaded.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(tensor), original[tensor.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    for tensor in model.graph.initializer:  # the caller's model keeps its weights
        assert np.array_equal(numpy_helper.to_array(tensor), original[tensor.name])
