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
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from haqc.data import Dataset
from haqc.evaluation import make_session, run_batches, sample_axis, samples_first, selection_sources
from haqc.ops import LAYER_OPS, PASS_THROUGH
from haqc.executor import OnnxModule
from haqc.layers import Layer
from haqc.passes.base import copy_model, without_initializers
from haqc.progress import progress_bar
from haqc.settings import DEFAULT_MIN_STEPS, DEFAULT_SECONDS, LR_CANDIDATES, MAX_EPOCHS, FinetuneConfig
from haqc.passes.plan import ActivationQuant, DynamicQuant, ExportPlan, HalfFloat, QuantizedWeight
from haqc.passes.quantize_kmeans import Codebook

logger = logging.getLogger(__name__)

# Steps each of LR_CANDIDATES trains for in the range test, and the share of the time budget the
# test may take: on light resnet50 (a step of 64 images takes 15-40 s here) eight steps per candidate
# took the whole 300 s budget and more, and left none for training.
RANGE_TEST_STEPS = 8
RANGE_TEST_SHARE = 0.25
# The held-out part scores the weights every EVAL_EVERY steps (or every epoch, if shorter); training
# stops after PATIENCE scores and PATIENCE_STEPS steps without improvement and keeps the best scored
# step. A small set is checked every epoch, every two steps at 128 samples: four checks were eight
# steps, too few to get past Adam's first steps, which often raise the loss before it falls.
MIN_HOLDOUT = 16
MAX_HOLDOUT = 512
EVAL_EVERY = 25
# Activation memory a training batch may hold, and the bytes autograd keeps per activation element a
# layer reads or writes (the values, their fake-quantized copies, what backward saves). At the default
# 64 samples, dnsmos_sig_bak_ovr (83M such elements per 9 s clip) grew past 20 GB and was killed.
ACTIVATION_BYTES = 4 << 30
BYTES_PER_ELEMENT = 8
PATIENCE = 4
PATIENCE_STEPS = 50


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


class BlockFakeQuant(nn.Module):
    """Blocked asymmetric weights (MatMulNBits): the plan's scale and zero point per block of the
    reduction axis, fixed while training (the export re-plans them from the trained weights); STE."""

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__()
        self.block, self.axis = weight.block, weight.reduction_axis
        self.register_buffer("scale", torch.from_numpy(np.asarray(weight.scale, np.float32)))
        self.register_buffer("zero", torch.from_numpy(np.asarray(weight.zero_point, np.float32)))
        self.top = float(weight.levels)

    def _expand(self, t: Tensor, length: int) -> Tensor:
        return t.repeat_interleave(self.block, dim=self.axis).narrow(self.axis, 0, length)

    def forward(self, w: Tensor) -> Tensor:
        length = w.shape[self.axis]
        scale, zero = self._expand(self.scale, length), self._expand(self.zero, length)
        q = (torch.clamp(torch.round(w / scale) + zero, 0.0, self.top) - zero) * scale
        return w + (q - w).detach()


class DynamicFakeQuant(nn.Module):
    """An input quantized at run time (DynamicQuantizeLinear): uint8 over the batch's own
    [min(x, 0), max(x, 0)], round half to even; STE."""

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = torch.clamp(x.detach().min(), max=0.0), torch.clamp(x.detach().max(), min=0.0)
        scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi))
        zero = torch.clamp(torch.round(-lo / scale), 0.0, 255.0)
        q = (torch.clamp(torch.round(x / scale) + zero, 0.0, 255.0) - zero) * scale
        return x + (q - x).detach()


class HalfFakeQuant(nn.Module):
    """A tensor rounded to fp16 or bf16 and back (a 16-bit float layer's weights, input and output); STE."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.dtype = torch.float16 if kind == "fp16" else torch.bfloat16

    def forward(self, x: Tensor) -> Tensor:
        return x + (x.to(self.dtype).to(x.dtype) - x).detach()


class CodebookFakeQuant(nn.Module):
    """k-means weights: fixed assignments; each centroid learns from its members' gradients."""

    def __init__(self, codebook: np.ndarray, indices: np.ndarray) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.from_numpy(codebook.astype(np.float32)))
        self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))

    def forward(self, w: Tensor) -> Tensor:
        return self.codebook[self.indices]


