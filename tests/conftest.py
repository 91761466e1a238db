"""Shared fixtures: the bundled example, the onnx package's light model zoo, ORT helpers."""
from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (scripts/test runs two workers on two cores) each worker computes on one thread:
# ONNX Runtime's and torch's default of every core would put four busy threads on two cores. Set before
# torch is imported (its OpenMP pool reads this once), and haqc's sessions below.
PARALLEL_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if PARALLEL_WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist" / "mnist_mbv2.onnx"
LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
# name -> expected number of quantizable layers (issue 2)
LIGHT_MODELS = {
    "bvlc_alexnet": 8,
    "densenet121": 121,
    "inception_v1": 58,
    "inception_v2": 70,
    "resnet50": 54,
    "shufflenet": 50,
    "squeezenet": 26,
    "vgg19": 19,
    "zfnet512": 8,
}
# Their weights run to hundreds of MB once folded; the rest are quick.
HEAVY_LIGHT_MODELS = {"bvlc_alexnet", "vgg19", "zfnet512"}

ort.set_default_logger_severity(3)


def pytest_configure(config: pytest.Config) -> None:
    """One thread per xdist worker for haqc's ONNX Runtime sessions and torch."""
    if PARALLEL_WORKER:
        import torch

        from haqc.evaluation import set_session_threads

        set_session_threads(1)
        torch.set_num_threads(1)
        _one_thread_sessions()


def _one_thread_sessions() -> None:
    """Every other ONNX Runtime session in this worker computes on one thread too: those the tests
    open, the passes' (calibration, shape probing) and onnx-graphsurgeon's constant folding. ORT's
    default is a thread per core, and its spinning threads cost 1.7x the CPU of one thread
    (resnet50, 8 images, busy 2-core machine). A session told its thread count keeps it."""
    init = ort.InferenceSession.__init__
    if getattr(init, "_one_thread", False):
        return

    def one_thread_init(self, path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if sess_options.intra_op_num_threads == 0:  # 0: ORT's default, a thread per physical core
            sess_options.intra_op_num_threads = 1
        init(self, path_or_bytes, sess_options, *args, **kwargs)

    one_thread_init._one_thread = True
    ort.InferenceSession.__init__ = one_thread_init


def light_path(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def light_params():
    """Parametrize over the light models, the heavy ones marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_LIGHT_MODELS else n for n in LIGHT_MODELS]


def randomize_constant_of_shape(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace each weight-producing ConstantOfShape by a random Constant of the same shape.

    The light models fill every weight with one value, which makes any parity
    check trivial; random He-scaled weights (positive 1-D vectors, so BatchNorm
    variances stay valid) keep the graph's structure but make outputs informative.
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) == 1:
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
            node = helper.make_node("Constant", [], list(node.output), value=numpy_helper.from_array(value.astype(np.float32)))
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def run_ort(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close_rel(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """|a - b| <= rel * max(1, max|b|): relative to the output's scale."""
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= rel * scale, f"max abs error {err:.3g} exceeds {rel:g} x {scale:.3g}"

EXAMPLE_DIR = EXAMPLE.parent


@pytest.fixture(scope="session")
def example():
    """The bundled example: prepared model and its validation / calibration / training sets."""
    from haqc.pipeline import prepare
    from haqc.quantizer import load_data

    prepared = prepare(EXAMPLE)
    return {
        "prepared": prepared,
        "val": load_data(str(EXAMPLE_DIR / "val.npz"), prepared, "--data"),
        "calib": load_data(str(EXAMPLE_DIR / "calib.npz"), prepared, "--calib-data"),
        "train": load_data(str(EXAMPLE_DIR / "train.npz"), prepared, "--train-data"),
    }


@pytest.fixture(autouse=True, scope="session")
def _measurement_cache(tmp_path_factory):
    """Measured targets cache in a directory of this test session, never the user's cache."""
    os.environ["HAQC_CACHE_DIR"] = str(tmp_path_factory.mktemp("haqc-cache"))
    yield


def add_fake_dist(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    version: str,
    entry_points: dict[str, str],
    source_dir: Path | None = None,
    group: str = "haqc.hw_targets",
) -> Path:
    """Put a distribution with these entry points in ``group`` on sys.path (undone after the test).

    Returns the site folder holding its dist-info. ``source_dir`` (the plugin's
    code) is put on sys.path too. A plugin module imported by a test may stay
    in sys.modules, but without its dist-info nothing discovers it again.
    """
    site = tmp_path / f"site-{name}"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    monkeypatch.syspath_prepend(str(site))
    if source_dir is not None:
        monkeypatch.syspath_prepend(str(source_dir))
    return site
