"""K-means weight quantization (HAQ's model-size setting): packed low-bit indices + a codebook.

Each quantized layer's weights become indices into a codebook of at most 2^b
centroids. The codebook is fitted with optimal 1-D k-means on a histogram
(dynamic programming, as Ckmeans.1d.dp) refined by Lloyd on the sorted weights;
docs/kmeans.md has the measurements that chose it over k-means++.

On disk the indices are stored as bit planes (b bits per weight, exactly), one
uint8 tensor per bit-width for all layers of that width, and expanded at run
time by standard ops (BitShift, BitwiseAnd, Cast, Mul, ReduceSum, Split,
Reshape, Gather). ONNX Runtime folds that subgraph into constants when it
creates a session, so inference runs at fp32 speed.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from haqc.errors import InputError
from haqc.layers import Layer
from haqc.passes.base import GraphBuilder, Pass, opset_version, without_initializers
from haqc.policy import Policy
from haqc.passes.exporters import ExportContext, Exporter, register
from haqc.passes.plan import ExportPlan, LayerQuant
from haqc.precision import MAX_BITS, MIN_BITS, KMeansFormat, Option
from haqc.progress import progress_bar

logger = logging.getLogger(__name__)

# Codebooks are fitted on at most this many weights (a seeded sample), then every
# weight is assigned: on a 103M-weight layer that costs < 0.2% SSE at 8 bits (docs/kmeans.md).
FIT_SAMPLE = 1 << 22
# The optimal DP runs on this many histogram bins when a layer has more distinct values.
HIST_BINS = 2048
MAX_LLOYD_ITERS = 1000
MIN_OPSET = 18  # BitwiseAnd


def fit_codebook(weights: np.ndarray, bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit a codebook of at most 2^bits float32 centroids (sorted, distinct) and assign each weight.

    Returns (codebook, indices): indices has the weights' shape (int64) and
    holds each weight's nearest centroid, i.e. ``assign_indices(weights, codebook)``.
    Above FIT_SAMPLE weights the centroids are fitted on a seeded sample.
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    flat = np.asarray(weights).ravel()
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ValueError("k-means needs a non-empty array of finite weights")
    sample = flat if flat.size <= FIT_SAMPLE else flat[np.random.default_rng(seed).integers(0, flat.size, FIT_SAMPLE)]
    xs = np.sort(sample.astype(np.float64))
    points, counts = np.unique(xs, return_counts=True)
    if len(points) <= 1 << bits:
        centroids = points  # every distinct value gets its own centroid: no error
    else:
        if len(points) > HIST_BINS:
            points, counts = _histogram(xs, HIST_BINS)
        centroids = _lloyd_sorted(xs, _optimal_weighted(points, counts.astype(np.float64), 1 << bits))
    codebook = np.unique(centroids.astype(np.float32))
    return codebook, assign_indices(weights, codebook)


def assign_indices(weights: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of each weight's nearest centroid (ties to the lower one); codebook sorted ascending."""
    codebook = np.asarray(codebook, dtype=np.float64)
    midpoints = (codebook[:-1] + codebook[1:]) / 2
    return np.searchsorted(midpoints, np.asarray(weights)).astype(np.int64)


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Bit planes of the flattened indices: uint8 [bits, ceil(n/8)], plane k holds bit k, MSB-first bytes."""
    flat = np.asarray(indices).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise ValueError(f"indices must lie in 0..{(1 << bits) - 1} for {bits}-bit packing")
    flat = flat.astype(np.uint8)
    return np.stack([np.packbits((flat >> k) & 1) for k in range(bits)])


def unpack_indices(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of pack_indices: int64 indices of ``shape`` (the bit width is ``packed.shape[0]``)."""
    count = math.prod(shape)
    out = np.zeros(count, dtype=np.int64)
    for k, plane in enumerate(packed):
        out |= np.unpackbits(plane, count=count).astype(np.int64) << k
    return out.reshape(shape)


