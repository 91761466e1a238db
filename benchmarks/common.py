"""What every benchmark part shares: where inputs and results live, the log line, the machine's facts."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "mnist"
MODEL = str(EXAMPLE / "mnist_mbv2.onnx")
VAL, CALIB, TRAIN = (str(EXAMPLE / f"{name}.npz") for name in ("val", "calib", "train"))


def results_dir(quick: bool) -> Path:
    """Where a run's raw results go: a --quick smoke run writes apart, so it never overwrites measured ones."""
    return HERE / "results" / "quick" if quick else HERE / "results"


class Check(NamedTuple):
    """One row of RESULTS.md's targets table: an issue's target, where it was measured, and whether it is met."""

    name: str
    where: str
    met: bool
    figure: str


def loadavg() -> str:
    """The 1/5/15-minute load average, stored beside every timing (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", flush=True)


def read_json(path: Path) -> Any | None:
    """A raw result file, or None when its part has not been measured."""
    return json.loads(path.read_text()) if path.exists() else None


def versions() -> dict[str, str]:
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    import haqc

    return {"haqc": getattr(haqc, "__version__", "?"), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "numpy": np.__version__}


def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    return {"nproc": sh("nproc"), "free_g": sh("free -g | sed -n 2p"),
            "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"), "platform": platform.platform()}
