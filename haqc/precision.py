"""Precision formats and options: how one tensor is stored and computed, and what one layer becomes.

A **format** is a small typed value: ``FloatFormat`` (fp16 / bf16; float32 is ``None``,
the tensor left as it is), ``IntFormat`` (b-bit integers, per channel or per block of k
weights, activations calibrated or dynamic) or ``KMeansFormat`` (a codebook of 2^b
centroids). An **option** is a weight format plus an input-activation format with a
readable name (``w4a8``, ``fp16``, ``w4-block32``, ``int8-dynamic``, ``kmeans3``,
``fp32``); a target declares each layer's options, cheapest first
(``Target.options``), and a policy maps every layer to one of them, any mix of
formats in one model. Which exporter writes an option is the exporters' registry's
business (``haqc.passes.exporters``).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, get_args

from haqc.errors import InputError

# The options a target offers the search: HAQ's integer grid, or k-means codebooks (the size setting).
Method = Literal["linear", "kmeans"]
METHODS: tuple[Method, ...] = get_args(Method)

# The widths an integer or k-means format may hold, and the grid HAQ searches (its 2..8 bits).
MIN_BITS, MAX_BITS = 1, 8
SEARCH_BITS: tuple[int, ...] = tuple(range(2, 9))

FloatKind = Literal["fp16", "bf16"]


def _bits(value: object, what: str) -> int:
    try:  # numpy integers are integers too; store them as int
        bits = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        bits = None
    if bits is None or isinstance(value, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise InputError(f"{what} {value!r} is out of range; use {MIN_BITS}..{MAX_BITS} or float")
    return bits


class TensorFormat:
    """Base of every format. A new weight format (docs/extending.md) subclasses it as a frozen
    dataclass with ``bits`` (stored bits per weight) and ``name`` (how options holding it are named),
    and registers a parser for that name (``register_option_parser``) beside its exporter."""

    bits: int
    name: str


@dataclass(frozen=True)
class FloatFormat(TensorFormat):
    """A 16-bit float tensor: IEEE half (``fp16``) or bfloat16 (``bf16``)."""

    kind: FloatKind = "fp16"

    def __post_init__(self) -> None:
        if self.kind not in get_args(FloatKind):
            raise InputError(f"unknown float format {self.kind!r}; use {', '.join(get_args(FloatKind))}")

    @property
    def bits(self) -> int:
        return 16


@dataclass(frozen=True)
class IntFormat(TensorFormat):
    """Symmetric b-bit integers (weights: per output channel, or one scale per ``block`` weights
    along the reduction axis); for activations, a calibrated range or (``dynamic``) one measured
    on each batch at run time."""

    bits: int
    block: int | None = None
    dynamic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _bits(self.bits, "bitwidth"))
        if self.block is not None and (isinstance(self.block, bool) or not isinstance(self.block, int)
                                       or self.block < 16 or self.block & (self.block - 1)):
            raise InputError(f"block size {self.block!r} must be a power of two, at least 16")


@dataclass(frozen=True)
class KMeansFormat(TensorFormat):
    """Weights as indices into a codebook of 2^bits centroids (HAQ's model-size setting)."""

    bits: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _bits(self.bits, "codebook width"))


Format = TensorFormat
_BUILTIN = (FloatFormat, IntFormat, KMeansFormat)


