"""Text-direction data for PP-OCR's angle classifier: rendered lines, half of them turned 180 degrees.

    python examples/ocr/directions.py OUT_DIR        # val.npz (500), calib.npz (256), train.npz (2,000)

Each file holds ``x`` (float32 [N, 3, 48, 192], the classifier's input as
rapidocr prepares it) and ``labels`` (0: upright, 1: turned 180 degrees, the
model's two classes in its order). Labels are known by construction, so this
is a real top-1 task on a trained model where the bits matter: uniform 4-bit
costs tens of points (benchmarks/README.md). The three sets use disjoint seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lines import WORDS

HEIGHT, WIDTH = 48, 192  # the classifier's input (rapidocr's cls_image_shape)
SETS = {"val": (500, 1), "calib": (256, 2), "train": (2000, 3)}  # name: (lines, seed)
EXTRA = ("the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "Total", "Date",
         "Invoice", "No.", "Page", "3.14", "12:30", "USD", "km/h", "Name", "Street", "City", "2025-06-01")


def line(rng: np.random.Generator, turned: bool) -> np.ndarray:
    """One text box as rapidocr hands it to the classifier: the rendered text cropped to its ink (with a
    margin), turned 180 degrees if ``turned`` (a box cut from a page upside down), resized to height 48
    keeping its aspect (at most 192 wide), normalized to [-1, 1] and zero-padded on the right; CHW float32."""
    from PIL import Image, ImageDraw, ImageFont

    words = [str(w) for w in rng.choice(WORDS + EXTRA, size=int(rng.integers(1, 5)))]
    font = ImageFont.load_default(size=int(rng.integers(18, 34)))
    ink, paper = int(rng.integers(0, 90)), int(rng.integers(170, 256))
    canvas = Image.new("L", (1200, 80), paper)
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 10), " ".join(words), fill=ink, font=font)
    left, top, right, bottom = draw.textbbox((10, 10), " ".join(words), font=font)
    m = int(rng.integers(2, 8))
    box = canvas.crop((left - m, top - m, right + m, bottom + m)).convert("RGB")
    if turned:
        box = box.rotate(180)
    width = min(WIDTH, int(np.ceil(HEIGHT * box.width / box.height)))
    pixels = np.asarray(box.resize((width, HEIGHT), Image.BILINEAR), np.float32)
    pixels = pixels + rng.normal(0.0, 6.0, pixels.shape)  # sensor noise
    out = np.zeros((3, HEIGHT, WIDTH), np.float32)
    out[:, :, :width] = ((np.clip(pixels, 0, 255) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def dataset(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` lines, every other one turned 180 degrees."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return {"x": np.stack([line(rng, bool(label)) for label in labels]), "labels": labels.astype(np.int64)}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, (n, seed) in SETS.items():
        np.savez(out / f"{name}.npz", **dataset(n, seed))


if __name__ == "__main__":
    main(sys.argv[1:])
