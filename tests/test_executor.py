"""haqc.executor.OnnxModule against ONNX Runtime: single ops, the light model zoo, hooks."""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from haqc.errors import InputError
from haqc.executor import OnnxModule
from haqc.passes.canonicalize import ConvertOpset

ort.set_default_logger_severity(3)

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light"
LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512"]
HEAVY = {"vgg19", "densenet121"}
MNIST = Path(__file__).resolve().parents[1] / "examples/mnist/mnist_mbv2.onnx"
R = np.random.default_rng(0)


class C(NamedTuple):
    """A node input given as an initializer rather than a graph input."""

    value: np.ndarray | onnx.TensorProto


def _rand(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def _ints(*v: int) -> C:
    return C(np.array(v, np.int64))


def _floats(*v: float) -> C:
    return C(np.array(v, np.float32))


def _fill_output_types(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """ORT needs typed graph outputs: take them from shape inference."""
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(inferred.get(o) or helper.make_value_info(o, onnx.TypeProto()) for o in outputs)
    return model


def _model(nodes: list[onnx.NodeProto], ins: dict[str, Any], outputs: list[str],
           opset: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Graph with ``ins`` as graph inputs (arrays) or initializers (``C``)."""
    feeds = {n: v for n, v in ins.items() if not isinstance(v, C)}
    inits = []
    for name, v in ins.items():
        if isinstance(v, C):
            inits.append(onnx.TensorProto())
            inits[-1].CopyFrom(v.value if isinstance(v.value, onnx.TensorProto) else numpy_helper.from_array(v.value))
            inits[-1].name = name
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in feeds.items()]
    graph = helper.make_graph(nodes, "g", graph_inputs, [], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return _fill_output_types(model, outputs), feeds


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """Unoptimized ORT: the plain kernels are the reference, and session setup is 2x faster on vgg19."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _module(model: onnx.ModelProto, **transforms) -> OnnxModule:
    """The executor on the model's canonical opset: what haqc feeds it (the reference runs the original)."""
    return OnnxModule(ConvertOpset()(model), **transforms)


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray], module: OnnxModule | None = None,
              reference: str = "ort") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outputs of the reference (ORT, or onnx's reference evaluator where ORT lacks a feature) and of haqc."""
    if reference == "ort":
        expected = _session(model).run(None, feeds)
    else:  # int4 outputs, which ORT cannot hand to numpy
        expected = [np.asarray(e) for e in ReferenceEvaluator(model).run(None, feeds)]
        expected = [e if e.dtype.kind in "biuf" else e.astype(np.int64) for e in expected]
    module = module or _module(model)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
    got = got if isinstance(got, tuple) else (got,)
    return expected, [g.numpy() for g in got]


def _assert_close(expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    """Within 1e-4 of the reference's largest magnitude (at least 1); exact for non-float outputs."""
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape, (g.shape, e.shape)
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(g, e)
            continue
        assert np.all(np.isfinite(e))
        err = float(np.max(np.abs(g - e), initial=0) / max(1.0, float(np.max(np.abs(e), initial=0))))
        assert err <= 1e-4, err


def _check_parity(model: onnx.ModelProto, feeds: dict[str, np.ndarray], module: OnnxModule | None = None,
                  reference: str = "ort") -> None:
    _assert_close(*_run_both(model, feeds, module, reference))


# --- single-op parity --------------------------------------------------------------------

def case(op: str, ins: list[Any], opset: int = 13, n_out: int = 1, id: str | None = None,
         reference: str = "ort", **attrs: Any) -> Any:
    return pytest.param(op, ins, opset, n_out, reference, attrs, id=id or f"{op}-{opset}")


x4, x8, x3 = _rand(2, 4, 7, 7), _rand(1, 3, 8, 8), _rand(2, 3, 4)
img = _rand(1, 2, 4, 5)
pos = np.abs(_rand(2, 3, 4)) + 0.1
ints = np.round(_rand(3, 4) * 2).astype(np.float32)


def _int_tensor(dtype: int, vals: list[int], dims: list[int] | None = None) -> C:
    return C(helper.make_tensor("", dtype, dims if dims is not None else [len(vals)], vals))


CASES = [
    case("Conv", [x4, C(_rand(6, 4, 3, 3)), C(_rand(6))], pads=[1, 1, 1, 1], strides=[2, 2], id="conv-pads-stride"),
    case("Conv", [x4, C(_rand(6, 2, 3, 3))], group=2, dilations=[2, 2], id="conv-grouped-dilated"),
    case("Conv", [x4, C(_rand(4, 1, 3, 3)), C(_rand(4))], group=4, pads=[1, 1, 1, 1], id="conv-depthwise"),
    case("Conv", [x4, C(_rand(6, 4, 4, 4))], auto_pad="SAME_UPPER", strides=[2, 2], id="conv-same-upper"),
    case("Conv", [x4, C(_rand(6, 4, 4, 4))], auto_pad="SAME_LOWER", strides=[2, 2], id="conv-same-lower"),
    case("Conv", [x4, C(_rand(6, 4, 3, 3))], auto_pad="VALID", id="conv-valid"),
    case("Conv", [x4, C(_rand(6, 4, 3, 3))], pads=[0, 1, 2, 1], id="conv-asym-pads"),
    case("Conv", [_rand(2, 3, 10), C(_rand(5, 3, 3)), C(_rand(5))], pads=[1, 2], strides=[2], id="conv-1d"),
    case("ConvTranspose", [_rand(1, 4, 5, 5), C(_rand(4, 3, 3, 3)), C(_rand(3))], strides=[2, 2],
         pads=[1, 1, 1, 1], output_padding=[1, 1], id="convT-outpad"),
    case("ConvTranspose", [_rand(1, 4, 5, 5), C(_rand(4, 2, 3, 3))], group=2, id="convT-grouped"),
    case("ConvTranspose", [_rand(1, 4, 5, 5), C(_rand(4, 3, 3, 3))], strides=[2, 2], pads=[0, 1, 1, 0],
         id="convT-asym-pads"),
    case("ConvTranspose", [_rand(1, 4, 5, 5), C(_rand(4, 3, 3, 3)), C(_rand(3))], strides=[2, 2],
         output_shape=[10, 10], id="convT-output-shape"),
    case("ConvTranspose", [_rand(1, 2, 6), C(_rand(2, 3, 4))], strides=[3], dilations=[2], id="convT-1d"),
    case("Gemm", [_rand(3, 5), C(_rand(5, 4)), C(_rand(4))], alpha=0.5, beta=2.0, id="gemm-alpha-beta"),
    case("Gemm", [_rand(5, 3), C(_rand(4, 5)), C(_rand(3, 4))], transA=1, transB=1, id="gemm-trans"),
    case("Gemm", [_rand(3, 5), C(_rand(4, 5))], transB=1, id="gemm-no-c"),
    case("MatMul", [_rand(2, 3, 5), C(_rand(5, 4))], id="matmul-3d-2d"),
    case("MatMul", [_rand(2, 1, 3, 5), _rand(4, 5, 2)], id="matmul-broadcast"),
    case("MaxPool", [x8], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], id="maxpool-pads"),
    case("MaxPool", [x8], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, id="maxpool-ceil"),
    case("MaxPool", [x8], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1], id="maxpool-asym"),
    case("MaxPool", [x8], kernel_shape=[2, 2], dilations=[2, 2], id="maxpool-dilated"),
    case("MaxPool", [x8], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", id="maxpool-same"),
    case("MaxPool", [_rand(2, 3, 9)], kernel_shape=[2], strides=[2], id="maxpool-1d"),
    *[case("AveragePool", [x8], kernel_shape=[3, 3], strides=[2, 2], pads=p, ceil_mode=c, count_include_pad=inc,
           id=f"avgpool-pads{''.join(map(str, p))}-ceil{c}-inc{inc}")
      for p in ([1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]) for c in (0, 1) for inc in (0, 1)],
    case("AveragePool", [x8], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", id="avgpool-same"),
    case("AveragePool", [_rand(2, 3, 9)], kernel_shape=[3], pads=[1, 1], id="avgpool-1d"),
    case("GlobalAveragePool", [x4]),
    case("GlobalMaxPool", [x4]),
    case("BatchNormalization", [x4, C(_rand(4)), C(_rand(4)), C(_rand(4)), C(np.abs(_rand(4)) + 0.5)],
         epsilon=1e-3, id="batchnorm"),
    case("BatchNormalization", [x4, C(_rand(4)), C(_rand(4)), C(_rand(4)), C(np.abs(_rand(4)) + 0.5)],
         opset=9, id="batchnorm-9"),
    case("LRN", [_rand(1, 6, 5, 5)], size=5, alpha=1e-2, beta=0.75, bias=2.0, id="lrn-5"),
    case("Relu", [x3]),
    case("LeakyRelu", [x3], alpha=0.2),
    case("PRelu", [x4, C(_rand(4, 1, 1))]),
    case("Elu", [x3], alpha=0.5),
    case("Selu", [x3]),
    case("Clip", [x3], opset=7, min=-0.5, max=0.7),
    case("Clip", [x3, C(np.float32(-0.5)), C(np.float32(0.7))], opset=13),
    case("Clip", [x3, None, C(np.float32(0.7))], opset=13, id="Clip-13-max-only"),
    case("HardSigmoid", [x3], alpha=0.3, beta=0.4),
    case("HardSwish", [x3 * 4], opset=14),
    case("Sigmoid", [x3]), case("Tanh", [x3]), case("Softplus", [x3]), case("Erf", [x3]),
    case("Gelu", [x3], opset=20), case("Gelu", [x3], opset=20, approximate="tanh", id="Gelu-tanh"),
    *[case(op, [x3 * 3], opset=o, **a, id=f"{op}-{o}-{a}")
      for op in ("Softmax", "LogSoftmax") for o in (11, 13) for a in ({}, {"axis": 1}, {"axis": 0})],
    *[case(op, [x3, _rand(3, 1)]) for op in ("Add", "Sub", "Mul", "Div")],
    case("Div", [np.array([7, -7, 9], np.int64), np.array([2, 2, -4], np.int64)], id="Div-int"),
    *[case(op, [x3, _rand(3, 4), _rand(1, 4)]) for op in ("Sum", "Max", "Min", "Mean")],
    case("Neg", [x3]), case("Abs", [x3]), case("Exp", [x3]), case("Log", [pos]),
    case("Reciprocal", [pos]), case("Sqrt", [pos]),
    case("Pow", [pos, x3]), case("Pow", [x3, C(np.float32(3.0))], id="Pow-scalar"),
    case("Reshape", [x3, _ints(0, -1)]),
    case("Reshape", [np.zeros((0, 3), np.float32), _ints(3, 0)], opset=14, allowzero=1, id="Reshape-allowzero"),
    case("Flatten", [x4], axis=2), case("Flatten", [x4], axis=0, id="Flatten-0"),
    case("Flatten", [x4], axis=-1, id="Flatten-neg"),
    case("Transpose", [x3], perm=[2, 0, 1]), case("Transpose", [x3], id="Transpose-default"),
    case("Concat", [x3, _rand(2, 3, 2), _rand(2, 3, 1)], axis=-1),
    case("Split", [_rand(2, 4, 3)], opset=11, n_out=2, axis=1, split=[1, 3]),
    case("Split", [_rand(2, 4, 3), _ints(1, 3)], n_out=2, axis=1),
    case("Split", [_rand(2, 4, 3)], n_out=2, axis=1, id="Split-13-equal"),
    case("Split", [_rand(2, 7)], opset=18, n_out=3, axis=1, num_outputs=3),
    case("Split", [_rand(6, 2)], opset=18, n_out=4, num_outputs=4, id="Split-18-empty-last"),
    case("Slice", [x3], opset=9, starts=[1, 0], ends=[1000, -1], axes=[0, 2]),
    case("Slice", [x3, _ints(-1, 0), _ints(-1000, 3), _ints(1, 2), _ints(-1, 2)], id="Slice-13-steps"),
    case("Slice", [x3, _ints(0, 1), _ints(1, -1)], id="Slice-13-no-axes"),
    case("Slice", [x3, _ints(3), _ints(0), _ints(2), _ints(-2)], id="Slice-13-neg-step"),
    case("Squeeze", [_rand(2, 1, 3, 1)], opset=11, axes=[1]),
    case("Squeeze", [_rand(2, 1, 3, 1), _ints(-1)]),
    case("Squeeze", [_rand(2, 1, 3, 1)], id="Squeeze-all"),
    case("Unsqueeze", [_rand(2, 3)], opset=11, axes=[0, 3]),
    case("Unsqueeze", [_rand(2, 3), _ints(-1, 1)]),
    case("Pad", [img], opset=7, pads=[0, 0, 1, 2, 0, 0, 2, 1], value=1.5),
    *[case("Pad", [img, _ints(0, 0, 1, 2, 0, 0, 2, 1), C(np.float32(0.5))], opset=11, mode=m, id=f"Pad-11-{m}")
      for m in ("constant", "reflect", "edge")],
    case("Pad", [img, _ints(0, -1, 1, 2, 0, 0, -2, 1)], opset=13, id="Pad-negative"),
    case("Pad", [img, _ints(2, 1, 1, 3), None, _ints(2, -1)], opset=18, mode="reflect", id="Pad-18-axes"),
    case("Pad", [img, _ints(0, 0, 1, 2, 0, 0, 2, 1)], opset=19, mode="wrap", id="Pad-19-wrap"),
    case("Resize", [img, None, _floats(1, 1, 2, 3)], mode="nearest", coordinate_transformation_mode="asymmetric",
         nearest_mode="floor", id="resize-nearest-asym-floor"),
    case("Resize", [img, None, None, _ints(1, 2, 3, 7)], id="resize-nearest-default-sizes"),
    case("Resize", [img, None, _floats(1, 1, 1.7, 2.3)], nearest_mode="round_prefer_ceil", id="resize-nearest-ceil"),
    case("Resize", [img, None, _floats(1, 1, 1.5, 0.6)], mode="linear", id="resize-linear-half-pixel"),
    case("Resize", [img, None, None, _ints(1, 2, 7, 9)], mode="linear",
         coordinate_transformation_mode="align_corners", id="resize-linear-align-corners"),
    case("Resize", [img, None, _floats(1, 1, 2, 2)], mode="linear", coordinate_transformation_mode="asymmetric",
         id="resize-linear-asym"),
    case("Resize", [img, None, None, _ints(1, 2, 1, 8)], mode="linear",
         coordinate_transformation_mode="pytorch_half_pixel", id="resize-linear-pytorch-half-pixel"),
    case("Resize", [img, _floats(), _floats(1, 1, 2, 2)], opset=11, id="resize-11-empty-roi"),
    case("Resize", [img, _floats(1, 1, 3, 2)], opset=10, id="resize-10-nearest"),
    case("Resize", [img, _floats(1, 1, 2, 2)], opset=10, mode="linear", id="resize-10-linear"),
    case("Resize", [img, None, _floats(2, 3)], opset=18, axes=[2, 3], id="resize-18-axes"),
    case("Upsample", [img, _floats(1, 1, 2, 3)], opset=9, id="upsample-9-nearest"),
    case("Upsample", [img, _floats(1, 1, 2, 2)], opset=9, mode="linear", id="upsample-9-linear"),
    case("Upsample", [img], opset=7, scales=[1.0, 1.0, 3.0, 2.0], id="upsample-7"),
    case("ReduceMean", [x3], axes=[1], keepdims=0),
    case("ReduceMean", [x3, _ints(0, 2)], opset=18),
    case("ReduceSum", [x3, _ints(-1)]),
    case("ReduceSum", [x3], opset=11, axes=[0, 1], id="ReduceSum-11"),
    case("ReduceSum", [x3], id="ReduceSum-all"),
    case("ReduceSum", [x3], noop_with_empty_axes=1, id="ReduceSum-noop"),
    case("ReduceMax", [x3, _ints(1)], opset=18),
    case("ReduceMin", [x3], opset=11, keepdims=0),
    case("ReduceProd", [x3], axes=[0, 2]),
    case("ReduceL2", [x3], axes=[2], keepdims=0),
    case("Dropout", [x3], opset=9),
    case("Dropout", [x3, C(np.float32(0.3))], n_out=2, id="Dropout-13-mask"),
    case("Identity", [x3]),
    case("Shape", [x3]), case("Shape", [x3], opset=15, start=1, end=-1, id="Shape-15-start-end"),
    case("Gather", [_rand(3, 4, 5), np.array([[0, -1], [2, 1]], np.int64)], axis=1),
    case("Gather", [_rand(3, 4), C(np.int64(2))], id="Gather-scalar"),
    case("Cast", [x3 * 3], to=TP.INT32), case("Cast", [x3], to=TP.FLOAT16, id="Cast-fp16"),
    case("Cast", [ints], to=TP.BOOL, id="Cast-bool"),
    case("Expand", [_rand(3, 1), _ints(2, 3, 4)]),
    case("Expand", [_rand(2, 1, 4), _ints(3, 1)], id="Expand-bidirectional"),
    case("ConstantOfShape", [np.array([2, 3], np.int64)]),
    case("ConstantOfShape", [np.array([2, 3], np.int64)], value=helper.make_tensor("", TP.INT64, [1], [7]),
         id="ConstantOfShape-int"),
    case("LayerNormalization", [x3, C(_rand(4)), C(_rand(4))], opset=17),
    case("LayerNormalization", [x3, C(_rand(3, 4))], opset=17, axis=1, id="LayerNormalization-axis1"),
    case("LayerNormalization", [x3, C(_rand(4))], opset=17, n_out=3, id="LayerNormalization-stats"),
    case("Constant", [], value=numpy_helper.from_array(_rand(2, 3))),
    case("Constant", [], value_floats=[1.0, 2.5], id="Constant-floats"),
    case("Constant", [], value_int=3, id="Constant-int"),
    case("Equal", [np.array([1, 2, 3], np.int64), np.array([1, 0, 3], np.int64)]),
    case("Where", [x3 > 0, x3, _rand(3, 4)]),
    case("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)]),
    case("Range", [np.array(0.5, np.float32), np.array(-2, np.float32), np.array(-0.7, np.float32)], id="Range-f"),
    case("Tile", [_rand(2, 3), _ints(2, 2)]),
    case("ArgMax", [ints], axis=1), case("ArgMax", [ints], axis=0, keepdims=0, select_last_index=1, id="ArgMax-last"),
    case("QuantizeLinear", [x3, C(np.float32(0.02)), C(np.uint8(128))], id="Q-uint8"),
    case("QuantizeLinear", [_rand(4, 3), C(np.full(4, 0.01, np.float32)), C(np.array([0, 1, -3, 5], np.int8))],
         axis=0, id="Q-int8-per-axis"),
    case("QuantizeLinear", [x3, C(np.float32(0.01))], id="Q-default-uint8"),
    *[case("QuantizeLinear", [x3, C(np.float32(0.2)), _int_tensor(t, [z], [])], opset=o, reference="onnx", id=i)
      for t, z, o, i in ((TP.INT4, 1, 21, "Q-int4"), (TP.UINT4, 8, 21, "Q-uint4"), (TP.INT2, -1, 25, "Q-int2"))],
    case("QuantizeLinear", [_rand(4, 4), C(np.abs(_rand(4, 2)) + 0.01), 
                            C(np.arange(-4, 4, dtype=np.int8).reshape(4, 2))],
         opset=21, axis=1, block_size=2, id="Q-blocked"),
    case("DequantizeLinear", [np.array([0, 3, 128, 255], np.uint8), C(np.float32(0.1)), C(np.uint8(128))],
         id="DQ-uint8"),
    case("DequantizeLinear", [np.array([[-128, 0, 127], [5, -5, 1]], np.int8), C(np.array([0.1, 0.2], np.float32)),
                              C(np.array([1, -2], np.int8))], axis=0, id="DQ-int8-per-axis"),
    case("DequantizeLinear", [_int_tensor(TP.INT4, [-8, -1, 0, 7, 3, 2], [2, 3]),
                              C(np.array([0.5, 0.25, 2.0], np.float32)),
                              _int_tensor(TP.INT4, [1, -1, 0], [3])], opset=21, axis=1, id="DQ-int4-per-axis"),
    case("DequantizeLinear", [_int_tensor(TP.UINT4, [0, 15, 8, 3]), C(np.float32(0.5)),
                              _int_tensor(TP.UINT4, [8], [])], opset=21, id="DQ-uint4"),
    case("DequantizeLinear", [_int_tensor(TP.INT2, [-2, -1, 0, 1]), C(np.float32(0.5)),
                              _int_tensor(TP.INT2, [1], [])], opset=25, id="DQ-int2"),
]


@pytest.mark.parametrize("op, ins, opset, n_out, reference, attrs", CASES)
def test_single_op_matches_onnxruntime(op: str, ins: list[Any], opset: int, n_out: int, reference: str,
                                       attrs: dict[str, Any]) -> None:
    names = {f"in{k}": v for k, v in enumerate(ins) if v is not None}
    node_inputs = ["" if v is None else f"in{k}" for k, v in enumerate(ins)]
    outputs = [f"out{k}" for k in range(n_out)]
    model, feeds = _model([helper.make_node(op, node_inputs, outputs, name="n", **attrs)], names, outputs, opset)
    _check_parity(model, feeds, reference=reference)


def test_lrn_even_size_follows_the_spec() -> None:
    """ORT rejects even sizes (and onnx's reference LRN is wrong), so transcribe the spec."""
    x, size, alpha, beta, bias = _rand(2, 6, 3, 3), 4, 0.3, 0.75, 2.0
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    model, _ = _model([node], {"x": x}, ["y"], 13)
    square_sum = np.stack([(x[:, max(0, c - (size - 1) // 2):c + size // 2 + 1] ** 2).sum(1)
                           for c in range(x.shape[1])], axis=1)
    expected = x / (bias + alpha / size * square_sum) ** beta
    np.testing.assert_allclose(_module(model)(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def _shape_model() -> onnx.ModelProto:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, and ConstantOfShape of the input's shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("ConstantOfShape", ["s"], ["fill"], value=helper.make_tensor("", TP.FLOAT, [1], [2.0])),
    ]
    x = helper.make_tensor_value_info("x", TP.FLOAT, ["batch", 3, 4])
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(
        np.array([0], np.int64), "zero1"), numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TP.FLOAT, None),
                                                helper.make_tensor_value_info("s", TP.INT64, None),
                                                helper.make_tensor_value_info("fill", TP.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_shape_arithmetic_follows_the_batch() -> None:
    """The int64 shape path runs in the plan (not folded at build time), so a new batch size works."""
    model = _shape_model()
    module = _module(model)
    for batch in (1, 3):
        _check_parity(model, {"x": _rand(batch, 3, 4)}, module)
    y, s, fill = module(x=torch.zeros(5, 3, 4))
    assert y.shape == (5, 12) and s.tolist() == [5, 3, 4] and fill.shape == (5, 3, 4)


# --- the light model zoo -----------------------------------------------------------------

def _feeds(model: onnx.ModelProto, seed: int = 0, dynamic: int = 1) -> dict[str, np.ndarray]:
    """Seeded float inputs; symbolic dims (the batch) get ``dynamic``."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {v.name: rng.standard_normal([d.dim_value or dynamic for d in v.type.tensor_type.shape.dim],
                                        np.float32)
            for v in model.graph.input if v.name not in inits}


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """float32 uniform, generated in place: the vgg19 weights are 140M values."""
    arr = rng.random(shape, np.float32)
    arr *= np.float32(high - low)
    arr += np.float32(low)
    return arr


def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Weights as random initializers (He-scaled), so parity is not checked on constant fills.

    ConstantOfShape weights become initializers; BatchNorm variances stay positive.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {i.name: i for i in model.graph.initializer}
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer if i.data_type == TP.FLOAT}
    nodes, roles = [], {}
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in consts:
            shapes[node.output[0]] = tuple(numpy_helper.to_array(consts[node.input[0]]))
            continue
        nodes.append(node)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for k, name in enumerate(node.input):
            roles.setdefault(name, (node.op_type, k, attrs))
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(t for n, t in consts.items() if n in roles and n not in shapes)
    for name, shape in shapes.items():
        op, k, attrs = roles.get(name, ("", 0, {}))
        if op in ("Conv", "Gemm") and k == 1:
            fan_in = shape[1] if op == "Gemm" and attrs.get("transB") else (
                shape[0] if op == "Gemm" else int(np.prod(shape[1:])))
            bound = float(np.sqrt(6.0 / fan_in))
            arr = _uniform(rng, shape, -bound, bound)
        elif (op in ("Conv", "Gemm") and k == 2) or (op == "BatchNormalization" and k in (2, 3)):
            arr = _uniform(rng, shape, -0.2, 0.2)
        else:  # BatchNorm scale/variance, stray scales
            arr = _uniform(rng, shape, 0.5, 1.5)
        if name in roles:
            t = graph.initializer.add()
            t.name, t.data_type, t.raw_data = name, TP.FLOAT, arr.tobytes()
            t.dims.extend(shape)
    inputs = [v for v in model.graph.input if v.name not in consts]
    del graph.input[:]
    graph.input.extend(inputs)
    if nodes[-1].op_type == "Softmax":  # also compare the logits: softmax over 1000 classes hides errors
        graph.output.append(helper.make_tensor_value_info(nodes[-1].input[0], TP.FLOAT, None))
    out.ir_version = max(out.ir_version, 4)  # initializers that are not graph inputs need IR 4
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in LIGHT_MODELS])
def test_light_model_matches_onnxruntime(name: str) -> None:
    model = onnx.load(LIGHT_DIR / f"light_{name}.onnx")
    feeds = _feeds(model)
    _check_parity(model, feeds)
    rnd = randomized(model)
    module = _module(rnd)
    assert len(module.params) > 0
    expected, got = _run_both(rnd, feeds, module)
    assert np.std(expected[-1]) > 1e-2, "random weights should give non-trivial logits"
    _assert_close(expected, got)


@pytest.mark.skipif(not MNIST.exists(), reason="examples/mnist/mnist_mbv2.onnx not built yet")
def test_mnist_example_matches_onnxruntime_and_trains() -> None:
    model = onnx.load(MNIST)
    feeds = _feeds(model, dynamic=4)
    module = _module(model)
    _check_parity(model, feeds, module)
    module(*[torch.from_numpy(feeds[n]) for n in module.input_names]).square().mean().backward()
    trained = [p for p in module.params.values() if p.requires_grad]
    assert len(trained) >= 4 and all(p.grad is not None for p in trained)  # every weight and bias


# --- hooks, gradients, write-back, errors ----------------------------------------------------

def _conv_model(bias: bool = False) -> onnx.ModelProto:
    inputs = ["x", "conv/W.0"] + (["to"] if bias else [])
    nodes = [helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    inits = [numpy_helper.from_array(_rand(4, 3, 3, 3), "conv/W.0")]
    if bias:
        inits.append(numpy_helper.from_array(_rand(4), "to"))  # a name that shadows nn.Module.to
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, 4, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


class _Scale(torch.nn.Module):
    """A transform with its own trainable parameter, like a learned clip."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(s))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.s


def test_weight_transform_scales_output_and_gradients_flow() -> None:
    model, x = _conv_model(), torch.from_numpy(_rand(1, 3, 5, 5))
    plain = _module(model)(x)
    doubled = _module(model, weight_transforms={"conv/W.0": lambda w: 2 * w})(x)
    torch.testing.assert_close(doubled, 2 * plain)

    scale = _Scale(2.0)
    module = _module(model, weight_transforms={"conv/W.0": scale})
    assert any(p is scale.s for p in module.parameters())
    module(x).sum().backward()
    (weight,) = module.params.values()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert scale.s.grad is not None


def test_activation_transforms_apply_to_inputs_and_produced_tensors() -> None:
    model, x = _conv_model(), torch.from_numpy(_rand(1, 3, 5, 5))
    plain = _module(model)
    negated = _module(model, activation_transforms={"x": torch.neg})
    torch.testing.assert_close(negated(x), plain(-x))
    clipped = _module(model, activation_transforms={"c": lambda t: t.clamp(max=0.1)})
    torch.testing.assert_close(clipped(x), plain(x).clamp(max=0.1))


def test_activation_transforms_on_constants_reach_their_consumers() -> None:
    """A Constant is folded at build time, yet its transform must run each forward, before its users."""
    nodes = [helper.make_node("Constant", [], ["c"], value_float=2.0),
             helper.make_node("Add", ["c", "c"], ["d"]), helper.make_node("Mul", ["x", "d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [3])])
    model, x = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)]), torch.arange(3.0)
    torch.testing.assert_close(_module(model)(x), 4 * x)
    torch.testing.assert_close(_module(model, activation_transforms={"c": lambda t: 10 * t})(x), 40 * x)


def test_intermediates_are_freed_after_their_last_consumer() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Abs", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [3])])
    refs: dict[str, weakref.ref[torch.Tensor]] = {}

    def remember(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def transform(t: torch.Tensor) -> torch.Tensor:
            refs[name] = weakref.ref(t)
            return t
        return transform

    def check(t: torch.Tensor) -> torch.Tensor:
        assert refs["a"]() is None, "'a' outlived its last consumer"
        assert refs["b"]() is not None, "'b' was freed before its consumer ran"
        return t

    module = _module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)]),
                        activation_transforms={"a": remember("a"), "b": remember("b"), "y": check})
    with torch.no_grad():
        module(torch.randn(3))


def test_fake_quant_passes_gradients_straight_through() -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [6])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = torch.tensor([0.03, 0.26, -1.0, 5.0, 20.0, -20.0], requires_grad=True)
    y = _module(model)(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0.3, -1.0, 5.0, 12.7, -12.8]))
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 0, 0]  # clipped values get no gradient
    _check_parity(model, {"x": x.detach().numpy()})


def test_initializer_arrays_round_trip() -> None:
    model = _conv_model(bias=True)
    module = _module(model)
    assert set(module.initializer_arrays()) == {"conv/W.0", "to"}
    with torch.no_grad():
        for p in module.params.values():
            p.mul_(-3)
    arrays = module.initializer_arrays()
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    _check_parity(model, {"x": _rand(1, 3, 5, 5)}, module)  # the edited module == the rewritten graph


def test_opset8_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = _conv_model()
    model.graph.input.append(helper.make_tensor_value_info("conv/W.0", TP.FLOAT, [4, 3, 3, 3]))
    module = _module(model)
    assert module.input_names == ["x"]
    _check_parity(model, {"x": _rand(1, 3, 5, 5)}, module)


def test_unsupported_ops_are_named_in_one_error() -> None:
    nodes = [helper.make_node("Foo", ["x"], ["a"], name="bar"), helper.make_node("Foo", ["a"], ["b"]),
             helper.make_node("Baz", ["b"], ["y"], name="q", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1])])
    with pytest.raises(InputError) as err:
        _module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)]))
    message = str(err.value)
    assert message.startswith("unsupported ONNX ops 'Foo' (node 'bar' and 1 more), 'com.example.Baz' (node 'q');")
    assert "haqc's executor supports: " in message and "Conv" in message and "\n" not in message


