"""Shared helpers for the hardware-target tests: the built-ins, fake plugins, hand-built layers.

These are plain helpers, not conftest.py fixtures: the suite's other folders
import the top-level ``conftest`` module by name, which a second conftest.py
(outside a package) would shadow.

A plugin is proven the way pip would install it, minus pip: a ``*.dist-info``
folder with ``METADATA`` and ``entry_points.txt`` on ``sys.path`` is exactly
what ``importlib.metadata`` discovers, so no network, build backend or change
to the environment is needed.

``mnist_mbv2()`` mirrors the bundled example's architecture (examples/mnist/
train.py: 28x28 input, stem, seven inverted residual blocks, head, fc); the
extract pass gives identical records for it. ``resnet50()`` has ResNet-50's 54
quantizable layers at 224x224, for timing.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from conftest import add_fake_dist  # noqa: F401 -- the plugin tests' helper, shared with tests/search

from haqc.hw_targets import Target, load_target
from haqc.layers import Layer
from haqc.precision import SEARCH_BITS, grid

REPO = Path(__file__).resolve().parents[2]
BUILTINS = ("edge", "cloud", "bitfusion")
TARGETS: dict[str, Target] = {name: load_target(name) for name in BUILTINS}


def conv(index: int, c_in: int, c_out: int, kernel: int, stride: int, hw: int, groups: int = 1) -> Layer:
    """A square 'same'-padded convolution on an hw x hw input."""
    out = math.ceil(hw / stride)
    reduction = c_in // groups * kernel * kernel
    depthwise = groups > 1 and groups == c_in == c_out
    return Layer(
        index=index, name=f"conv{index}", op="Conv", kind="depthwise" if depthwise else "conv",
        c_in=c_in, c_out=c_out, kernel=(kernel, kernel), stride=(stride, stride), groups=groups,
        feature_size=hw * hw, out_feature_size=out * out, rows=out * out, reduction=reduction,
        params=c_out * reduction, macs=out * out * c_out * reduction, input_elems=c_in * hw * hw,
        output_elems=c_out * out * out, weight=f"w{index}", input=f"x{index}",
    )  # fmt: skip


def fc(index: int, c_in: int, c_out: int) -> Layer:
    return Layer(
        index=index, name=f"fc{index}", op="Gemm", kind="fc", c_in=c_in, c_out=c_out, kernel=(1, 1),
        stride=(1, 1), groups=1, feature_size=1, out_feature_size=1, rows=1, reduction=c_in,
        params=c_in * c_out, macs=c_in * c_out, input_elems=c_in, output_elems=c_out,
        weight=f"w{index}", input=f"x{index}",
    )  # fmt: skip


def mnist_mbv2() -> list[Layer]:
    """Stem 3x3 conv, inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1), head 1x1, fc."""
    blocks = ((2, 16, 2), (4, 24, 1), (4, 24, 1), (4, 32, 2), (4, 32, 1), (4, 48, 1), (4, 48, 1))
    layers = [conv(0, 1, 16, 3, 1, 28)]
    c_in, hw = 16, 28
    for expand, c_out, stride in blocks:
        hidden = c_in * expand
        layers.append(conv(len(layers), c_in, hidden, 1, 1, hw))
        layers.append(conv(len(layers), hidden, hidden, 3, stride, hw, groups=hidden))
        hw = math.ceil(hw / stride)
        layers.append(conv(len(layers), hidden, c_out, 1, 1, hw))
        c_in = c_out
    layers.append(conv(len(layers), c_in, 128, 1, 1, hw))
    layers.append(fc(len(layers), 128, 10))
    return layers


def resnet50() -> list[Layer]:
    """ResNet-50 (v1.5, stride in the 3x3): stem, 16 bottlenecks with 4 projection shortcuts, fc = 54 layers."""
    layers = [conv(0, 3, 64, 7, 2, 224)]
    c_in, hw = 64, 56
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            layers.append(conv(len(layers), c_in, width, 1, 1, hw))
            layers.append(conv(len(layers), width, width, 3, s, hw))
            out_hw = math.ceil(hw / s)
            layers.append(conv(len(layers), width, width * 4, 1, 1, out_hw))
            if b == 0:
                layers.append(conv(len(layers), c_in, width * 4, 1, s, hw))
            c_in, hw = width * 4, out_hw
    layers.append(fc(len(layers), 2048, 1000))
    return layers


class Grid(NamedTuple):
    """A target's costs at every (w, a) in 2..8 as (n_layers, 7, 7) arrays indexed [layer, w - 2, a - 2]."""

    latency_s: np.ndarray
    energy_j: np.ndarray | None
    weight_bytes: np.ndarray


def grid_costs(target: Target, layers: list[Layer]) -> Grid:
    """``target.cost_table`` read back as the 2..8 grid its default options are (weights major)."""
    table = target.cost_table(layers)
    assert all(opts[:49] == grid(SEARCH_BITS, SEARCH_BITS) for opts in table.options)
    n = len(layers)

    def cube(quantity: str) -> np.ndarray | None:
        return table.values[quantity][:, :49].reshape(n, 7, 7) if quantity in table.values else None

    return Grid(cube("latency"), cube("energy"), cube("size"))
