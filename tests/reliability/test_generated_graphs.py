"""Issue 7, generated graphs: random small conv / depthwise / fc networks through the whole path.

For each drawn network: canonicalize keeps ONNX Runtime's outputs, extract finds every Conv and
Gemm, and a linear quantization at a random per-layer policy (calibrated on a few random inputs)
exports a model that the full ONNX checker accepts, ONNX Runtime runs, and that matches the torch
fake-quant simulation haqc fine-tunes (haqc.finetune.build_simulation).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close_rel, run_ort
from haqc.finetune import build_simulation
from haqc.passes.calibrate import calibrate
from haqc.passes.canonicalize import canonicalize
from haqc.passes.extract import extract_layers
from haqc.passes.quantize_linear import LinearQuantize
from haqc.precision import Option

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Builder:
    def __init__(self, draw, rng: np.random.Generator) -> None:
        self.draw, self.rng = draw, rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.layers: list[str] = []  # names of the Conv / Gemm nodes
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower() + "_")
        node = helper.make_node(op, inputs, [out], name=out, **attrs)
        self.nodes.append(node)
        if op in ("Conv", "Gemm"):
            self.layers.append(out)
        return out

    def conv(self, x: str, c_in: int, size: int, stride: int | None = None) -> tuple[str, int, int]:
        draw = self.draw
        depthwise = c_in > 1 and draw(st.booleans())
        c_out = c_in if depthwise else draw(st.integers(1, 8))
        groups = c_in if depthwise else 1
        k = draw(st.sampled_from([1, 3]))
        if stride is None:
            stride = draw(st.sampled_from([1, 2])) if size > 2 else 1
        w = self.rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(2.0 / (c_in // groups * k * k))
        inputs = [x, self.const(w, "w")]
        if draw(st.booleans()):
            inputs.append(self.const(self.rng.standard_normal(c_out) * 0.1, "b"))
        y = self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        if draw(st.booleans()):
            y = self.node("BatchNormalization", [
                y,
                self.const(self.rng.uniform(0.5, 1.5, c_out), "gamma"),
                self.const(self.rng.standard_normal(c_out) * 0.1, "beta"),
                self.const(self.rng.standard_normal(c_out) * 0.1, "mean"),
                self.const(self.rng.uniform(0.5, 1.5, c_out), "var"),
            ])
        act = draw(st.sampled_from(["Relu", "Clip", None]))
        if act == "Relu":
            y = self.node("Relu", [y])
        elif act == "Clip":
            y = self.node("Clip", [y, self.const(np.array(0.0), "lo"), self.const(np.array(6.0), "hi")])
        return y, c_out, (size - 1) // stride + 1


@st.composite
def networks(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    b = _Builder(draw, rng)
    c, size = draw(st.integers(1, 8)), draw(st.integers(8, 16))
    c0, size0 = c, size
    x = "x"
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(st.sampled_from(["plain", "residual", "concat"]))
        if shape == "concat":
            stride = draw(st.sampled_from([1, 2])) if size > 2 else 1  # both branches, so they concatenate
            left, c_left, out_size = b.conv(x, c, size, stride)
            right, c_right, _ = b.conv(x, c, size, stride)
            x, c, size = b.node("Concat", [left, right], axis=1), c_left + c_right, out_size
            continue
        y, c_y, s_y = b.conv(x, c, size)
        if shape == "residual" and (c_y, s_y) == (c, size):
            y = b.node("Add", [x, y])
        x, c, size = y, c_y, s_y
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    classes = draw(st.integers(2, 8))
    fc = rng.standard_normal((classes, c)) * np.sqrt(1.0 / c)
    b.node("Gemm", [pooled, b.const(fc, "fc"), b.const(rng.standard_normal(classes) * 0.1, "fcb")], transB=1)
    graph = helper.make_graph(
        b.nodes, "generated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c0, size0, size0])],
        [helper.make_tensor_value_info(b.nodes[-1].output[0], TensorProto.FLOAT, ["N", classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    policy = [
        Option(draw(st.none() | st.integers(2, 8)), draw(st.none() | st.integers(2, 8))) for _ in b.layers
    ]
    return model, b.layers, (c0, size0), policy, draw(st.integers(0, 2**31 - 1))


def _inputs(shape, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape[:1], shape[1], shape[1])).astype(np.float32)


def _ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))


@SETTINGS
@given(networks())
def test_generated_network_whole_path(net):
    model, layer_names, shape, bits, seed = net
    onnx.checker.check_model(model, full_check=True)
    x = _inputs(shape, 4, seed)

    canon = canonicalize(model)
    assert_close_rel(run_ort(canon, {"x": x})[0], run_ort(model, {"x": x})[0], 1e-4)

    layers = extract_layers(canon).layers
    assert sorted(l.name for l in layers) == sorted(layer_names)

    cal = calibrate(canon, layers, [{"x": _inputs(shape, 4, seed + 1 + i)} for i in range(3)])
    policy = {l.name: bits[layer_names.index(l.name)] for l in layers}
    exported = LinearQuantize(layers, cal, policy)(canon)
    onnx.checker.check_model(exported, full_check=True)
    quantized = _ort(exported, x)
    plain = _ort(exported, x, optimize=False)
    with torch.no_grad():
        simulated = build_simulation(canon, layers, LinearQuantize(layers, cal, policy).plan(canon)).module.eval()(x=torch.from_numpy(x)).numpy()
    err, err_plain = _rel_err(quantized, simulated), _rel_err(plain, simulated)
    # Without graph optimizations ORT runs the QDQ graph node by node in float32, as the simulation
    # does: they agree to float rounding. With optimizations (the default) ORT fuses
    # DequantizeLinear -> Conv -> QuantizeLinear into integer kernels (QLinearConv) whose
    # requantization rounds differently at level boundaries; one 8-bit step that moves a
    # downstream activation across a level shows as ~1e-3..1e-2 of the output scale
    # (4e-3 seen on one of the 15 drawn networks, the rest agree to 1e-7).
    assert err_plain <= 1e-5, (policy, err_plain)
    assert err <= 5e-2, (policy, err)