@dataclass(frozen=True)
class Option:
    """One precision option: the weight format and the input-activation format, None for float32.

    ``Option(4, 8)`` is shorthand for ``Option(IntFormat(4), IntFormat(8))``.
    """

    weight: Format | None = None
    activation: Format | None = None

    def __post_init__(self) -> None:
        for name in ("weight", "activation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, TensorFormat):
                object.__setattr__(self, name, IntFormat(value))
        w, a = self.weight, self.activation
        if isinstance(a, KMeansFormat):
            raise InputError("k-means codebooks hold weights; activations take an integer or float format")
        if isinstance(w, IntFormat) and w.dynamic:
            raise InputError("weights are quantized once, at export; `dynamic` is for activations")
        if isinstance(a, IntFormat) and a.block is not None:
            raise InputError("blocks are for weights; activations take one scale per tensor")
        if isinstance(w, IntFormat) and w.block is not None and a is not None:
            raise InputError("blocked weights run as weight-only kernels (MatMulNBits); leave activations float")
        if isinstance(w, KMeansFormat) and a is not None:
            raise InputError("k-means codebooks run as float weights; leave activations float")
        if isinstance(a, IntFormat) and a.dynamic and not isinstance(w, IntFormat):
            raise InputError("dynamic activations run integer kernels; give the weights an integer format")
        if (isinstance(w, FloatFormat) or isinstance(a, FloatFormat)) and w != a:
            raise InputError("a 16-bit float layer has its weights and input in the same format (fp16 or bf16)")

    @property
    def w_bits(self) -> int | None:
        """The weights' integer or codebook width; None for float weights."""
        return None if self.weight is None or isinstance(self.weight, FloatFormat) else self.weight.bits

    @property
    def a_bits(self) -> int | None:
        """The input's integer width; None for a float input."""
        return None if self.activation is None or isinstance(self.activation, FloatFormat) else self.activation.bits

    @property
    def name(self) -> str:
        """``fp32``, ``fp16``, ``w4a8``, ``wfa8``, ``w4-weight-only``, ``w4-block32``, ``int8-dynamic``,
        ``w4a8-dynamic``, ``kmeans3``."""
        w, a = self.weight, self.activation
        if w is not None and not isinstance(w, _BUILTIN):  # a registered format names itself
            return w.name if a is None else f"{w.name}a{a.bits}"
        if isinstance(w, FloatFormat):
            return w.kind
        if isinstance(w, KMeansFormat):
            return f"kmeans{w.bits}"
        if isinstance(a, IntFormat) and a.dynamic:
            return "int8-dynamic" if w == IntFormat(8) and a.bits == 8 else f"w{w.bits}a{a.bits}-dynamic"
        if w is None and a is None:
            return "fp32"
        if a is None:
            return f"w{w.bits}-block{w.block}" if w.block else f"w{w.bits}-weight-only"
        return f"w{'f' if w is None else w.bits}a{a.bits}"

    @property
    def quantized(self) -> bool:
        return self.weight is not None or self.activation is not None

    @property
    def integer(self) -> bool:
        """Static integer weights and input: the layer can run as a calibrated integer kernel."""
        return isinstance(self.weight, IntFormat) and isinstance(self.activation, IntFormat) \
            and not self.activation.dynamic and self.weight.block is None

    @property
    def calibrated_input(self) -> bool:
        """The input is quantized with a range calibrated on data (static integers)."""
        return isinstance(self.activation, IntFormat) and not self.activation.dynamic

    @property
    def storage_bits(self) -> float:
        """Bits per stored weight (the indices of a codebook; 32 for float32)."""
        return 32.0 if self.weight is None else float(self.weight.bits)

    def __str__(self) -> str:
        return self.name


FP32 = Option()
FP16 = Option(FloatFormat("fp16"), FloatFormat("fp16"))

_WA = re.compile(r"^w(\d+|f(?:loat)?)a(\d+|f(?:loat)?)(-dynamic)?$")


_PARSERS: list[Callable[[str], "Option | None"]] = []


def register_option_parser(parse: Callable[[str], "Option | None"]) -> None:
    """Let ``parse_option`` read the names of a new format's options (``parse`` returns None for
    names it does not know)."""
    if parse not in _PARSERS:
        _PARSERS.append(parse)


def parse_option(text: str) -> Option:
    """Parse an option name (``Option.name``'s forms, ``w8af`` / ``wfloata8`` for float, and the
    names registered formats read)."""
    clean = text.strip().lower()
    for parse in _PARSERS:
        if (option := parse(clean)) is not None:
            return option
    named = {"fp32": FP32, "fp16": FP16, "bf16": Option(FloatFormat("bf16"), FloatFormat("bf16")),
             "int8-dynamic": Option(IntFormat(8), IntFormat(8, dynamic=True))}
    if clean in named:
        return named[clean]
    if (match := re.fullmatch(r"kmeans(\d+)", clean)) is not None:
        return Option(KMeansFormat(int(match.group(1))))
    if (match := re.fullmatch(r"w(\d+)-weight-only", clean)) is not None:
        return Option(int(match.group(1)), None)
    if (match := re.fullmatch(r"w(\d+)-block(\d+)", clean)) is not None:
        return Option(IntFormat(int(match.group(1)), block=int(match.group(2))))
    match = _WA.match(clean)
    if not match:
        raise InputError(f"malformed precision {text!r}; write wNaM, e.g. w4a8 (N, M in {MIN_BITS}..{MAX_BITS}, "
                         "or f for float), wN-weight-only, wN-blockK, wNaM-dynamic, int8-dynamic, kmeansN, "
                         "fp16, bf16 or fp32")
    w, a = (None if g.startswith("f") else int(g) for g in match.groups()[:2])
    if match.group(3):
        return Option(w, None if a is None else IntFormat(a, dynamic=True))
    return Option(w, a)


def grid(w_bits: Sequence[int], a_bits: Sequence[int]) -> tuple[Option, ...]:
    """Every (w, a) pair, cheapest first (weights major): HAQ's two-step choice space."""
    return tuple(Option(w, a) for w in sorted(set(w_bits)) for a in sorted(set(a_bits)))


def weight_only(w_bits: Sequence[int]) -> tuple[Option, ...]:
    """Weight-only integer options (activations float), narrowest first."""
    return tuple(Option(w, None) for w in sorted(set(w_bits)))


def codebooks(w_bits: Sequence[int]) -> tuple[Option, ...]:
    """k-means codebook options (activations float), narrowest first: the size setting's choice space."""
    return tuple(Option(KMeansFormat(w)) for w in sorted(set(w_bits)))


def reference_option(method: Method, kind: str = "conv") -> Option:
    """The all-8-bit option relative budgets (``0.5x``) are fractions of, for a layer of ``kind``
    (an embedding's input is indices: its reference quantizes the table alone)."""
    if method == "kmeans":
        return Option(KMeansFormat(8))
    return Option(8, None) if kind == "embedding" else Option(8, 8)
