"""What a device is, as far as the numbers and speed of an ONNX model go: its device facts.

A measured target reads these from the device it measures (this machine, or a runner on
another one), never from the host: the integer dot-product instructions decide whether an
8-bit kernel is exact at the full int8 range, and every cached timing is keyed by them.
Only the standard library and onnxruntime are imported here, so the device runner can
ship it without haqc's heavy dependencies.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

IntDot = Literal["vnni", "avx2", "dotprod", "none"]
# Model metadata haqc writes when 8-bit weights under 8-bit inputs use the full int8 range: exact on
# 32-bit accumulators only, so a host whose kernels add pairs in int16 must not fuse its QDQ.
INT8_RANGE_KEY = "haqc.int8_weight_range"

# /proc/cpuinfo flags (x86) and Features (ARM) that name an integer dot-product instruction.
_X86_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
_ARM_DOT = ("asimddp", "i8mm")


def cpu_model() -> str:
    """The CPU's model name (part of every cache key: another CPU is other hardware)."""
    for line in _cpuinfo():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where /proc/cpuinfo is absent)."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def int_dot(flags: frozenset[str], machine: str) -> IntDot:
    """Which integer dot product ONNX Runtime's 8-bit CPU kernels use here.

    ``avx2`` (an x86 CPU without VNNI) is the one that saturates: its u8s8 kernels add
    pairs of uint8 x int8 products into int16 (vpmaddubsw), so full-range int8 weights
    under uint8 inputs can overflow. VNNI (vpdpbusd) and ARM's dot product accumulate in
    int32 and are exact over the whole range.
    """
    if any(f in flags for f in _X86_VNNI):
        return "vnni"
    if any(f in flags for f in _ARM_DOT):
        return "dotprod"
    if machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "avx2"  # no VNNI: every x86 integer path multiplies pairs into int16 (conservative)
    return "none"


def device_facts(provider: str = "CPU", threads: int | None = 1) -> dict:
    """This device's facts: the CPU, its integer dot product, ONNX Runtime's version and providers."""
    import onnxruntime as ort

    machine = platform.machine()
    return {
        "cpu": cpu_model(),
        "machine": machine,
        "int_dot": int_dot(cpu_flags(), machine),
        "cores": os.cpu_count() or 1,
        "onnxruntime": ort.__version__,
        "providers": [p.removesuffix("ExecutionProvider") for p in ort.get_available_providers()],
        "provider": provider,
        "threads": threads,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