class KMeansQuantize(Pass[onnx.ModelProto]):
    """Replace each layer whose option is a k-means codebook by packed indices + codebook; the
    rest stay as they are (other exporters write them).
    ``cache`` (the caller's, shared across policies) holds codebooks and packed
    indices per (weight, bits, weight contents), so the search fits each
    (layer, bits) once and an episode only concatenates bytes.
    """

    def __init__(self, layers: list[Layer], policy: Policy, seed: int = 0,
                 cache: dict[tuple[str, int, bytes], Codebook] | None = None) -> None:
        self.layers = layers
        self.policy = policy
        self.seed = seed
        self.cache = {} if cache is None else cache

    def requires(self, model: onnx.ModelProto) -> None:
        opset = opset_version(model)
        if opset < MIN_OPSET:
            raise InputError(
                f"k-means export needs opset {MIN_OPSET} or newer, the model has {opset}; canonicalize it first"
            )
        names = {layer.name for layer in self.layers}
        unknown = [name for name in self.policy if name not in names]
        if unknown:
            raise InputError(f"the policy names unknown layer {unknown[0]!r}; was it made for another model?")
        inits = {t.name: t for t in model.graph.initializer}
        for weight, (bits, layer) in self._weight_bits().items():
            if weight not in inits:
                raise InputError(f"layer {layer!r} has no weight initializer {weight!r}; canonicalize the model first")
            if inits[weight].data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                raise InputError(f"layer {layer!r} has non-float weights; k-means quantizes float weights only")

    def plan(self, model: onnx.ModelProto) -> ExportPlan:
        """Each quantized layer's codebook and packed indices (what the export stores; fine-tuning trains
        the centroids with these assignments)."""
        self.requires(model)
        inits = {t.name: t for t in model.graph.initializer}
        chosen = self._weight_bits()
        quantized = [layer for layer in self.layers if layer.weight in chosen]
        # A large model's codebooks take seconds to fit; cached ones pass too fast to draw a bar.
        with progress_bar(len(quantized), "k-means codebooks", unit="layer", iterable=quantized) as fitting:
            return ExportPlan({layer.name: LayerQuant(self._packed(layer.weight, numpy_helper.to_array(inits[layer.weight]),
                                                                   *chosen[layer.weight]))
                               for layer in fitting})

    def call(self, model: onnx.ModelProto) -> onnx.ModelProto:
        groups: dict[int, list[Codebook]] = {}
        for packed in {q.weight.weight: q.weight for q in self.plan(model).layers.values()}.values():
            groups.setdefault(packed.bits, []).append(packed)
        out = without_initializers(model)  # a full copy would hold the replaced float weights once more
        quantized = {packed.weight for group in groups.values() for packed in group}
        out.graph.initializer.extend(t for t in model.graph.initializer if t.name not in quantized)
        if groups:
            _Expander(out).emit(groups)
        logger.info("k-means: %d weight tensors quantized (bits %s)", len(quantized), sorted(groups))
        return out

    def _weight_bits(self) -> dict[str, tuple[int, str]]:
        """Weight initializer -> (bits, first layer name); a weight shared by layers must get one width."""
        chosen: dict[str, tuple[int, str]] = {}
        for layer in self.layers:
            entry = self.policy.get(layer.name)
            if entry is None or not claims(entry):
                continue
            bits, first = chosen.setdefault(layer.weight, (entry.w_bits, layer.name))
            if bits != entry.w_bits:
                raise InputError(
                    f"layers {first!r} and {layer.name!r} share weight {layer.weight!r} but the policy gives "
                    f"them {bits} and {entry.w_bits} bits; give them the same width"
                )
        return chosen

    def _packed(self, weight: str, values: np.ndarray, bits: int, layer: str) -> Codebook:
        key = (weight, bits, hashlib.blake2b(np.ascontiguousarray(values), digest_size=16).digest())
        if key not in self.cache:
            if not np.all(np.isfinite(values)):
                raise InputError(f"layer {layer!r} has NaN or infinite weights; k-means needs finite weights")
            codebook, indices = fit_codebook(values, bits, self.seed)
            self.cache[key] = Codebook(weight, values.shape, bits, codebook.astype(values.dtype),
                                       pack_indices(indices, bits))
        return self.cache[key]