def test_optional_outputs_the_executor_skips_are_named() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y", "indices"], kernel_shape=[2])
    model, _ = _model([node], {"x": _rand(1, 1, 4)}, ["y", "indices"], 13)
    with pytest.raises(InputError, match="'indices', an optional output"):
        _module(model)(torch.zeros(1, 1, 4))


def test_misspelled_transform_names_are_rejected() -> None:
    with pytest.raises(InputError, match="conv/W"):
        _module(_conv_model(), weight_transforms={"conv/W": torch.neg})
    with pytest.raises(InputError, match="nope"):
        _module(_conv_model(), activation_transforms={"nope": torch.neg})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda() -> None:
    """Buffers move with the module and shape ops stay on the device."""
    model = onnx.load(LIGHT_DIR / "light_squeezenet.onnx")
    rnd, feeds = randomized(model), _feeds(model)
    module = _module(rnd).cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = module(*[torch.from_numpy(feeds[n]).cuda() for n in module.input_names])
    expected = _session(rnd).run(None, feeds)
    for e, g in zip(expected, got):  # GPU kernels sum in another order: 10x the CPU tolerance
        assert np.max(np.abs(g.cpu().numpy() - e)) <= 1e-3 * max(1.0, np.max(np.abs(e)))
    y, s, fill = _module(_shape_model()).cuda()(torch.zeros(5, 3, 4, device="cuda"))
    assert y.shape == (5, 12) and s.device == fill.device == y.device and s.tolist() == [5, 3, 4]


