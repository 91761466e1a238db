"""Every default the API and the CLI share, in one light module: the config dataclasses and the names
of the choices they offer.

The heavy modules (evaluation, finetune, quantizer, calibration, search) and the CLI read these; the
CLI builds its options from them without importing onnx, ONNX Runtime, torch or scipy, so every
``haqc X --help`` answers at once. Nothing here imports more than the standard library and the
foundation (errors, capabilities, precision).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Union, get_args

from haqc.capabilities import Capabilities
from haqc.errors import InputError
from haqc.precision import Method

if TYPE_CHECKING:
    import numpy as np

    from haqc.data import Dataset
    from haqc.hw_targets import Target
    from haqc.passes.load import InputShapes
    from haqc.quantizer import RunData

# What data may be given as: an .npz path, or arrays by input name (plus optional "labels").
DataSource = Union[str, os.PathLike, Mapping[str, "np.ndarray"]]
# A user's metric: func(outputs, targets) -> float, higher is better.
Metric = Callable[["np.ndarray", Union["np.ndarray", None]], float]

# Evaluation signals. ``metric`` may name a built-in one: TOP1 says the first output holds class scores
# (top-1 accuracy with labels, agreement without), FIDELITY scores every output against the reference:
# per output, the SQNR against fp32 clipped to [0, FIDELITY_DB] dB and divided by FIDELITY_DB, averaged
# over outputs (1 = within 40 dB of fp32, as w8a8 usually is; 0 = noise as large as the signal).
TOP1 = "top1"
TOP1_AGREEMENT = "top1-agreement"
FIDELITY = "sqnr-fidelity"
FIDELITY_DB = 40.0
BUILTIN_METRICS = (TOP1, FIDELITY)

# With a dynamic batch dim, the default batch holds at most DEFAULT_BATCH samples and BATCH_ELEMENTS
# input values: activations that stay in cache beat one big run, and memory stays bounded on big
# inputs. Measured (2 cores, interleaved): the example's 1,000 digits (784 values each), batches of
# 256 beat one 1,000-image run by 10-25% and tie 32-128; PP-OCR's direction classifier on 500 lines
# (27,648 values each), batches of 16-32 ran a w8a8 pass in 1.0-1.2 s against 1.8-2.3 s at 256.
DEFAULT_BATCH = 256
BATCH_ELEMENTS = 2**19

# How activation clips are chosen below 8 bits (8-bit activations take the calibrated min-max range);
# mse measured best on the example (docs/calibration.md).
ClipMethod = Literal["kl", "max", "percentile", "mse"]
CLIP_METHODS: tuple[ClipMethod, ...] = get_args(ClipMethod)
DEFAULT_CLIP_METHOD: ClipMethod = "mse"
# How the written model stores linear quantization (docs/design.md, "Output formats"):
# qdq: weights in INT8 containers, run as ONNX Runtime's integer kernels; packed: INT4 / INT2
# containers, the smallest file; qonnx: QONNX Quant nodes with their bit widths (FINN, hls4ml).
Format = Literal["qdq", "packed", "qonnx"]
FORMATS: tuple[Format, ...] = get_args(Format)

# The built-in search strategies, in their documented order (haqc.search.strategies finds them, and
# plugins' strategies, through the haqc.strategies entry-point group).
STRATEGY_NAMES = ("ddpg", "random", "uniform", "greedy", "ilp")
# What the search rewards (haqc.search.score): HAQ's metric (the accuracy after the candidate's
# fine-tune, if any), the divergence of its outputs from fp32's alone, or both added (the metric where
# it discriminates, the divergence where it ties).
Reward = Literal["metric", "divergence", "both"]
REWARDS: tuple[Reward, ...] = get_args(Reward)

# The learning rates a short range test tries (each for RANGE_TEST_STEPS steps, scored on the
# held-out part): 1e-3 was best or within 0.4 points of the best of 1e-4..3e-3 on six uniform
# policies of the example, but broke a trained face detector that 1e-5 improved (docs/design.md).
LR_CANDIDATES = (1e-5, 1e-4, 1e-3)
# Without an explicit epoch count, fine-tuning runs whole epochs and at least this many Adam steps:
# one epoch of a small set is too few updates to recover 3-4-bit layers. Measured on the text-direction
# classifier at edge 0.5x (2,000 lines, batches of 64, one policy, fp32 99.0%): 32 steps 89.8%,
# 96 steps 96.2%, 320 steps 99.2% (docs/design.md, "Fine-tuning").
DEFAULT_MIN_STEPS = 300
# ...and at most this many epochs: 300 steps of 128 images were 150 epochs, over two hours.
MAX_EPOCHS = 30
# The wall-clock budget of one fine-tune (range test included) unless FinetuneConfig says otherwise.
DEFAULT_SECONDS = 300.0
# The fraction of the training data held out to pick the best step.
HOLDOUT = 0.1


def custom_metric(metric: str | Metric | None) -> bool:
    """Whether ``metric`` is the user's function (its targets need not be classes), not a built-in signal."""
    return metric is not None and metric not in BUILTIN_METRICS


@dataclass(frozen=True)
class FinetuneConfig:
    """How long and how fast to train; None picks the measured defaults (docs/design.md, "Fine-tuning")."""

    epochs: int = 1  # at most this many passes over the fitted part of the data
    lr: float | None = None  # None: the best of LR_CANDIDATES in a short range test
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    temperature: float = 1.0  # distillation temperature of class-score outputs
    max_steps: int | None = None  # stop after this many optimizer steps (short per-episode tuning)
    max_seconds: float | None = None  # wall-clock budget, range test included (None: DEFAULT_SECONDS)
    holdout: float = HOLDOUT  # fraction of the training data held out to pick the best step
    trainable_clip: bool = False  # learn each layer's input clip too (PACT); the export uses it