@dataclass(frozen=True)
class Codebook:
    """One weight tensor, quantized: its codebook and its index bit planes [bits, ceil(n/8)]."""

    weight: str
    shape: tuple[int, ...]
    bits: int
    codebook: np.ndarray
    planes: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        """Each weight's centroid (int64, the weight's shape)."""
        return unpack_indices(self.planes, self.shape)


class _Expander:
    """Writes the packed tensors and the run-time expansion subgraph into a model (in place).

    Per bit-width b, the layers' planes side by side: codes uint8 [b, m, 1] ->
    BitShift right by 7..0 -> BitwiseAnd 1 -> Cast int32 -> Mul 2^k per plane ->
    ReduceSum over planes -> [m, 8] -> Reshape [8m] -> Split into layers (each
    padded to a whole byte); per layer: Reshape to the weight's shape ->
    Gather(codebook) -> the weight's original name. Names are short because on
    small models the graph's bytes rival the packed weights.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.build = GraphBuilder(model)
        self.nodes: list[onnx.NodeProto] = []

    def emit(self, groups: dict[int, list[Codebook]]) -> None:
        build = self.build
        build.taken |= {member.weight for members in groups.values() for member in members}
        shifts = build.const("kq.shifts", np.arange(7, -1, -1, dtype=np.uint8))
        one = build.const("kq.one", np.array(1, dtype=np.uint8))
        axis0 = build.const("kq.axis0", np.array([0], dtype=np.int64))
        flat = build.const("kq.flat", np.array([-1], dtype=np.int64))
        shapes: dict[tuple[int, ...], str] = {}
        for bits, members in sorted(groups.items()):
            p = build.fresh(f"kq{bits}")
            planes = np.concatenate([member.planes for member in members], axis=1)
            codes = build.const(f"{p}.codes", planes.reshape(bits, -1, 1))
            powers = build.const(f"{p}.pow", (1 << np.arange(bits, dtype=np.int32)).reshape(bits, 1, 1))
            x = self._node("BitShift", [codes, shifts], f"{p}.shr", direction="RIGHT")
            x = self._node("BitwiseAnd", [x, one], f"{p}.bit")
            x = self._node("Cast", [x], f"{p}.int", to=TensorProto.INT32)
            x = self._node("Mul", [x, powers], f"{p}.val")
            x = self._node("ReduceSum", [x, axis0], f"{p}.sum", keepdims=0)
            x = self._node("Reshape", [x, flat], f"{p}.idx")
            sizes: list[int] = []
            parts: list[str] = []
            indices: list[str] = []  # the Split output holding each layer's indices
            for j, member in enumerate(members):
                count = math.prod(member.shape)
                indices.append(build.fresh(f"{p}.i{j}"))
                sizes.append(count)
                parts.append(indices[-1])
                if count % 8:  # the layer's planes end mid-byte: its padding is an unused output
                    sizes.append(8 - count % 8)
                    parts.append(build.fresh(f"{p}.pad{j}"))
            split = build.const(f"{p}.sizes", np.array(sizes, dtype=np.int64))
            self.nodes.append(helper.make_node("Split", [x, split], parts, name=build.fresh(f"{p}.split")))
            for j, member in enumerate(members):
                if member.shape not in shapes:
                    shapes[member.shape] = build.const(f"kq.shape{len(shapes)}", np.array(member.shape, dtype=np.int64))
                book = build.const(f"{p}.cb{j}", member.codebook)
                r = self._node("Reshape", [indices[j], shapes[member.shape]], f"{p}.r{j}")
                self.nodes.append(helper.make_node("Gather", [book, r], [member.weight], name=build.fresh(f"{p}.g{j}")))
        self.graph.initializer.extend(build.initializers)
        nodes = self.nodes + list(self.graph.node)  # the expansion reads only constants: it goes first
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def _node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        node = self.build.node(op, inputs, base, **attrs)
        self.nodes.append(node)
        return node.output[0]


def _histogram(xs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty equal-width bins of sorted ``xs`` as (member mean, count) weighted points."""
    edges = np.searchsorted(xs, np.linspace(xs[0], xs[-1], bins + 1)[1:-1])
    bounds = np.concatenate([[0], edges, [len(xs)]])
    sums = np.concatenate([[0.0], np.cumsum(xs)])[bounds]
    counts = np.diff(bounds)
    keep = counts > 0
    return np.diff(sums)[keep] / counts[keep], counts[keep]