def test_scalar_constants_of_the_arithmetic_do_not_train() -> None:
    """A decomposed LayerNorm's exponent and epsilon are initializers too: trained, the exponent's
    gradient (x^p ln x) is NaN where x <= 0 and one step turned hello_deepa_npm's weights into NaN.
    A one-element layer bias (one output channel) trains."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 6)).astype(np.float32), "b": np.zeros(1, np.float32),
             "wl": rng.standard_normal((6, 1)).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
             "gamma": np.ones(6, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], keepdims=1, axes=[-1]),
             helper.make_node("Sub", ["h", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], keepdims=1, axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["g"]),
             helper.make_node("Gemm", ["g", "wl", "b"], ["y"])]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    module = _module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    trains = {name: module.params[key].requires_grad for name, key in module._param_keys.items()}
    assert trains == {"w": True, "b": True, "wl": True, "two": False, "eps": False, "gamma": True}
    module(torch.from_numpy(_rand(8, 4))).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.requires_grad)


def test_sqrt_has_a_finite_gradient_at_zero() -> None:
    """An STFT magnitude is sqrt(re^2 + im^2), 0 at silent bins: torch's gradient there is infinite and
    turned every fine-tuning step of dnsmos_sig_bak_ovr into NaN (each was then skipped). The value is exact."""
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TP.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [3])])
    module = _module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = torch.tensor([0.0, 4.0, 9.0], requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 2.0, 3.0]))
    assert torch.isfinite(x.grad).all() and torch.allclose(x.grad[1:], torch.tensor([0.25, 1 / 6]))
