"""Text lines for the OCR example: rendered with PIL, and the CTC exact-match metric that scores them.

    python examples/ocr/lines.py OUT.npz [N]     # render N lines (default 32) as PP-OCRv4 rec inputs

writes OUT.npz (inputs ``x`` and ``labels``, for ``haqc eval --metric lines:exact_match``)
and OUT.inputs.npz (inputs only: calibration, and compress's label-free signal).

The strings are seeded, so the metric regenerates them from the labels (each
label is the line's index) instead of reading a side file.
"""
from __future__ import annotations

import sys

import numpy as np

HEIGHT, WIDTH = 48, 320  # PP-OCRv4 rec's input (rapidocr's rec_img_shape)
WORDS = ("haqc", "model", "ONNX", "quantize", "edge", "2024", "Runtime", "layer", "bits", "text", "OCR", "fp32",
         "int8", "search", "budget", "latency", "42", "HAQ", "policy", "agent")
DEFAULT_LINES = 32


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` lines of two words, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=2)) for _ in range(n)]


def render(text: str) -> np.ndarray:
    """One line as the model's input: black on white, normalized to [-1, 1], CHW float32."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    ImageDraw.Draw(image).text((6, 8), text, fill="black", font=ImageFont.load_default(size=26))
    return ((np.asarray(image, np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def exact_match(outputs: np.ndarray, labels: np.ndarray | None) -> float:
    """``--metric`` plugin: the fraction of lines whose greedy CTC decoding is exactly the rendered text.

    Spaces are not compared: the Chinese recognizer often merges the gap between two Latin words.
    """
    if labels is None:
        raise ValueError("the OCR metric needs the labels array (each line's index)")
    truth = texts(int(labels.max()) + 1)
    return float(np.mean([decode(row).replace(" ", "") == truth[i].replace(" ", "") for row, i in zip(outputs, labels)]))


_CHARS: list[str] | None = None


def decode(probabilities: np.ndarray) -> str:
    """Greedy CTC: best class per step, repeats collapsed, blanks (class 0) dropped."""
    global _CHARS
    if _CHARS is None:
        _CHARS = _characters()
    best = probabilities.argmax(-1)
    keep = [c for k, c in enumerate(best) if c != 0 and (k == 0 or c != best[k - 1])]
    return "".join(_CHARS[c - 1] for c in keep)


def _characters() -> list[str]:
    """PP-OCRv4 rec's dictionary, from the model's metadata (class i is character i - 1, then space)."""
    import onnx

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tests"))
    from realmodels.corpus import obtain

    meta = {p.key: p.value for p in onnx.load(str(obtain("ppocrv4_rec")), load_external_data=False).metadata_props}
    return meta["character"].split("\n") + [" "]


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else DEFAULT_LINES
    x = np.stack([render(t) for t in texts(n)])
    np.savez(argv[0], x=x, labels=np.arange(n))
    np.savez(argv[0].removesuffix(".npz") + ".inputs.npz", x=x)


if __name__ == "__main__":
    main(sys.argv[1:])