def _weight_fake_quant(weight: QuantizedWeight | Codebook | HalfFloat, ndim: int) -> nn.Module:
    """The torch module applying one planned weight."""
    if isinstance(weight, Codebook):
        return CodebookFakeQuant(weight.codebook, weight.indices)
    if isinstance(weight, HalfFloat):
        return HalfFakeQuant(weight.kind)
    return BlockFakeQuant(weight) if weight.block is not None else WeightFakeQuant(weight, ndim)


@dataclass(frozen=True)
class Simulation:
    """The executor module plus the fake-quant modules, by layer name."""

    module: OnnxModule
    weights: dict[str, nn.Module]
    activations: dict[str, nn.Module]
    input_names: list[str]
    part: TrainedPart  # the graph the module runs, and what its outputs are distilled as


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
        facts = LAYER_OPS.get(node.op_type)
        if node.name in names and not facts.indexed:  # an embedding's input is indices: never quantized
            copy = f"{node.name}/input"
            nodes.append(helper.make_node("Identity", [node.input[facts.activation]], [copy],
                                          name=f"{node.name}/isolate"))
            node.input[facts.activation] = copy
            private[node.name] = copy
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, private


class _Logits(NamedTuple):
    """An output's logits in its own layout: ``nodes`` (its shape-only ops again, on the Softmax's
    input) end in ``tensor``, normalized along ``axis``."""

    tensor: str
    axis: int
    nodes: list[onnx.NodeProto]


def _logits(model: onnx.ModelProto) -> dict[int, _Logits]:
    """Each output a Softmax / LogSoftmax makes (through shape-only ops) -> its logits (the canonical
    form of an old-opset softmax is Reshape / Softmax / Reshape: ppocrv4_rec's [N, T, 6625] is
    normalized on [N * T, 6625]). Left out where the shape-only ops might not keep the normalized axis
    as the output's last: that output is distilled as values."""
    producer = {out: node for node in model.graph.node for out in node.output}
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.value_info, *model.graph.output)}
    found = {}
    for k, output in enumerate(model.graph.output):
        chain, node = [], producer.get(output.name)
        while node is not None and node.op_type in PASS_THROUGH:
            chain.insert(0, node)
            node = producer.get(node.input[0])
        if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if not chain:
            found[k] = _Logits(node.input[0], axis, [])
            continue
        shape, out = dims.get(node.input[0]), dims.get(output.name)
        if not shape or not out or axis not in (-1, len(shape) - 1) or shape[-1] is None or shape[-1] != out[-1]:
            continue
        nodes, name = [], node.input[0]
        for step in chain:
            copy = onnx.NodeProto()
            copy.CopyFrom(step)
            copy.name, copy.input[0] = f"{step.name}/logits", name
            del copy.output[1:]
            copy.output[0] = name = f"{step.output[0]}/logits"
            nodes.append(copy)
        found[k] = _Logits(name, -1, nodes)
    return found


class TrainedPart(NamedTuple):
    """The graph fine-tuning runs (``trained_part``) and the outputs of it that are logits, with the axis
    their Softmax normalizes."""

    model: onnx.ModelProto
    logits: dict[str, int]


def trained_part(model: onnx.ModelProto) -> TrainedPart:
    """The part of ``model`` fine-tuning runs and distils: the graph up to its outputs' logits where a
    Softmax makes them (a float32 softmax saturates, and its gradient with it; the KL of the logits'
    distributions is the same loss without that), and where an output is selected by
    a TopK / NonMaxSuppression (a YOLO26 export's sorted boxes), up to the tensors it is selected from
    (what the label-free signal compares): a selection has no gradient to follow, and haqc's executor
    need not run it. Outputs keep their order, each replaced by what stands in for it."""
    sources, logits = selection_sources(model), _logits(model)
    axes = {logits[k].tensor: logits[k].axis for k in logits if k not in sources}
    wanted: list[str] = []
    for k, output in enumerate(model.graph.output):
        stand_ins = sources.get(k) or ([logits[k].tensor] if k in logits else [output.name])
        wanted += [name for name in stand_ins if name not in wanted]
    if wanted == [o.name for o in model.graph.output]:
        return TrainedPart(model, axes)
    added = [node for k in sorted(logits) if k not in sources for node in logits[k].nodes]
    producer = {out: node for node in (*model.graph.node, *added) for out in node.output if out}
    needed, stack = set(), list(wanted)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
    part = without_initializers(model, ("node", "output"))
    part.graph.node.extend(node for node in (*model.graph.node, *added) if id(node) in needed)
    part.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
    return TrainedPart(part, axes)