@dataclass(frozen=True)
class QuantizeOptions:
    """How policies are turned into ONNX: the activation clips, the weight granularity, the container,
    and the target's capabilities (which integer range its kernels compute exactly)."""

    clip_method: ClipMethod = DEFAULT_CLIP_METHOD
    per_channel: bool = True
    calib_batch_size: int = 256
    seed: int = 0  # k-means codebooks are fitted on a seeded sample of a large layer's weights
    format: Format = "qdq"
    capabilities: Capabilities = Capabilities()

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown `format` {self.format!r}; choose one of: {', '.join(FORMATS)}")


@dataclass(frozen=True)
class RunConfig:
    """What quantize and compress share: data, quantization, fine-tuning. Defaults are the CLI's."""

    data: DataSource | None = None  # validation: inputs + optional "labels"
    calib_data: DataSource | None = None  # default: data
    train_data: DataSource | None = None
    metric: str | Metric | None = None  # "module:function" or a callable(outputs, targets) -> float
    clip_method: str = QuantizeOptions.clip_method
    per_channel: bool = QuantizeOptions.per_channel
    format: str = QuantizeOptions.format  # one of FORMATS
    seed: int = 0
    finetune_epochs: int | None = None  # default: finetune.default_epochs of train_data, else 0
    finetune_seconds: float | None = FinetuneConfig.max_seconds  # default: DEFAULT_SECONDS
    lr: float | None = FinetuneConfig.lr  # default: a short range test picks it (LR_CANDIDATES)
    device: str = FinetuneConfig.device
    trainable_clip: bool = FinetuneConfig.trainable_clip
    input_shapes: InputShapes | None = None  # fix dynamic dims for analysis and calibration only

    def shapes_from(self) -> DataSource | None:
        """The data whose sample shapes fix dynamic dims that `input_shapes` leaves open."""
        return next((d for d in (self.calib_data, self.data, self.train_data) if d is not None), None)

    def quantize_options(self, target: Target) -> QuantizeOptions:
        """How policies become ONNX, with the numeric constraints of ``target``'s kernels."""
        return QuantizeOptions(clip_method=self.clip_method, per_channel=self.per_channel,
                               seed=self.seed, format=self.format, capabilities=target.capabilities())

    def finetune(self, epochs: int, max_steps: int | None = None) -> FinetuneConfig:
        """The fine-tuning settings, for the final tune or (``max_steps``) a search candidate's."""
        return FinetuneConfig(epochs=epochs, lr=self.lr, seed=self.seed, device=self.device, max_steps=max_steps,
                              max_seconds=self.finetune_seconds, trainable_clip=self.trainable_clip)

    def training_set(self, run: RunData) -> Dataset | None:
        """What fine-tuning trains on: with the user's own ``metric``, the labels are the metric's, not
        classes of the first output, so the model is distilled from fp32 instead."""
        if run.train is None or not custom_metric(self.metric) or run.train.labels is None:
            return run.train
        return dataclasses.replace(run.train, labels=None)


@dataclass(frozen=True)
class QuantizeConfig(RunConfig):
    """``quantize``: one precision for every layer (``bits``, e.g. "w4a8") or a stored ``policy`` file."""

    bits: str | None = None
    policy: str | os.PathLike | None = None
    # Whose kernels the integers are formed for: a name, a .toml file or a Target; default ort-cpu,
    # ONNX Runtime on this machine (its CPU decides whether 8-bit weights need the reduced range).
    target: str | Target = "ort-cpu"


@dataclass(frozen=True)
class CompressConfig(RunConfig):
    """``compress``: the search for ``target`` under ``budgets`` (quantity -> "0.5x", "20ms", "2MB")."""

    target: str | Target = "edge"  # a name (haqc targets), a .toml file, or a Target instance
    budgets: Mapping[str, str] = field(default_factory=dict)
    # The options the search picks from: the target's (linear: its integer grid or declared formats),
    # or k-means codebooks of its weight widths (kmeans: HAQ's model-size setting).
    method: Method = "linear"
    strategy: str = "ddpg"  # a registered strategy: one of STRATEGY_NAMES or a plugin's
    episodes: int = 60
    pin_first: bool = True
    pin_last: bool = True
    reward_lambda: float = 0.1
    reward: Reward = "metric"  # one of REWARDS: what the search's reward measures
    search_finetune_steps: int = 0  # short fine-tune before each episode's evaluation (HAQ's reference did)
    # HAQ's reward for the candidates that can matter: the best ``finalists`` policies the search found
    # (by reward, meeting the budget) each get ``finalist_steps`` fine-tune steps, and the one that scores
    # best after them is exported (1: the search's best, untried). Needs train_data.
    finalists: int = 1
    finalist_steps: int = 60
    # Validation samples each search candidate is scored on (a seeded subset of ``data``); None: all of
    # them, or fewer on a model whose evaluation would cost more than haqc.pipeline.SEARCH_MACS. The
    # fp32, w8a8 and result scores in the report are always measured on every sample.
    search_samples: int | None = None
    workdir: str | os.PathLike | None = None
    resume: bool = False
    max_accuracy_drop: float | None = None  # percentage points; more raises AccuracyDropError (exit 4)
    strategy_config: Any = None  # the strategy's own configuration (a DDPGConfig for ddpg); None: its defaults
    workers: int = 1  # candidates evaluated at once, in Ray workers when more than 1 (docs/parallel.md)
    ray_address: str | None = None  # join this Ray cluster ("auto", "host:port"); None: workers on this machine
