"""The pass interface every graph pass follows (after onnx-ir's passes).

A pass checks its preconditions, then maps a model to a new model (or to an
analysis result) without mutating its input, so passes compose and a failed
pass leaves the caller's model intact.
"""
from __future__ import annotations

import abc
import hashlib
from typing import Callable, Generic, Iterable, TypeVar

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from haqc.layers import Layer
from haqc.ops import FUSED_ACTIVATIONS

R = TypeVar("R")


class Pass(abc.ABC, Generic[R]):
    """One graph transformation or analysis; ``pass_(model)`` runs it."""

    def requires(self, model: onnx.ModelProto) -> None:
        """Raise InputError when ``model`` does not meet this pass's preconditions."""

    @abc.abstractmethod
    def call(self, model: onnx.ModelProto) -> R:
        """Run the pass; must not modify ``model``."""

    def __call__(self, model: onnx.ModelProto) -> R:
        self.requires(model)
        return self.call(model)


def _copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Copy ``src``'s set fields into ``dst`` except ``skip`` (sub-messages are copied, not shared)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def without_initializers(model: onnx.ModelProto, skip_graph_fields: tuple[str, ...] = ("initializer",)) -> onnx.ModelProto:
    """A copy of ``model`` without its graph's ``skip_graph_fields`` (by default, all weight data).

    Copying or serializing a large model holds every weight again; passes that
    only need the graph's structure (shape inference, the checker, a
    calibration session fed its weights separately) start from this and add
    back what they need.
    """
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph",))
    _copy_fields(model.graph, out.graph, skip=skip_graph_fields)
    return out


def initializers_as_inputs(
    model: onnx.ModelProto, moved: Callable[[onnx.TensorProto], bool]
) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``model`` whose initializers selected by ``moved`` are typed graph inputs
    instead (without data), and those initializers.

    The checker and ONNX Runtime take a serialized model, which holds every weight again;
    they get the graph this way and the large weights some other way (or not at all).
    """
    light = without_initializers(model)
    declared = {i.name for i in model.graph.input}
    taken = []
    for tensor in model.graph.initializer:
        if not moved(tensor):
            light.graph.initializer.append(tensor)
            continue
        taken.append(tensor)
        if tensor.name not in declared:
            light.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return light, taken


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (1 when it declares none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: passes return new models and never edit their input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def tensor_readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it (each once)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for tensor in dict.fromkeys(node.input):
            readers.setdefault(tensor, []).append(node)
    return readers


def tensor_producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it (graph inputs and initializers have none)."""
    return {out: node for node in model.graph.node for out in node.output}


def layer_outputs(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, str]:
    """Layer name -> the tensor an integer kernel for the layer writes: its output after a chain
    of Relu / Clip nodes that each have that one reader. Layers ending in a graph output are
    left out: model outputs stay float."""
    readers = tensor_readers(model)
    graph_outputs = {o.name for o in model.graph.output}
    nodes = {n.name: n for n in model.graph.node}
    found = {}
    for layer in layers:
        tensor = nodes[layer.name].output[0]
        while tensor not in graph_outputs:
            after = readers.get(tensor, [])
            if len(after) != 1 or after[0].op_type not in FUSED_ACTIVATIONS or after[0].input[0] != tensor:
                break
            tensor = after[0].output[0]
        if tensor not in graph_outputs:
            found[layer.name] = tensor
    return found


