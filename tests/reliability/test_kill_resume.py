"""Issue 7, nothing lost: ``haqc compress`` killed with SIGKILL at a random point, then ``--resume``.

What a kill may leave behind, and what this test accepts:

* the input model and data files: unchanged, byte for byte;
* ``-o OUT`` and ``--report REP``: absent, or complete (the ONNX model loads and passes the
  checker, the JSON parses) -- never partial, because every file goes through a temporary file
  and an ``os.replace`` (haqc.io.atomic_path);
* temporary files: a SIGKILL cannot run the ``finally`` that removes them, so a kill inside a
  write may leave one hidden ``.NAME.XXXXXXXX.tmp`` file (the mkstemp pattern, NAME being the
  final file's name) in the output directory or the workdir. That leftover is accepted: it is
  hidden, it never has a final name, and nothing reads it. Anything else is a failure.

``--resume`` with the same arguments then finishes with exit 0 and the same policy, history and
model bytes as an uninterrupted run with the same seed. Both runs pass ``--force``: a kill
between writing OUT and writing REP leaves a complete OUT that a resume must be allowed to
replace with the identical file.
"""
from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from conftest import EXAMPLE, EXAMPLE_DIR

HAQC = Path(sys.executable).parent / "haqc"
TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _args(tmp: Path) -> list[str]:
    return [str(HAQC), "compress", str(EXAMPLE), "--latency", "0.5x", "--episodes", "6", "--seed", "5",
            "--workdir", str(tmp / "w"), "-o", str(tmp / "out.onnx"), "--report", str(tmp / "rep.json"),
            "--data", str(EXAMPLE_DIR / "val.npz"), "--calib-data", str(EXAMPLE_DIR / "calib.npz"),
            "--force", "--quiet"]


def _digests() -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (EXAMPLE, EXAMPLE_DIR / "val.npz", EXAMPLE_DIR / "calib.npz")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    start = time.perf_counter()
    done = subprocess.run(_args(tmp), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return {"seconds": seconds, "report": json.loads((tmp / "rep.json").read_text()),
            "model": (tmp / "out.onnx").read_bytes()}


def _check_no_partial(tmp: Path) -> None:
    out, rep = tmp / "out.onnx", tmp / "rep.json"
    if out.exists():
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    if rep.exists():
        json.loads(rep.read_text())
    for folder, finals in ((tmp, {"out.onnx", "rep.json", "w"}), (tmp / "w", {"search_state.pt"})):
        if not folder.exists():
            continue
        for p in folder.iterdir():
            if p.name in finals:
                continue
            m = TEMP.match(p.name)
            assert m and m.group("name") in finals, f"unexpected file left by the kill: {p}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume_loses_nothing(tmp_path, uninterrupted, seed):
    before = _digests()
    delay = random.Random(seed).uniform(2.0, max(2.5, uninterrupted["seconds"]))
    proc = subprocess.Popen(_args(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    print(f"seed {seed}: killed after {delay:.1f} s (uninterrupted run {uninterrupted['seconds']:.1f} s), "
          f"exit {proc.returncode}")
    assert _digests() == before, "an input file was modified"
    _check_no_partial(tmp_path)

    start = time.perf_counter()
    resumed = subprocess.run([*_args(tmp_path), "--resume"], capture_output=True, text=True, timeout=300)
    print(f"seed {seed}: resume took {time.perf_counter() - start:.1f} s")
    assert resumed.returncode == 0, resumed.stderr
    assert _digests() == before
    _check_no_partial(tmp_path)
    report = json.loads((tmp_path / "rep.json").read_text())
    full = uninterrupted["report"]
    assert report["policy"] == full["policy"]
    assert report["history"] == full["history"]
    assert report["result"] == full["result"]
    assert (tmp_path / "out.onnx").read_bytes() == uninterrupted["model"]
