"""Calibration: one-pass histograms, the four clip rules, the clip cache."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from haqc.passes.calibrate import (BINS, CLIP_METHODS, HIST_VALUES, KL_MAX_BITS, MINMAX_BITS, Calibration, TensorStats,
                                   calibrate, choose_clip)
from haqc.passes.canonicalize import canonicalize
from haqc.passes.extract import extract_layers

RNG = np.random.default_rng(0)


def _stats(*batches: np.ndarray) -> TensorStats:
    s = TensorStats()
    for b in batches:
        s.update(b)
    return s


def _clip(x: np.ndarray, bits: int, method: str) -> float:
    return Calibration({"t": _stats(x)}, method).clip("t", bits)


def _quant_mse(x: np.ndarray, clip: float, bits: int) -> float:
    """Squared error of the unsigned activation quantizer the export uses, at clip ``clip``."""
    step = clip / (2**bits - 1)
    return float(np.mean((np.clip(np.round(np.clip(x, 0, clip) / step), 0, 2**bits - 1) * step - x) ** 2))


def test_range_doubling_keeps_the_histogram_of_one_pass():
    small = RNG.uniform(0, 1, 10_000)
    large = RNG.uniform(-3.5, 3.5, 10_000)
    s = _stats(small, large)
    assert s.minimum == pytest.approx(large.min()) and s.signed
    assert s.absmax == pytest.approx(np.abs(large).max())
    assert s.hist_range >= s.absmax and s.hist.sum() == 20_000
    direct = np.histogram(np.abs(np.concatenate([small, large])), bins=BINS, range=(0, s.hist_range))[0]
    assert np.abs(s.hist - direct).max() <= 2  # the same bins, up to float rounding at bin edges


def test_a_large_tensor_is_histogrammed_from_a_sample_with_its_exact_extremes():
    """Beyond HIST_VALUES values a batch's histogram is a seeded sample of it: the min and max
    stay exact, and every method's clip is the one the whole histogram gives, within a bin or two."""
    x = RNG.standard_normal(1_000_003) * np.repeat(RNG.uniform(0.2, 3.0, 1_000_003 // 7 + 1), 7)[:1_000_003]
    s = _stats(x)
    assert s.minimum == x.min() and s.maximum == x.max() and s.absmax == np.abs(x).max()
    assert 0 < s.hist.sum() <= HIST_VALUES
    full = TensorStats(x.min(), x.max(), s.absmax, s.hist_range,
                       np.histogram(np.abs(x), bins=BINS, range=(0, s.hist_range))[0])
    for method in CLIP_METHODS:
        for bits in (2, 4, 6):
            sampled, exact = Calibration({"t": s}, method).clip("t", bits), Calibration({"t": full}, method).clip("t", bits)
            assert sampled == pytest.approx(exact, rel=0.03), (method, bits)


def test_a_sample_of_a_large_map_reads_every_column():
    """The even stride through this batch is 16 values, so it read only columns 0, 16, 32 and 48 of
    every 64-wide map: zeros here, and every clip came out 0. A sample reads the whole map."""
    x = RNG.standard_normal((64, 16, 64, 64)).astype(np.float32)
    x[..., ::16] = 0.0
    s = _stats(x)
    full = TensorStats(float(x.min()), float(x.max()), s.absmax, s.hist_range,
                       np.histogram(np.abs(x), bins=BINS, range=(0, s.hist_range))[0])
    for bits in (2, 4, 6):
        assert Calibration({"t": s}, "mse").clip("t", bits) == pytest.approx(
            Calibration({"t": full}, "mse").clip("t", bits), rel=0.03)


def test_non_negative_tensor_is_unsigned():
    assert not _stats(np.maximum(RNG.standard_normal(1000), 0)).signed


@pytest.mark.parametrize("bits", [2, 4, MINMAX_BITS - 1])
def test_a_short_negative_side_gets_just_the_steps_it_needs(bits):
    """Hard-swish outputs (minimum -0.375): the range keeps the minimum with a few steps below zero,
    finer than the symmetric range, and its error is lower; a symmetric tensor stays symmetric."""
    x = RNG.standard_normal(100_000) * 2.0
    hswish = x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    calib = Calibration({"h": _stats(hswish), "n": _stats(x)}, "mse")
    zero, clip = calib.zero_point("h", bits), calib.clip("h", bits)
    steps = 2**bits - 1
    assert 0 < zero < 2 ** (bits - 1)
    step = clip / (steps - zero)
    assert zero * step >= -hswish.min()  # the whole negative side is inside the range
    assert calib.zero_point("n", bits) == 2 ** (bits - 1)

    def error(zero: int, clip: float) -> float:
        step = clip / (steps - zero)
        return float(np.mean((np.clip(np.round(hswish / step), -zero, steps - zero) * step - hswish) ** 2))

    half = 2 ** (bits - 1)
    symmetric = choose_clip(calib.stats["h"].hist, calib.stats["h"].hist_range, calib.stats["h"].absmax, half - 1, "mse")
    assert error(zero, clip) < error(half, symmetric)


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_eight_bit_ranges_are_the_calibrated_min_max(method):
    """From MINMAX_BITS up every method gives ONNX Runtime's MinMax range: [min, max] in 255 equal
    steps, the zero point the nearest code to zero; negative-only tensors keep one code above zero."""
    x = RNG.standard_t(3, 100_000) + 1.0
    calib = Calibration({"x": _stats(x), "neg": _stats(-np.abs(x)), "pos": _stats(np.abs(x))}, method)
    step = (x.max() - x.min()) / 255
    assert calib.zero_point("x", 8) == round(-x.min() / step)
    assert calib.clip("x", 8) == pytest.approx(step * (255 - calib.zero_point("x", 8)))
    assert calib.zero_point("neg", 8) == 254 and calib.clip("neg", 8) == pytest.approx(np.abs(x).max() / 255)
    assert calib.zero_point("pos", 8) == 0 and calib.clip("pos", 8) == pytest.approx(np.abs(x).max())


def test_max_and_percentile():
    x = np.abs(RNG.standard_normal(200_000))
    assert _clip(x, 8, "max") == pytest.approx(x.max())
    p = _clip(x, MINMAX_BITS - 1, "percentile")
    assert np.quantile(x, 0.9999) <= p <= np.quantile(x, 0.9999) + 2 * x.max() / BINS


@pytest.mark.parametrize("bits", [2, 4, MINMAX_BITS - 1])
def test_mse_clip_quantizes_better_than_the_max(bits):
    x = np.abs(RNG.standard_t(3, 100_000))  # heavy-tailed, as trained activations are
    c = _clip(x, bits, "mse")
    assert c < x.max()
    assert _quant_mse(x, c, bits) < _quant_mse(x, float(x.max()), bits)


def test_more_bits_clip_no_tighter():
    x = np.abs(RNG.standard_t(3, 100_000))
    for method in CLIP_METHODS:
        clips = [_clip(x, b, method) for b in range(2, 9)]
        assert all(a <= b * 1.02 for a, b in zip(clips, clips[1:])), (method, clips)


def test_kl_searches_below_five_bits_and_keeps_the_max_from_five():
    x = np.abs(RNG.standard_t(3, 100_000))
    assert _clip(x, KL_MAX_BITS - 1, "kl") < 0.9 * x.max()
    for bits in range(KL_MAX_BITS, 9):
        assert _clip(x, bits, "kl") == pytest.approx(x.max())


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
def test_kl_uniform_policies_keep_the_example_accurate(example, bits):
    """The example's stem sees MNIST pixels (mostly exactly 0 or 1), so its activations sit on a
    few spikes; an entropy search over them once clipped a 5.3 range at 0.25 (w6a6 top-1 23%)."""
    from haqc.evaluation import Evaluator
    from haqc.policy import uniform_policy
    from haqc.precision import Option
    from haqc.quantizer import QuantizeOptions, Quantizer

    prepared = example["prepared"]
    quantizer = Quantizer.calibrated(prepared, example["calib"], QuantizeOptions(clip_method="kl"))
    evaluator = Evaluator(example["val"])
    fp32 = evaluator.evaluate(prepared.model).accuracy
    policy = uniform_policy(prepared.layers, Option(bits, bits))
    assert evaluator.evaluate(quantizer.export(policy)).accuracy >= fp32 - 0.01


def test_all_zero_tensor_gets_a_positive_clip():
    for method in CLIP_METHODS:
        assert choose_clip(np.zeros(BINS, np.int64), 1.0, 0.0, 255, method) > 0


def test_clip_cache_per_bits_and_method():
    calib = Calibration({"t": _stats(np.abs(RNG.standard_normal(1000)))}, "mse")
    first = calib.clip("t", 4)
    assert calib.clip("t", 4) == first and calib.clip("t", 4, "max") != first and calib.clip("t", 3) != first
    with pytest.raises(ValueError, match="unknown clip method"):
        Calibration({}, "entropy")


def test_calibrate_records_each_layer_input_as_ort_computes_it():
    """x -> Conv -> Relu -> Conv: the second layer's input is the Relu output (unsigned)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (4, 2, 1, 1)), ("w2", (3, 4, 1, 1)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])], inits)
    model = canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    layers = extract_layers(model).layers
    x = [RNG.standard_normal((8, 2, 5, 5)).astype(np.float32) for _ in range(3)]
    calib = calibrate(model, layers, [{"x": b} for b in x])
    w1 = numpy_helper.to_array(inits[0]).reshape(4, 2)
    relu = np.maximum(np.einsum("oc,nchw->nohw", w1, np.concatenate(x)), 0)
    # A standard normal input is symmetric at 7 bits (half the steps below zero); at 8 its zero point
    # is its min-max one; the Relu output has no steps below zero.
    inputs = np.concatenate(x)
    assert calib.zero_point(layers[0].input, 7) == 64 and calib.zero_point(layers[1].input, 7) == 0
    assert calib.zero_point(layers[0].input, 8) == round(-inputs.min() * 255 / (inputs.max() - inputs.min()))
    assert calib.zero_point(layers[1].input, 8) == 0
    assert calib.stats[layers[0].input].absmax == pytest.approx(np.abs(np.concatenate(x)).max())
    assert calib.stats[layers[1].input].absmax == pytest.approx(relu.max(), rel=1e-5)
    assert calib.stats[layers[1].input].hist.sum() == relu.size
