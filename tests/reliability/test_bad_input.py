"""Issue 7: bad input through the CLI is one ``error:`` line with the documented exit code,
no traceback, the inputs untouched and no partial output (no -o / --report file, no temp file).

Cases already covered elsewhere (tests/test_data.py at the API level, tests/test_cli_eval.py
on a toy model, tests/test_cli_compress.py::test_bad_options_exit_2 / test_output_rules)
are repeated here only where the CLI path of another command had no test, and every case
here additionally checks that nothing was written or modified.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import EXAMPLE, EXAMPLE_DIR
from haqc.cli import main

VAL = EXAMPLE_DIR / "val.npz"
CALIB = EXAMPLE_DIR / "calib.npz"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# The bundled files must never change, whatever a test does.
_INPUTS = {p: _digest(p) for p in (EXAMPLE, VAL, CALIB)}


def _x(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)


# name -> (arrays of the bad npz, a fragment of the message)
BAD_NPZ = {
    "missing_input": ({"image": _x()}, "has no array 'input'"),
    "wrong_shape": ({"input": _x()[:, :, :27, :]}, "shape"),
    "int_dtype": ({"input": (_x() * 255).astype(np.int64)}, "int64"),
    "nan": ({"input": np.where(np.arange(8 * 784).reshape(8, 1, 28, 28) == 5, np.nan, _x())}, "NaN or Inf"),
    "inf": ({"input": np.where(np.arange(8 * 784).reshape(8, 1, 28, 28) == 5, np.inf, _x())}, "NaN or Inf"),
    "zero_samples": ({"input": _x()[:0]}, "zero samples"),
    "labels_short": ({"input": _x(), "labels": np.zeros(7, np.int64)}, "labels have shape"),
    "labels_out_of_range": ({"input": _x(), "labels": np.full(8, 10, np.int64)}, "outside [0, 10)"),
}
# labels are only checked in a file used for accuracy (--data), not in a calibration file.
LABEL_CASES = {"labels_short", "labels_out_of_range"}


def _write_npz(tmp_path, case: str):
    arrays, fragment = BAD_NPZ[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    return path, fragment


def _invoke(args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, code: int, fragment: str, out_dir, untouched=()) -> str:
    """One ``error:`` line with ``fragment``, exit ``code``, no traceback, inputs unchanged, ``out_dir`` empty."""
    lines = [l for l in result.output.splitlines() if l.startswith("error: ")]
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    assert fragment in lines[0], lines[0]
    for path, digest in _INPUTS.items():
        assert _digest(path) == digest, f"{path} was modified"
    for path, content in untouched:
        assert path.read_bytes() == content, f"{path} was modified"
    if out_dir is not None and out_dir.exists():
        left = sorted(p.name for p in out_dir.iterdir())
        assert left == [], f"partial output left in {out_dir}: {left}"
    return lines[0]


def _outputs(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return out_dir, out_dir / "m.onnx", out_dir / "r.json"


def _quantize(model, out, *extra):
    return _invoke(["quantize", model, "--bits", "w4a8", "-o", out, *extra])


def _compress(model, out, report, *extra, data=VAL, calib=CALIB):
    return _invoke(["compress", model, "--latency", "0.5x", "--episodes", "1", "--quiet", "--data", data,
                    "--calib-data", calib, "-o", out, "--report", report, *extra])


# ---- bad data files, per command and per option ------------------------------------------------

@pytest.mark.parametrize("case", [c for c in BAD_NPZ if c not in LABEL_CASES])
@pytest.mark.parametrize("option", ["--calib-data", "--data"])
def test_quantize_bad_npz(tmp_path, case, option):
    bad, fragment = _write_npz(tmp_path, case)
    out_dir, out, _ = _outputs(tmp_path)
    extra = ["--calib-data", bad] if option == "--calib-data" else ["--calib-data", CALIB, "--data", bad]
    before = bad.read_bytes()
    line = assert_clean_failure(_quantize(EXAMPLE, out, *extra), 2, fragment, out_dir, [(bad, before)])
    assert option in line


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_quantize_bad_labels(tmp_path, case):
    bad, fragment = _write_npz(tmp_path, case)
    out_dir, out, _ = _outputs(tmp_path)
    assert_clean_failure(_quantize(EXAMPLE, out, "--calib-data", CALIB, "--data", bad), 2, fragment, out_dir)


@pytest.mark.parametrize("case", list(BAD_NPZ))
@pytest.mark.parametrize("option", ["--data", "--calib-data"])
def test_compress_bad_npz(tmp_path, case, option):
    if option == "--calib-data" and case in LABEL_CASES:
        pytest.skip("labels of a calibration file are checked too, but that is the same code path as --data")
    bad, fragment = _write_npz(tmp_path, case)
    out_dir, out, report = _outputs(tmp_path)
    kwargs = {"data": bad} if option == "--data" else {"calib": bad}
    line = assert_clean_failure(_compress(EXAMPLE, out, report, **kwargs), 2, fragment, out_dir)
    assert option in line


@pytest.mark.parametrize("case", ["missing_input", "int_dtype", "nan", "zero_samples", "labels_short",
                                  "labels_out_of_range"])
def test_eval_bad_npz(tmp_path, case):
    bad, fragment = _write_npz(tmp_path, case)
    assert_clean_failure(_invoke(["eval", EXAMPLE, "--data", bad]), 2, fragment, None)


def test_compress_train_data_mismatched_with_data(tmp_path):
    """--train-data of another shape than --data is refused before any search or write."""
    bad, fragment = _write_npz(tmp_path, "wrong_shape")
    out_dir, out, report = _outputs(tmp_path)
    line = assert_clean_failure(_compress(EXAMPLE, out, report, "--train-data", bad), 2, fragment, out_dir)
    assert "--train-data" in line


def test_quantize_calib_and_data_mismatch(tmp_path):
    """--data and --calib-data of different shapes: the one that does not fit the model is named."""
    bad, _ = _write_npz(tmp_path, "wrong_shape")
    out_dir, out, _ = _outputs(tmp_path)
    line = assert_clean_failure(_quantize(EXAMPLE, out, "--calib-data", CALIB, "--data", bad), 2, "shape", out_dir)
    assert "--data" in line and "--calib-data" not in line


# ---- policy, options, outputs --------------------------------------------------------------------

def test_policy_for_another_model(tmp_path):
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps([{"layer": "conv9", "w_bits": 4, "a_bits": 8}]))
    out_dir, out, _ = _outputs(tmp_path)
    result = _invoke(["quantize", EXAMPLE, "--policy", policy, "--calib-data", CALIB, "-o", out])
    assert_clean_failure(result, 2, "does not match this model", out_dir)


def test_compress_episodes_zero_writes_nothing(tmp_path):
    out_dir, out, report = _outputs(tmp_path)
    assert_clean_failure(_compress(EXAMPLE, out, report, "--episodes", "0"), 2, "--episodes", out_dir)


def test_compress_unreachable_budget_writes_nothing(tmp_path):
    out_dir, out, report = _outputs(tmp_path)
    result = _invoke(["compress", EXAMPLE, "--latency", "0.01x", "--episodes", "1", "--quiet", "--data", VAL,
                      "--calib-data", CALIB, "-o", out, "--report", report])
    assert_clean_failure(result, 3, "unreachable", out_dir)


@pytest.mark.parametrize("command", ["quantize", "compress"])
@pytest.mark.parametrize("which", ["output", "report"])
def test_output_is_an_input(tmp_path, command, which):
    out_dir, out, report = _outputs(tmp_path)
    if command == "quantize":
        if which == "report":
            pytest.skip("quantize has no --report")
        result = _quantize(EXAMPLE, EXAMPLE, "--calib-data", CALIB)
        fragment = "is the input model"
    elif which == "output":
        result = _compress(EXAMPLE, EXAMPLE, report)
        fragment = "is the input model"
    else:  # the report would overwrite the validation data
        result = _compress(EXAMPLE, out, VAL)
        fragment = "is the input"
    assert_clean_failure(result, 2, fragment, out_dir)


@pytest.mark.parametrize("command", ["quantize", "compress"])
def test_output_directory_missing(tmp_path, command):
    out = tmp_path / "missing" / "m.onnx"
    result = (_quantize(EXAMPLE, out, "--calib-data", CALIB) if command == "quantize"
              else _compress(EXAMPLE, out, tmp_path / "missing" / "r.json"))
    assert_clean_failure(result, 2, "does not exist", None)
    assert not (tmp_path / "missing").exists()


# Directories in which nobody, root included, can create a file: os.access says yes to root
# there (unless the mount is read-only), only the attempt fails. CI runs as root, where a
# 0o500 directory is still writable.
PSEUDO_FS = ["/proc", "/sys"]


def _pseudo_fs_dir(where: str) -> Path:
    path = Path(where)
    if not path.is_dir():
        pytest.skip(f"no {where} on this system")
    return path


@pytest.mark.parametrize("command", ["quantize", "compress"])
@pytest.mark.parametrize("where", ["chmod 0o500", *PSEUDO_FS])
def test_output_directory_not_writable(tmp_path, command, where):
    if where in PSEUDO_FS:
        out_dir = _pseudo_fs_dir(where)
        out, report = out_dir / f"haqc-test-{os.getpid()}.onnx", out_dir / f"haqc-test-{os.getpid()}.json"
        before = sorted(os.listdir(out_dir))
    else:
        out_dir, out, report = _outputs(tmp_path)
        out_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        if where not in PSEUDO_FS and os.access(out_dir, os.W_OK):
            pytest.skip("running as root: a 0o500 directory is still writable (the /proc and /sys cases run)")
        result = (_quantize(EXAMPLE, out, "--calib-data", CALIB) if command == "quantize"
                  else _compress(EXAMPLE, out, report))
        assert_clean_failure(result, 2, "not writable", None if where in PSEUDO_FS else out_dir)
        if where in PSEUDO_FS:
            assert sorted(os.listdir(out_dir)) == before
    finally:
        if where not in PSEUDO_FS:
            out_dir.chmod(0o700)


@pytest.mark.parametrize("where", PSEUDO_FS)
def test_writes_into_an_unwritable_directory_are_one_input_error(where, monkeypatch):
    """The check at the start of a command passed, yet the directory refuses the file when it is written
    (it became read-only, or os.access misjudged it): still one InputError, nothing written, for plain
    and external-data writes alike."""
    import haqc.io
    from haqc.errors import InputError

    out_dir = _pseudo_fs_dir(where)
    before = sorted(os.listdir(out_dir))
    with pytest.raises(InputError, match="is not writable .*; make it writable or choose another output path"):
        haqc.io.atomic_write_text(out_dir / "haqc-test.json", "{}")
    monkeypatch.setattr(haqc.io, "_EXTERNAL_DATA_ABOVE", 1000)
    with pytest.raises(InputError, match="is not writable"):
        haqc.io.save_model(onnx.load(EXAMPLE), out_dir / "haqc-test.onnx")
    assert sorted(os.listdir(out_dir)) == before


@pytest.mark.parametrize("command", ["quantize", "compress"])
@pytest.mark.parametrize("which", ["output", "report"])
def test_existing_output_without_force(tmp_path, command, which):
    if command == "quantize" and which == "report":
        pytest.skip("quantize has no --report")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, report = out_dir / "m.onnx", out_dir / "r.json"
    existing = out if which == "output" else report
    existing.write_bytes(b"keep")
    result = (_quantize(EXAMPLE, out, "--calib-data", CALIB) if command == "quantize"
              else _compress(EXAMPLE, out, report))
    assert_clean_failure(result, 2, "--force", None, [(existing, b"keep")])
    assert sorted(p.name for p in out_dir.iterdir()) == [existing.name]


@pytest.mark.parametrize("command", ["quantize", "compress", "eval", "inspect"])
def test_truncated_model(tmp_path, command):
    model = tmp_path / "trunc.onnx"
    data = EXAMPLE.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    before = model.read_bytes()
    out_dir, out, report = _outputs(tmp_path)
    result = {
        "quantize": lambda: _quantize(model, out, "--calib-data", CALIB),
        "compress": lambda: _compress(model, out, report),
        "eval": lambda: _invoke(["eval", model, "--data", VAL]),
        "inspect": lambda: _invoke(["inspect", model]),
    }[command]()
    assert_clean_failure(result, 2, "not a valid ONNX model", out_dir, [(model, before)])


@pytest.mark.parametrize("text", ["this is [not toml", "name = 'x'\n[compute]\nmacs_per_cycle = 'many'\n", ""])
def test_broken_target_toml(tmp_path, text):
    target = tmp_path / "t.toml"
    target.write_text(text)
    out_dir, out, report = _outputs(tmp_path)
    result = _compress(EXAMPLE, out, report, "--target", target)
    assert_clean_failure(result, 2, "", out_dir, [(target, text.encode())])


def _other_model() -> onnx.ModelProto:
    """A different model with the example's input and output, so the example's data feeds it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w")
    fc = numpy_helper.from_array((rng.standard_normal((10, 4)) * 0.5).astype(np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1)],
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [w, fc],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_resume_workdir_of_another_model(tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(_other_model(), other)
    workdir = tmp_path / "w"
    first = _invoke(["compress", other, "--latency", "0.9x", "--episodes", "1", "--quiet", "--data", VAL,
                     "--calib-data", CALIB, "--workdir", workdir, "--no-pin-first", "--no-pin-last"])
    assert first.exit_code == 0, first.output
    state = {p.name: p.read_bytes() for p in workdir.iterdir()}
    out_dir, out, report = _outputs(tmp_path)
    result = _compress(EXAMPLE, out, report, "--workdir", workdir, "--resume")
    line = assert_clean_failure(result, 2, "--resume", out_dir)
    assert "another model" in line
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == state, "the workdir was modified"


def test_a_damaged_score_file_in_the_workdir(tmp_path):
    workdir = tmp_path / "w"
    first = _invoke(["compress", EXAMPLE, "--latency", "0.9x", "--strategy", "uniform", "--quiet", "--data", VAL,
                     "--calib-data", CALIB, "--workdir", workdir, "--finetune-epochs", "0"])
    assert first.exit_code == 0, first.output
    (scores,) = workdir.glob("scores-*.json")
    scores.write_text('{"format": 1, "scores": [')
    out_dir, out, report = _outputs(tmp_path)
    result = _compress(EXAMPLE, out, report, "--latency", "0.9x", "--strategy", "uniform", "--workdir", workdir)
    line = assert_clean_failure(result, 2, "is not a score file of this run's setup", out_dir,
                                [(scores, scores.read_bytes())])
    assert str(scores) in line and "delete it or use another workdir" in line
