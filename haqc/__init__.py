"""haqc: hardware-aware mixed-precision quantization (HAQ) for ONNX models.

The Python API (docs/python_api.md)::

    import haqc
    result = haqc.compress("model.onnx", target="edge", budgets={"latency": "0.5x"}, data="val.npz")
    print(result.report.result.accuracy, result.to_json())

``inspect``, ``quantize``, ``evaluate`` and ``compress`` take a model path or
an ``onnx.ModelProto`` and data as an .npz path or a dict of arrays. They are
imported on first use, so ``import haqc.hw_targets`` (a plugin author's
import) stays free of ONNX and torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_CONFIGS = ("CompressConfig", "QuantizeConfig", "RunConfig")  # haqc.settings: light
_API = ("CompressResult", "compress", "evaluate", "inspect", "quantize")  # haqc.api: onnx, torch
__all__ = ["__version__", *_CONFIGS, *_API]


def __getattr__(name: str) -> Any:
    if name in _CONFIGS:
        return getattr(importlib.import_module("haqc.settings"), name)
    if name in _API:
        return getattr(importlib.import_module("haqc.api"), name)
    raise AttributeError(f"module 'haqc' has no attribute {name!r}")
