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
from haqc.errors import InputError

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


def _external_data_outputs(monkeypatch, tmp_path) -> tuple[onnx.ModelProto, Path]:
    """The example, and an output path whose writes take the >2 GB path (threshold lowered)."""
    import haqc.io
    from conftest import EXAMPLE

    monkeypatch.setattr(haqc.io, "_EXTERNAL_DATA_ABOVE", 1000)
    return onnx.load(EXAMPLE), tmp_path / "big.onnx"


def test_models_over_the_protobuf_limit_are_written_with_external_data(tmp_path, monkeypatch):
    """The >2 GB path, exercised on a small model by lowering the threshold: the weights go to
    NAME.data beside the model, written through the same atomic rename, and load back intact,
    also over an older pair."""
    from onnx import numpy_helper

    import haqc.io

    model, out = _external_data_outputs(monkeypatch, tmp_path)
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    older = onnx.ModelProto()
    older.CopyFrom(model)
    older.graph.initializer[0].raw_data = bytes(len(older.graph.initializer[0].raw_data))
    haqc.io.save_model(older, out)
    haqc.io.save_model(model, out)
    assert (tmp_path / "big.onnx.data").exists()
    assert out.stat().st_size < 100_000 < (tmp_path / "big.onnx.data").stat().st_size
    loaded = onnx.load(str(out))
    onnx.checker.check_model(loaded, full_check=True)
    for tensor in loaded.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(tensor), original[tensor.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    for tensor in model.graph.initializer:  # the caller's model keeps its weights
        assert np.array_equal(numpy_helper.to_array(tensor), original[tensor.name])


@pytest.mark.parametrize("fail_at", ["data write", "fsync"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_external_data_write_leaves_the_old_pair_or_nothing(tmp_path, monkeypatch, fail_at, existing):
    """A failure while the model and NAME.data are written (disk full midway through the data, or
    at the fsync before the renames) leaves no new model, no new data file, no temporary, and an
    older pair byte for byte."""
    import onnx.external_data_helper

    import haqc.io

    model, out = _external_data_outputs(monkeypatch, tmp_path)
    data = tmp_path / "big.onnx.data"
    if existing:
        haqc.io.save_model(model, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if fail_at == "data write":
        written = []
        save_external_data = onnx.external_data_helper.save_external_data

        def fail_midway(tensor, base_path):
            if written:
                raise OSError(28, "No space left on device")
            written.append(tensor.name)
            save_external_data(tensor, base_path)

        monkeypatch.setattr(onnx.external_data_helper, "save_external_data", fail_midway)
    else:
        def fail(path):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(haqc.io, "_fsync", fail)
    with pytest.raises(InputError, match=r"cannot write .*big.onnx \(.*\); free space or choose another output path"):
        haqc.io.save_model(model, out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert out.exists() == data.exists() == existing


def test_a_failed_write_is_one_input_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    """Disk full at the fsync of a plain (small) output: one line naming the output, the old file
    intact, no temporary left."""
    import haqc.io

    out = tmp_path / "report.json"
    out.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(haqc.io.os, "fsync", full)
    with pytest.raises(InputError, match=r"cannot write .*report.json \(No space left on device\)"):
        haqc.io.atomic_write_text(out, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and out.read_text() == "old"