def build_simulation(
    model: onnx.ModelProto,
    layers: list[Layer],
    plan: ExportPlan,
    *,
    trainable_clip: bool = False,
) -> Simulation:
    """The canonical float model as a torch module applying ``plan``'s numbers, layer by layer,
    whatever exporter planned them (integer QDQ, blocks, codebooks, dynamic inputs, 16-bit floats).
    It runs ``trained_part(model)``: layers after a selection keep their weights."""
    part = trained_part(model)
    model = part.model
    present = {node.name for node in model.graph.node}
    layers = [layer for layer in layers if layer.name in present]
    isolated, private = isolate_layer_inputs(model, layers)
    inits = {t.name: t for t in isolated.graph.initializer}
    weight_q: dict[str, nn.Module] = {}
    act_q: dict[str, nn.Module] = {}
    transforms: dict[str, nn.Module] = {}
    outputs: dict[str, nn.Module] = {}
    nodes = {n.name: n for n in isolated.graph.node}
    for layer in layers:
        quant = plan.layers.get(layer.name)
        if quant is None:
            continue
        node = nodes[layer.name]
        if quant.weight is not None:
            weight_q[layer.name] = _weight_fake_quant(quant.weight, len(inits[layer.weight].dims))
            transforms[layer.weight] = weight_q[layer.name]
        if isinstance(quant.activation, ActivationQuant):
            act_q[layer.name] = ActivationFakeQuant(quant.activation, trainable_clip)
        elif isinstance(quant.activation, DynamicQuant):
            act_q[layer.name] = DynamicFakeQuant()
        elif isinstance(quant.activation, HalfFloat) and layer.kind != "embedding":
            act_q[layer.name] = HalfFakeQuant(quant.activation.kind)
            for name in node.input[2:]:  # the bias is stored in the 16-bit format too
                if name in inits:
                    transforms[name] = HalfFakeQuant(quant.activation.kind)
        if quant.bias_scale is not None:  # both quantized: the export stores the bias in int32 steps
            transforms[node.input[2]] = BiasFakeQuant(weight_q[layer.name], act_q[layer.name])
        if quant.output is not None:
            outputs[node.output[0]] = HalfFakeQuant(quant.output.kind)
    # the 8-bit outputs of integer layers, as the export requantizes them
    produced = {out for node in model.graph.node for out in node.output}
    requant = {tensor: ActivationFakeQuant(quant) for tensor, quant in plan.requantized.items() if tensor in produced}
    module = OnnxModule(
        isolated,
        weight_transforms=transforms,
        activation_transforms={**requant, **outputs, **{private[n]: m for n, m in act_q.items()}},
    )
    inputs = [i.name for i in isolated.graph.input if i.name not in inits]
    return Simulation(module, weight_q, act_q, inputs, part)


def default_epochs(samples: int, batch_size: int = FinetuneConfig.batch_size) -> int:
    """The epochs a run may fine-tune for when none are given: whole epochs of ``samples``, at least
    DEFAULT_MIN_STEPS optimizer steps (one epoch of a large set already has them), at most
    MAX_EPOCHS (a small set reaches its best long before; early stopping and the time budget end
    it sooner)."""
    return max(1, min(MAX_EPOCHS, math.ceil(DEFAULT_MIN_STEPS / math.ceil(samples / batch_size))))


@dataclass(frozen=True)
class Tuned:
    """What fine-tuning trained: the float model to re-quantize and the quantizer settings the
    training ran under, which the export must reuse to compute what was trained."""

    model: onnx.ModelProto
    clips: dict[str, float]  # input clip by layer name (learned when trainable_clip)
    weight_scales: dict[str, np.ndarray]  # linear weight scale by weight name