def _optimal_weighted(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Optimal 1-D k-means of weighted sorted distinct points (Ckmeans.1d.dp's recurrence).

    D[j][i] = min over a of D[j-1][a] + SSE(points a..i-1); the best split is
    monotone in i, so each row is solved by divide and conquer, one vectorized
    step per recursion level: O(k m log m) for m points.
    """
    m = len(x)
    k = min(k, m)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    c1 = np.concatenate([[0.0], np.cumsum(w * x)])
    c2 = np.concatenate([[0.0], np.cumsum(w * x * x)])

    def sse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        s = c1[b] - c1[a]
        return np.maximum(c2[b] - c2[a] - s * s / (cw[b] - cw[a]), 0.0)

    cost = np.full(m + 1, np.inf)
    cost[1:] = sse(np.zeros(m, dtype=np.int64), np.arange(1, m + 1))
    split = np.zeros((k, m + 1), dtype=np.int64)  # split[j][i]: start of the last cluster
    for j in range(1, k):
        row = np.full(m + 1, np.inf)
        # Pending intervals: solve i in [lo, hi] knowing the best split lies in [a_lo, a_hi].
        lo, hi, a_lo, a_hi = (np.array([v]) for v in (j + 1, m, j, m - 1))
        while len(lo):
            mid = (lo + hi) // 2
            length = np.minimum(a_hi, mid - 1) - a_lo + 1
            starts = np.cumsum(length) - length
            seg = np.repeat(np.arange(len(length)), length)
            a = np.arange(length.sum()) - starts[seg] + a_lo[seg]
            value = cost[a] + sse(a, mid[seg])
            best_value = np.minimum.reduceat(value, starts)
            hits = np.flatnonzero(value <= best_value[seg])
            best = a[hits[np.searchsorted(seg[hits], np.arange(len(length)))]]  # first minimum per interval
            row[mid] = best_value
            split[j, mid] = best
            left, right = lo <= mid - 1, mid + 1 <= hi
            lo, hi, a_lo, a_hi = (
                np.concatenate([lo[left], mid[right] + 1]),
                np.concatenate([mid[left] - 1, hi[right]]),
                np.concatenate([a_lo[left], best[right]]),
                np.concatenate([best[left], a_hi[right]]),
            )
        cost = row
    centroids = np.empty(k)
    end = m
    for j in range(k - 1, -1, -1):
        start = split[j, end]
        centroids[j] = (c1[end] - c1[start]) / (cw[end] - cw[start])
        end = start
    return centroids


def _lloyd_sorted(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lloyd's iterations on sorted data: clusters are intervals, so each step is O(k log n) with prefix sums."""
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    bounds = None
    for _ in range(MAX_LLOYD_ITERS):
        new = np.concatenate([[0], np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2), [len(xs)]])
        if bounds is not None and np.array_equal(new, bounds):
            break
        bounds = new
        sizes = np.diff(bounds)
        keep = sizes > 0
        centroids = (np.diff(prefix[bounds]) / np.maximum(sizes, 1))[keep]
    return centroids


def claims(option: Option) -> bool:
    """k-means codebook weights (activations float)."""
    return isinstance(option.weight, KMeansFormat)


def _build(context: ExportContext, policy: Policy) -> KMeansQuantize:
    return KMeansQuantize(context.layers, policy, seed=context.seed, cache=context.cache("kmeans"))


register(Exporter("kmeans", claims, _build))