class GraphBuilder:
    """Fresh names, constants and nodes for a pass that adds to a graph.

    Names never collide with the graph's own (or each other): a taken base name
    gets a ``_1``, ``_2``... suffix. Constants and nodes collect here; the pass
    places them.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.taken = {t.name for t in (*g.initializer, *g.input, *g.output, *g.value_info)}
        self.taken |= {name for node in g.node for name in (*node.output, node.name)}
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray | onnx.TensorProto) -> str:
        """Add a constant (an array, or a ready tensor such as a packed INT4 one) under a fresh name."""
        name = self.fresh(base)
        if isinstance(value, onnx.TensorProto):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = name
        else:
            tensor = onnx.numpy_helper.from_array(np.asarray(value), name)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], base: str, *, name: str | None = None, **attrs) -> onnx.NodeProto:
        """A node with one fresh output; the node is named like it unless ``name`` gives another base."""
        out = self.fresh(base)
        return onnx.helper.make_node(op, inputs, [out], name=self.fresh(name) if name else out, **attrs)


def with_nodes(model: onnx.ModelProto, out: onnx.ModelProto, nodes: list[onnx.NodeProto],
               build: GraphBuilder) -> onnx.ModelProto:
    """``out`` (``without_initializers(model)``, rewritten) holding ``nodes`` and the initializers they
    read: ``model``'s that are still used, and the builder's new ones."""
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    out.graph.initializer.extend([t for t in model.graph.initializer if t.name in used] + build.initializers)
    return out


# Constants at least this large are stored once where several hold the same numbers (smaller ones
# are scales and zero points: nothing to save).
SHARED_CONSTANT_BYTES = 1024


def store_equal_constants_once(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (changed in place) with its large constants that hold the same type, shape and bytes
    stored once, every main-graph reader reading the first. A weight that several layers share (an
    unrolled LSTM's 20 steps, tied embeddings) is quantized per layer, to the same integers: written
    per layer, captcha-whisperer's CRNN came out 3.6x the size of its fp32 file. Constants that are
    graph inputs (a caller may override them) or that a subgraph reads keep their own."""
    graph = model.graph
    keep = {value.name for value in graph.input} | tensor_reads(_body_nodes(graph.node))
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    for tensor in graph.initializer:
        if (tensor.name in keep or len(tensor.raw_data) < SHARED_CONSTANT_BYTES
                or tensor.data_location == onnx.TensorProto.EXTERNAL):
            continue
        key = (tensor.data_type, tuple(tensor.dims), hashlib.blake2b(tensor.raw_data, digest_size=20).digest())
        if first.setdefault(key, tensor.name) != tensor.name:
            renamed[tensor.name] = first[key]
    if renamed:
        kept = [t for t in graph.initializer if t.name not in renamed]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for node in graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
    return model


def tensor_reads(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every tensor ``nodes`` read, in their subgraphs (If / Loop / Scan bodies) too."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        names |= tensor_reads(_body_nodes([node]))
    return names


def _body_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes of the subgraphs (If / Loop / Scan bodies) ``nodes`` hold, one level down."""
    return [inner for node in nodes for attr in node.attribute
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs) for inner in body.node]


NodeRewrite = Callable[["GraphBuilder", onnx.NodeProto, dict[str, onnx.TensorProto]], list[onnx.NodeProto]]


def replace_nodes(model: onnx.ModelProto, rewrites: dict[str, NodeRewrite]) -> onnx.ModelProto:
    """A copy of ``model`` with each node named in ``rewrites`` replaced by the nodes its rewrite
    returns; a rewrite gets a builder (fresh names, constants), the node and the initializers by name."""
    out = without_initializers(model)
    inits = {t.name: t for t in model.graph.initializer}
    build = GraphBuilder(model)
    nodes = [m for n in out.graph.node for m in (rewrites[n.name](build, n, inits) if n.name in rewrites else [n])]
    return with_nodes(model, out, nodes, build)


def quiet_session_options() -> ort.SessionOptions:
    """Options for the ONNX Runtime sessions passes run (calibration, shape probing): ORT's own
    warnings stay out of the user's terminal, and idle intra-op threads sleep instead of spinning
    (as haqc.evaluation's sessions do): a spinning thread cost 1.7x the CPU time of one thread on
    a busy 2-core machine (resnet50, 8 images) and wins nothing there."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def bytes_with_outputs(model: onnx.ModelProto, tensors: list[str]) -> bytes:
    """``model`` serialized with ``tensors`` added to its outputs, without copying the model.

    Protobuf merges a message field that occurs twice in the wire format (repeated fields
    inside it are appended), so the serialized model followed by a ModelProto whose graph holds
    only the extra outputs parses as the model with those outputs appended. A ``CopyFrom``
    would hold one more copy of every weight (0.6 GB on vgg19).
    """
    have = {o.name for o in model.graph.output}
    infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.input)}
    extra = onnx.ModelProto()
    for name in tensors:
        if name not in have:
            extra.graph.output.append(infos[name] if name in infos else onnx.ValueInfoProto(name=name))
    return model.SerializeToString() + (extra.SerializeToString() if len(extra.graph.output) else b"")