@dataclass(frozen=True)
class OutputLoss:
    """How one output of the trained part is trained: ``kind`` "ce" (logits whose classes the labels
    are), "kl" (logits distilled along ``axis``) or "mse" (a map, boxes, a regression: squared error
    divided by the fp32 output's variance, so its scale does not matter)."""

    index: int
    kind: str
    axis: int = -1  # after the samples are moved to axis 0
    variance: float = 1.0
    samples: int = 0  # the output's axis that holds the samples (1 in a time-major RNN's [steps, batch, ...])


class Teacher(NamedTuple):
    """One output of the fp32 model on the training samples: ``values`` with the samples on axis 0,
    moved there from the output's ``axis``."""

    values: np.ndarray
    axis: int = 0


def finetune(
    model: onnx.ModelProto,
    layers: list[Layer],
    simulation: Simulation,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    config: FinetuneConfig,
    weight_quant: Callable[[Layer, np.ndarray, int, int], QuantizedWeight] | None = None,
) -> Tuned | None:
    """Train the weights under fake quantization; return the float model with the best step's
    weights written back, and the activation clips and weight scales they trained under; None where
    nothing can be trained (no output to train against, a fixed batch larger than the data, outputs
    already equal to fp32's: the log says which), so no caller reports an untrained model as tuned.

    ``labels`` (classes of the first output) train that output with cross-entropy; every other
    float output, and the first one without labels, is distilled from the fp32 ``model`` with the
    loss that fits it (``output_losses``), each weighted by its loss at the start so none
    dominates (the fp32 outputs are computed here, inside the time budget). A held-out part of
    ``inputs`` scores every few steps: training stops when it stops improving, or at the step or
    time budget, and the best scored state is kept. ``weight_quant`` is the quantize pass's
    rule for a layer's weights: between epochs the scales follow the trained weights as the
    pass would choose them.
    """
    begin = time.perf_counter()
    budget = config.max_seconds if config.max_seconds is not None else DEFAULT_SECONDS
    device = torch.device(config.device)
    module = simulation.module.to(device).train()
    torch.manual_seed(config.seed)
    teachers = _teacher_outputs(simulation.part.model, inputs)
    n = len(next(a for a in inputs.values() if a.ndim))
    losses = output_losses(simulation.part, teachers, n, labels is not None)
    if not losses:
        logger.warning("no output of the model can be trained against (none is float with an axis of samples); "
                       "fine-tuning skipped")
        return None
    fit, held = split_holdout(n, config.holdout, config.seed)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    targets = {o.index: torch.from_numpy(np.ascontiguousarray(teachers[o.index].values)) for o in losses
               if o.kind != "ce"}
    if labels is not None:
        targets[0] = torch.from_numpy(labels.astype(np.int64))
    # A model that fixes its batch runs in chunks of it and a step accumulates the chunks: a step of
    # one sample (hello_deepa_npm, cntk_mnist) follows each sample's noise, not the data's.
    fixed = _fixed_batch(model) or 0
    batch = training_batch(layers, config.batch_size)
    if fixed:  # whole chunks only: the fitted and held-out parts and the batch hold multiples of it
        batch = max(fixed, batch - batch % fixed)
        fit, held = fit[: len(fit) - len(fit) % fixed], held[: len(held) - len(held) % fixed]
        if not len(fit) or not len(held):
            logger.warning("the model fixes its batch at %d, more than the %d training samples allow; "
                           "fine-tuning skipped", fixed, n)
            return None

    def feed(idx: Tensor) -> dict[str, Tensor]:
        return {k: (v[idx] if v.ndim else v).to(device) for k, v in tensors.items()}

    def outputs(idx: Tensor) -> tuple[Tensor, ...]:
        chunks = [idx[j : j + fixed] for j in range(0, len(idx), fixed)] if fixed else [idx]
        outs = [module(**feed(chunk)) for chunk in chunks]
        outs = [out if isinstance(out, tuple) else (out,) for out in outs]
        return outs[0] if len(outs) == 1 else tuple(torch.cat(parts) for parts in zip(*outs))

    def batch_losses(idx: Tensor) -> Tensor:
        out = outputs(idx)
        return torch.stack([_output_loss(out[o.index].movedim(o.samples, 0), targets[o.index][idx].to(device), o,
                                         config.temperature) for o in losses])

    def held_out() -> Tensor:
        with torch.no_grad():
            parts = [batch_losses(held[i : i + batch]) * len(held[i : i + batch]) for i in range(0, len(held), batch)]
        return torch.stack(parts).sum(0) / len(held)

    start_losses = held_out()
    if float(start_losses.max()) == 0:  # no step can score better than the start, which is kept
        logger.info("the held-out outputs already equal fp32's (loss 0): fine-tuning has nothing to gain, skipped")
        return None
    # Each output's loss relative to its own start; an output that starts (nearly) exact gets a
    # floor, so its noise cannot outweigh the rest.
    weights = 1.0 / start_losses.clamp_min(max(1e-3 * float(start_losses.max()), 1e-12))
    steps_per_epoch = max(1, math.ceil(len(fit) / batch))
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    generator = torch.Generator().manual_seed(config.seed)
    initial = _snapshot(module)

    def train(lr: float, steps: int, progress: bool, seconds: float) -> tuple[float, dict, int]:
        """``steps`` of Adam at ``lr`` from the initial state, fewer where the next would end after
        ``seconds``; the best held-out score, its state and step."""
        deadline, slowest = time.perf_counter() + seconds, 0.0
        module.load_state_dict(initial)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        every = min(steps_per_epoch, EVAL_EVERY)
        best, best_state, best_step, stale, step = float(weights @ start_losses), initial, 0, 0, 0
        bar = progress_bar(steps, "fine-tune", unit="step") if progress else None

        def check() -> int:
            """Score the held-out part; keep the state if it is the best yet; the checks since the last best."""
            nonlocal best, best_state, best_step
            score = float(weights @ held_out())
            if score < best * (1 - 1e-4):
                best, best_state, best_step = score, _snapshot(module), step
                return 0
            return stale + 1

        while step < steps:
            order = fit[torch.randperm(len(fit), generator=generator)]
            for i in range(0, len(order), batch):
                began = time.perf_counter()
                if step >= steps or began + slowest > deadline:
                    break
                loss = weights @ batch_losses(order[i : i + batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # A step with a non-finite gradient (an overflow, a log of 0 in the graph) would turn
                # every weight into NaN: it is skipped, as mixed-precision trainers skip them.
                if math.isfinite(float(nn.utils.clip_grad_norm_(params, math.inf))):
                    optimizer.step()
                    schedule.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.4g}", best=f"{best:.4g}", refresh=False)
                epoch_end = step % steps_per_epoch == 0
                if step % every == 0 or epoch_end:
                    stale = check()
                    if stale >= PATIENCE and step - best_step >= PATIENCE_STEPS:
                        steps = step  # no better held-out score for a while: stop
                if epoch_end and step < steps and weight_quant is not None:
                    _refresh_scales(simulation, layers, weight_quant)  # between epochs, as the export will
                slowest = max(slowest, time.perf_counter() - began)  # a step and the checks after it
            else:
                continue
            break
        if step % every and step % steps_per_epoch:  # the steps since the last check (the budget ended them)
            check()
        if bar is not None:
            bar.close()
        return best, best_state, best_step

    lr = config.lr
    if lr is None:
        trial = max(1, min(RANGE_TEST_STEPS, total_steps // 10))
        share = (budget - (time.perf_counter() - begin)) * RANGE_TEST_SHARE / len(LR_CANDIDATES)
        results = {candidate: train(candidate, trial, False, share)[0] for candidate in LR_CANDIDATES}
        lr = min(results, key=lambda c: (results[c], c))
        logger.info("learning rate %g (held-out loss after at most %d steps, %.0f s: %s)", lr, trial, share,
                    ", ".join(f"{c:g} {v:.4g}" for c, v in results.items()))
    best, state, step = train(lr, total_steps, True, budget - (time.perf_counter() - begin))
    module.load_state_dict(state)
    logger.info("fine-tuned at lr %g: best held-out loss %.4g (from %.4g) at step %d, %.1f s", lr, best,
                float(weights @ start_losses), step, time.perf_counter() - begin)
    return _tuned(model, layers, simulation)


def output_losses(part: TrainedPart, teachers: list[Teacher | None], samples: int,
                  labelled: bool) -> list[OutputLoss]:
    """The loss of each output of ``part``: cross-entropy on the first when ``labelled`` (its
    classes); KL on its logits (class scores, as evaluation reads them, by the axis their Softmax
    normalizes); else the normalized squared error (logits without a Softmax are matched as values).
    Outputs that are not float or do not hold ``samples`` on some axis are left out."""
    logits = part.logits
    losses = []
    for k, (output, teacher) in enumerate(zip(part.model.graph.output, teachers)):
        if teacher is None:
            continue
        values, moved = teacher
        if values.dtype.kind != "f" or values.ndim == 0 or len(values) != samples:
            continue
        if k == 0 and labelled and not moved:
            losses.append(OutputLoss(k, "ce"))
        elif output.name in logits:
            axis = logits[output.name]
            if moved:  # where the class axis is once the samples come first
                axis %= values.ndim
                axis = 0 if axis == moved else axis + 1 if axis < moved else axis
            losses.append(OutputLoss(k, "kl", axis, samples=moved))
        else:
            variance = float(np.var(values, dtype=np.float64))
            losses.append(OutputLoss(k, "mse", variance=variance if variance > 0 else 1.0, samples=moved))
    return losses


def split_holdout(samples: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded (fit, held-out) sample indices: ``fraction`` of the samples, at least one batch of
    MIN_HOLDOUT, at most MAX_HOLDOUT; a set too small to spare them fits and scores on all of it."""
    held = min(MAX_HOLDOUT, max(MIN_HOLDOUT, round(fraction * samples)))
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed + 1))
    if fraction <= 0 or samples < 2 * held:
        return order, order
    return order[held:], order[:held]


def _output_loss(out: Tensor, target: Tensor, loss: OutputLoss, temperature: float) -> Tensor:
    if loss.kind == "ce":
        return nn.functional.cross_entropy(out, target)
    if loss.kind == "mse":
        return nn.functional.mse_loss(out, target) / loss.variance
    student, teacher = (nn.functional.log_softmax(x / temperature, dim=loss.axis) for x in (out, target))
    kl = (teacher.exp() * (teacher - student)).sum(loss.axis)
    return kl.mean() * temperature * temperature


def _teacher_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[Teacher | None]:
    """Every output of the fp32 model on ``inputs``, samples first (None where no axis holds them)."""
    dataset = Dataset(inputs)
    batches = run_batches(make_session(model, "the fp32 model"), dataset)
    teachers: list[Teacher | None] = []
    for k in range(len(batches[0])):
        parts = [b[k] for b in batches]
        axis = sample_axis(parts, len(dataset))
        teachers.append(None if axis is None else Teacher(samples_first(parts, len(dataset)), axis))
    return teachers


def training_batch(layers: list[Layer], requested: int) -> int:
    """``requested`` samples a step, fewer where their activations would exceed ACTIVATION_BYTES
    (sized from the layers' activation elements per sample, so the same on every machine)."""
    per_sample = BYTES_PER_ELEMENT * sum(layer.input_elems + layer.output_elems for layer in layers)
    affordable = max(1, ACTIVATION_BYTES // per_sample) if per_sample else requested
    if affordable < requested:
        logger.info("fine-tuning %d samples a step, not %d: their activations would take %.1f GB",
                    affordable, requested, requested * per_sample / 1e9)
    return min(requested, affordable)


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch a model with a fixed leading input dim must be fed (the executor's reshapes keep it)."""
    inits = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in inits and dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return dims[0].dim_value
    return None


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _tuned(model: onnx.ModelProto, layers: list[Layer], simulation: Simulation) -> Tuned:
    """The float model with the simulation's current weights, and the clips and scales they use."""
    module = simulation.module.eval()
    trained = module.initializer_arrays()
    for layer in layers:  # k-means layers: the trained weight is the codebook lookup
        fq = simulation.weights.get(layer.name)
        if isinstance(fq, CodebookFakeQuant):
            trained[layer.weight] = fq.codebook.detach().cpu()[fq.indices.cpu()].numpy()
    clips = {name: float(fq.clip.detach().cpu()) for name, fq in simulation.activations.items()
             if isinstance(fq, ActivationFakeQuant)}
    scales = {layer.weight: fq.scale.detach().cpu().numpy().reshape(-1) for layer in layers
              if isinstance(fq := simulation.weights.get(layer.name), WeightFakeQuant)}
    return Tuned(_write_back(model, trained), clips, scales)


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
