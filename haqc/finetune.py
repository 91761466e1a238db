"""Fake quantization in torch and fine-tuning of a policy, written back into the ONNX graph.

The canonical float model runs in haqc's executor with straight-through fake
quantization that applies exactly the parameters the quantize pass computed
for the policy (``LinearQuantize.plan``: weight scales, activation clips,
scales and bounds, bias steps, requantized outputs; ``KMeansQuantize.plan``:
codebooks and assignments), so after training the weights are written back as
floats and the pass re-exports the same numbers the simulation used.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from haqc.executor import OnnxModule
from haqc.layers import Layer
from haqc.passes.base import copy_model
from haqc.passes.quantize_kmeans import Codebook
from haqc.passes.quantize_linear import ActivationQuant, LinearPlan, QuantizedWeight

logger = logging.getLogger(__name__)

# One epoch of Adam at 1e-4 left most of a 2-bit gap; 1e-3 was best or within 0.4 points of
# the best of 1e-4..3e-3 on six uniform policies of the example (docs/design.md).
DEFAULT_LR = 1e-3
# Without an explicit epoch count, fine-tuning runs whole epochs and at least this many Adam steps:
# one epoch of a small set is too few updates to recover 3-4-bit layers. Measured on the text-direction
# classifier at edge 0.5x (2,000 lines, batches of 64, one policy, fp32 99.0%): 32 steps 89.8%,
# 96 steps 96.2%, 320 steps 99.2% (docs/design.md, "Fine-tuning").
DEFAULT_MIN_STEPS = 300


class WeightFakeQuant(nn.Module):
    """Symmetric STE fake-quant with the export's per-channel (or per-tensor) scale."""

    def __init__(self, weight: QuantizedWeight, ndim: int) -> None:
        super().__init__()
        self.bits, self.axis, self.ndim = weight.bits, weight.axis, ndim
        self.levels = weight.levels
        self.register_buffer("scale", torch.zeros(()))
        self.set_scale(weight.scale)

    def set_scale(self, scale: np.ndarray) -> None:
        """Use the export's scale (re-planned from the current weights between epochs)."""
        value = torch.from_numpy(np.asarray(scale, np.float32))
        if self.axis is not None:
            shape = [1] * self.ndim
            shape[self.axis] = -1
            value = value.reshape(shape)
        self.scale = value.to(self.scale.device)

    def forward(self, w: Tensor) -> Tensor:
        q = torch.clamp(torch.round(w / self.scale), -self.levels, self.levels) * self.scale
        return w + (q - w).detach()


class ActivationFakeQuant(nn.Module):
    """STE fake-quant of an activation to the export's float range, in its steps.

    Fixed, it applies the scale and bounds the pass computed. With ``trainable`` the clip is
    learned PACT-style, so scale and bounds follow it: the same rule as ``ActivationQuant``
    (float32 rounding of clip / levels, bounds from the stored scale), written in torch so the
    gradient reaches the clip.
    """

    def __init__(self, quant: ActivationQuant, trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable
        self.lowest, self.highest = quant.codes
        self.levels = self.highest
        clip_t = torch.tensor(float(quant.clip), dtype=torch.float32)
        if trainable:
            self.clip = nn.Parameter(clip_t)
        else:
            self.register_buffer("clip", clip_t)
            self.register_buffer("fixed_scale", torch.tensor(quant.scale, dtype=torch.float32))
            self.register_buffer("fixed_bounds", torch.tensor(quant.bounds, dtype=torch.float32))

    def scale(self) -> Tensor:
        if not self.trainable:
            return self.fixed_scale
        return (self.clip.double() / self.levels).float()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale()
        if self.trainable:
            hi = (scale.double() * self.highest).float()
            lo = (scale.double() * self.lowest).float()
        else:
            lo, hi = self.fixed_bounds[0], self.fixed_bounds[1]
        xc = torch.minimum(torch.maximum(x, lo), hi)  # gradient reaches clip where x saturates (PACT)
        q = torch.round(xc / scale) * scale
        return xc + (q - xc).detach()


class BiasFakeQuant(nn.Module):
    """The bias in int32 steps of s_a * s_w (float32), as the export stores it; STE."""

    def __init__(self, weight: WeightFakeQuant, activation: ActivationFakeQuant) -> None:
        super().__init__()
        self.weight_fq, self.activation_fq = weight, activation

    def forward(self, b: Tensor) -> Tensor:
        step = (self.activation_fq.scale() * self.weight_fq.scale.reshape(-1)).double()
        q = (torch.round(b.double() / step) * step).float()
        return b + (q - b).detach()


class CodebookFakeQuant(nn.Module):
    """k-means weights: fixed assignments; each centroid learns from its members' gradients."""

    def __init__(self, codebook: np.ndarray, indices: np.ndarray) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.from_numpy(codebook.astype(np.float32)))
        self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))

    def forward(self, w: Tensor) -> Tensor:
        return self.codebook[self.indices]


