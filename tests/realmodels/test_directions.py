"""examples/ocr/directions.py: the benchmark's direction data is balanced, seeded, and the trained classifier reads it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.realmodels.corpus import obtain

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "ocr"))
import directions  # noqa: E402


def test_lines_are_balanced_seeded_and_shaped_as_the_classifier_takes_them():
    first, again, other = directions.dataset(8, seed=5), directions.dataset(8, seed=5), directions.dataset(8, seed=6)
    assert first["x"].shape == (8, 3, 48, 192) and first["x"].dtype == np.float32
    assert first["labels"].tolist() == [0, 1] * 4
    assert np.array_equal(first["x"], again["x"]) and not np.array_equal(first["x"], other["x"])
    assert first["x"].min() >= -1.0 and first["x"].max() <= 1.0


@pytest.mark.slow
def test_the_trained_classifier_tells_the_directions_apart():
    import onnxruntime as ort

    data = directions.dataset(64, seed=11)
    session = ort.InferenceSession(str(obtain("ppocr_cls")), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"x": data["x"]})[0]
    assert (probabilities.argmax(1) == data["labels"]).mean() >= 0.9
