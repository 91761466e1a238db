"""Issue 7, nothing lost: ``haqc compress`` killed with SIGKILL at a random point, then ``--resume``;
``haqc quantize`` killed while fine-tuning, then run again; a killed writer's temporary removed.

What a kill may leave behind, and what this test accepts:

* the input model and data files: unchanged, byte for byte;
* ``-o OUT`` and ``--report REP``: absent, or complete (the ONNX model loads and passes the
  checker, the JSON parses) -- never partial, because every file goes through a temporary file
  and an ``os.replace`` (haqc.io.atomic_path);
* temporary files: a SIGKILL cannot run the ``finally`` that removes them, so a kill inside a
  write may leave one hidden ``.NAME.PID.XXXXXXXX.tmp`` file (NAME being the final file's name,
  PID the killed writer's) in the output directory or the workdir. That leftover is accepted
  after the kill: it is hidden, it never has a final name, and nothing reads it. Anything else
  is a failure.

``--resume`` with the same arguments then finishes with exit 0, the same policy, history and
model bytes as an uninterrupted run with the same seed, and no temporary file left: writing a
file removes the temporaries of that file whose writer is dead. Both runs pass ``--force``: a kill
between writing OUT and writing REP leaves a complete OUT that a resume must be allowed to
replace with the identical file.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import EXAMPLE, EXAMPLE_DIR
from haqc.finetune import FinetuneConfig

HAQC = Path(sys.executable).parent / "haqc"
TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
# The final names a run may leave: in the output directory, and in the workdir (the checkpoint and
# the score file of haqc.search.store).
OUTPUTS = re.compile(r"^(out\.onnx|out\.html|rep\.json|w)$")
WORKDIR = re.compile(r"^(search_state\.pt|scores-[0-9a-f]{16}\.json)$")


def _args(tmp: Path, val: Path) -> list[str]:
    return [str(HAQC), "compress", str(EXAMPLE), "--latency", "0.5x", "--episodes", "6", "--seed", "5",
            "--workdir", str(tmp / "w"), "-o", str(tmp / "out.onnx"), "--report", str(tmp / "rep.json"),
            "--data", str(val), "--calib-data", str(EXAMPLE_DIR / "calib.npz"),
            "--force", "--quiet"]


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    """The first 250 validation images: what a kill and a resume must preserve does not depend on how
    many images score each policy, and the search's probes and episodes score every one (all 1,000 made
    each run, and so each case, four times as long)."""
    path = tmp_path_factory.mktemp("data") / "val.npz"
    with np.load(EXAMPLE_DIR / "val.npz") as full:
        np.savez(path, **{k: full[k][:250] for k in full.files})
    return path


def _digests(*extra: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (EXAMPLE, EXAMPLE_DIR / "val.npz", EXAMPLE_DIR / "calib.npz", *extra)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, val):
    tmp = tmp_path_factory.mktemp("full")
    start = time.perf_counter()
    done = subprocess.run(_args(tmp, val), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return {"seconds": seconds, "report": json.loads((tmp / "rep.json").read_text()),
            "model": (tmp / "out.onnx").read_bytes()}


def _check_no_partial(tmp: Path, temps_allowed: bool = True) -> None:
    out, rep = tmp / "out.onnx", tmp / "rep.json"
    if out.exists():
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    if rep.exists():
        json.loads(rep.read_text())
    if (tmp / "out.html").exists():  # the plot compress draws beside its output, written whole
        assert (tmp / "out.html").read_text().rstrip().endswith("</svg>")
    for folder, finals in ((tmp, OUTPUTS), (tmp / "w", WORKDIR)):
        if not folder.exists():
            continue
        for p in folder.iterdir():
            if finals.match(p.name):
                continue
            m = TEMP.match(p.name)
            assert temps_allowed and m and finals.match(m.group("name")), f"unexpected file left: {p}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume_loses_nothing(tmp_path, uninterrupted, val, seed):
    before = _digests(val)
    delay = random.Random(seed).uniform(2.0, max(2.5, uninterrupted["seconds"]))
    proc = subprocess.Popen(_args(tmp_path, val), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    print(f"seed {seed}: killed after {delay:.1f} s (uninterrupted run {uninterrupted['seconds']:.1f} s), "
          f"exit {proc.returncode}")
    assert _digests(val) == before, "an input file was modified"
    _check_no_partial(tmp_path)

    start = time.perf_counter()
    resumed = subprocess.run([*_args(tmp_path, val), "--resume"], capture_output=True, text=True, timeout=300)
    print(f"seed {seed}: resume took {time.perf_counter() - start:.1f} s")
    assert resumed.returncode == 0, resumed.stderr
    assert _digests(val) == before
    _check_no_partial(tmp_path, temps_allowed=False)
    report = json.loads((tmp_path / "rep.json").read_text())
    full = uninterrupted["report"]
    assert report["policy"] == full["policy"]
    assert report["history"] == full["history"]
    assert report["result"] == full["result"]
    assert (tmp_path / "out.onnx").read_bytes() == uninterrupted["model"]


def test_a_write_removes_the_temporaries_of_a_killed_writer(tmp_path):
    """A writer SIGKILLed inside atomic_path leaves its temporary; the next write of the same file
    removes it (and an external-data temporary directory), but not a live writer's temporary,
    another file's, or a name that is not haqc's pattern."""
    from haqc.io import atomic_write_text

    out = tmp_path / "out.json"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from haqc.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)"), str(out)])
    assert killed.returncode == -signal.SIGKILL
    left = [TEMP.match(p.name) for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0] and left[0].group("name") == "out.json", left
    dead_pid = left[0].group("pid")
    stale_dir = tmp_path / f".out.json.{dead_pid}.abcd1234.tmp"  # a killed external-data write
    stale_dir.mkdir()
    (stale_dir / "out.json.data").write_bytes(b"partial")
    kept = {
        f".out.json.{os.getpid()}.live0000.tmp",  # a writer that is still running (this process)
        f".out.json.1.{dead_pid}.other000.tmp",  # a temporary of another output, out.json.1
        ".out.json.legacy00.tmp",  # no writer pid: not ours to judge
    }
    for name in kept:
        (tmp_path / name).write_text("x")

    atomic_write_text(out, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out.json", *kept})
    assert out.read_text() == "{}"


# Fine-tuning logs each epoch under the haqc.finetune logger; the CLI alone shows no log, so
# this wrapper runs the same command with INFO logging to tell when fine-tuning has started.
_LOGGING_CLI = ("import logging; logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s'); "
                "from haqc.cli import main; main(prog_name='haqc')")


@pytest.mark.slow
@pytest.mark.parametrize(("command", "older_output"), [("quantize", False), ("quantize", True), ("compress", False)])
def test_sigkill_during_finetuning_leaves_nothing_and_a_rerun_succeeds(tmp_path, val, command, older_output):
    """``haqc quantize`` or ``compress`` SIGKILLed while fine-tuning: the input and an older output
    (``--force``) are unchanged, nothing else is written, and the same command run again writes a
    valid model."""
    # One batch: an epoch is one optimizer step (1-2 s on 2 cores), so the 10 epochs outlast the kill
    # and the rerun's fine-tune is short.
    train, batch = np.load(EXAMPLE_DIR / "train.npz"), FinetuneConfig.batch_size
    np.savez(tmp_path / "train.npz", input=train["input"][:batch], labels=train["labels"][:batch])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    policy = ["--bits", "w4a8"] if command == "quantize" else [
        "--target", "edge", "--latency", "0.6x", "--episodes", "3", "--data", str(val)]
    args = [sys.executable, "-c", _LOGGING_CLI, command, str(EXAMPLE), *policy,
            "--calib-data", str(EXAMPLE_DIR / "calib.npz"), "--train-data", str(tmp_path / "train.npz"),
            "--finetune-epochs", "10", "-o", str(out)]
    if older_output:
        out.write_bytes(EXAMPLE.read_bytes())
        args.append("--force")
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    inputs = _digests(val)
    log = tmp_path / "log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while "haqc.finetune: " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "haqc.finetune: " in log.read_text(), f"fine-tuning never started:\n{log.read_text()}"
        time.sleep(random.Random(f"{command}{older_output}").uniform(0.0, 0.5))  # into a later epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"it finished before the kill:\n{log.read_text()}"
    assert _digests(val) == inputs, "an input file was modified"
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    drawn = {"m.html"} if command == "compress" else set()  # compress draws its plot beside its output
    assert {p.name for p in out_dir.iterdir()} == {"m.onnx"} | drawn
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert _digests(val) == inputs