@dataclass(frozen=True)
class Simulation:
    """The executor module plus the fake-quant modules, by layer name."""

    module: OnnxModule
    weights: dict[str, nn.Module]
    activations: dict[str, ActivationFakeQuant]
    input_names: list[str]


def isolate_layer_inputs(model: onnx.ModelProto, layers: list[Layer]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Give each layer a private copy (Identity) of its input.

    The export quantizes a layer's input only on the edge into that layer; a
    residual Add reading the same tensor sees it in float. Keying the
    simulation's activation fake-quant on a private copy keeps that exact.
    """
    out = copy_model(model)
    names = {layer.name for layer in layers}
    private: dict[str, str] = {}
    nodes = []
    for node in out.graph.node:
        if node.name in names:
            copy = f"{node.name}/input"
            nodes.append(helper.make_node("Identity", [node.input[0]], [copy], name=f"{node.name}/isolate"))
            node.input[0] = copy
            private[node.name] = copy
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, private


def build_simulation(
    model: onnx.ModelProto,
    layers: list[Layer],
    plan: LinearPlan | dict[str, Codebook],
    *,
    trainable_clip: bool = False,
) -> Simulation:
    """The canonical float model as a torch module applying ``plan``'s quantization (a linear pass's
    plan, or a k-means pass's codebooks by layer)."""
    isolated, private = isolate_layer_inputs(model, layers)
    inits = {t.name: t for t in isolated.graph.initializer}
    weight_q: dict[str, nn.Module] = {}
    act_q: dict[str, ActivationFakeQuant] = {}
    transforms: dict[str, nn.Module] = {}
    requant: dict[str, ActivationFakeQuant] = {}
    nodes = {n.name: n for n in isolated.graph.node}
    if isinstance(plan, LinearPlan):
        for layer in layers:
            quant = plan.layers[layer.name]
            if quant.weight is not None:
                weight_q[layer.name] = WeightFakeQuant(quant.weight, len(inits[layer.weight].dims))
                transforms[layer.weight] = weight_q[layer.name]
            if quant.activation is not None:
                act_q[layer.name] = ActivationFakeQuant(quant.activation, trainable_clip)
            if quant.bias_scale is not None:  # both quantized: the export stores the bias in int32 steps
                transforms[nodes[layer.name].input[2]] = BiasFakeQuant(weight_q[layer.name], act_q[layer.name])
        # the 8-bit outputs of integer layers, as the export requantizes them
        requant = {tensor: ActivationFakeQuant(quant) for tensor, quant in plan.requantized.items()}
    else:
        for layer in layers:
            if layer.name in plan:
                weight_q[layer.name] = CodebookFakeQuant(plan[layer.name].codebook, plan[layer.name].indices)
                transforms[layer.weight] = weight_q[layer.name]
    module = OnnxModule(
        isolated,
        weight_transforms=transforms,
        activation_transforms={**requant, **{private[n]: m for n, m in act_q.items()}},
    )
    inputs = [i.name for i in isolated.graph.input if i.name not in inits]
    return Simulation(module, weight_q, act_q, inputs)



@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 1
    lr: float = DEFAULT_LR
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    temperature: float = 1.0  # distillation temperature (label-free mode)
    max_steps: int | None = None  # stop after this many optimizer steps (short per-episode tuning)
    trainable_clip: bool = False  # learn each layer's input clip too (PACT); the export uses it


def default_epochs(samples: int, batch_size: int = FinetuneConfig.batch_size) -> int:
    """The epochs a run fine-tunes for when none are given: whole epochs of ``samples``, at least
    DEFAULT_MIN_STEPS optimizer steps (one epoch of a large set already has them)."""
    return max(1, math.ceil(DEFAULT_MIN_STEPS / math.ceil(samples / batch_size)))


@dataclass(frozen=True)
class Tuned:
    """What fine-tuning trained: the float model to re-quantize and the quantizer settings the
    training ran under, which the export must reuse to compute what was trained."""

    model: onnx.ModelProto
    clips: dict[str, float]  # input clip by layer name (learned when trainable_clip)
    weight_scales: dict[str, np.ndarray]  # linear weight scale by weight name


def finetune(
    model: onnx.ModelProto,
    layers: list[Layer],
    simulation: Simulation,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    config: FinetuneConfig,
    teacher_logits: np.ndarray | None = None,
    weight_quant: Callable[[Layer, np.ndarray, int, int], QuantizedWeight] | None = None,
) -> Tuned:
    """Train the weights under fake quantization; return the float model with them written back,
    and the activation clips and weight scales of the last epoch.

    Labels give a cross-entropy loss; without labels the fp32 model's logits
    (``teacher_logits``) are distilled with a KL loss. ``weight_quant`` is the
    quantize pass's rule for a layer's weights: between epochs the scales follow
    the trained weights as the pass would choose them.
    """
    if labels is None and teacher_logits is None:
        raise ValueError("fine-tuning needs labels or teacher logits")
    device = torch.device(config.device)
    module = simulation.module.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n = len(next(iter(inputs.values())))
    steps_per_epoch = math.ceil(n / config.batch_size)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    step = 0
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    target = torch.from_numpy(labels.astype(np.int64)) if labels is not None else torch.from_numpy(teacher_logits)
    scores = class_scores(model)
    if labels is None:
        target = scores(target)
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, config.batch_size):
            if step >= total_steps:
                break
            step += 1
            idx = order[start : start + config.batch_size]
            out = module(**{k: v[idx].to(device) for k, v in tensors.items()})
            out = out[0] if isinstance(out, tuple) else out
            loss = _loss(scores(out), target[idx].to(device), labels is not None, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        if epoch + 1 < config.epochs and weight_quant is not None:  # between epochs, not after the last
            _refresh_scales(simulation, layers, weight_quant)
        logger.info("fine-tune epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / n)
    module.eval()
    trained = module.initializer_arrays()
    for layer in layers:  # k-means layers: the trained weight is the codebook lookup
        fq = simulation.weights.get(layer.name)
        if isinstance(fq, CodebookFakeQuant):
            trained[layer.weight] = fq.codebook.detach().cpu()[fq.indices.cpu()].numpy()
    clips = {name: float(fq.clip.detach().cpu()) for name, fq in simulation.activations.items()}
    scales = {layer.weight: fq.scale.detach().cpu().numpy().reshape(-1) for layer in layers
              if isinstance(fq := simulation.weights.get(layer.name), WeightFakeQuant)}
    return Tuned(_write_back(model, trained), clips, scales)


# Ops that pass a class dimension through unchanged, looked through to find what made the output.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


def class_scores(model: onnx.ModelProto) -> Callable[[Tensor], Tensor]:
    """Turns the first output into logits (up to a constant per row), which the losses expect: a
    model that ends in Softmax outputs probabilities (their log), in LogSoftmax log-probabilities
    (as they are). Cross-entropy on probabilities taken as logits is a bounded loss of the wrong
    quantity, and distilling softmax(probabilities) flattens the teacher's distribution."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producer.get(node.input[0])
    if node is not None and node.op_type == "Softmax":
        return lambda out: torch.log(out.clamp_min(1e-12))
    return lambda out: out


def _loss(out: Tensor, target: Tensor, supervised: bool, temperature: float) -> Tensor:
    if supervised:
        return nn.functional.cross_entropy(out, target)
    t = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(out / t, dim=-1), nn.functional.softmax(target / t, dim=-1), reduction="batchmean"
    ) * (t * t)


def _refresh_scales(simulation: Simulation, layers: list[Layer],
                    weight_quant: Callable[[Layer, np.ndarray, int, int], QuantizedWeight]) -> None:
    """Re-plan weight scales from the trained weights, as the re-export will."""
    arrays = simulation.module.initializer_arrays()
    for layer in layers:
        fq = simulation.weights.get(layer.name)
        if isinstance(fq, WeightFakeQuant):
            fq.set_scale(weight_quant(layer, arrays[layer.weight], fq.bits, fq.levels).scale)


def _write_back(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the float initializers replaced by ``arrays``."""
    out = copy_model(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in arrays:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[t.name].astype(np.float32), t.name))
    return out
