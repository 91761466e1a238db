"""Precision options: the ways one layer may run, and the quantization methods that emit them.

An ``Option`` says what the quantize passes emit for a layer: weights as
``w_bits``-bit integers (or a 2^w_bits-entry k-means codebook under the
kmeans method), its input activation through a ``a_bits``-bit
Quantize/Dequantize pair; None leaves that tensor in float. A target
declares each layer's options, cheapest first (``Target.options``); a
policy maps every layer to one of them.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

from haqc.errors import InputError

Method = Literal["linear", "kmeans"]  # linear: integer QDQ; kmeans: weight codebooks (the size setting)
METHODS: tuple[Method, ...] = get_args(Method)

# The widths an Option may hold, and the grid HAQ searches (its 2..8 bits on BISMO and Bit Fusion).
MIN_BITS, MAX_BITS = 1, 8
SEARCH_BITS: tuple[int, ...] = tuple(range(2, 9))

_OPTION_RE = re.compile(r"^w(\d+|f(?:loat)?)a(\d+|f(?:loat)?)$")


@dataclass(frozen=True)
class Option:
    """One precision option: weight and input-activation widths, None for float."""

    w_bits: int | None = None
    a_bits: int | None = None

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits"):
            bits = getattr(self, name)
            if bits is None:
                continue
            try:  # numpy integers are integers too; store them as int
                value = operator.index(bits)
            except TypeError:
                value = None
            if value is None or isinstance(bits, bool) or not MIN_BITS <= value <= MAX_BITS:
                raise InputError(f"bitwidth {bits!r} is out of range; use {MIN_BITS}..{MAX_BITS} or float")
            object.__setattr__(self, name, value)

    @property
    def name(self) -> str:
        """``w4a8``, ``w4-weight-only``, ``wfa8`` or ``fp32``."""
        if self.w_bits is None and self.a_bits is None:
            return "fp32"
        if self.a_bits is None:
            return f"w{self.w_bits}-weight-only"
        return f"w{'f' if self.w_bits is None else self.w_bits}a{self.a_bits}"

    @property
    def quantized(self) -> bool:
        return self.w_bits is not None or self.a_bits is not None

    @property
    def integer(self) -> bool:
        """Weights and input both quantized: the layer can run as an integer kernel."""
        return self.w_bits is not None and self.a_bits is not None

    def __str__(self) -> str:
        return self.name


FP32 = Option()


def parse_option(text: str) -> Option:
    """Parse an option name: ``w4a8``, ``w8af`` / ``wfloata8`` (float), ``w4-weight-only``, ``fp32``."""
    clean = text.strip().lower()
    if clean == "fp32":
        return FP32
    if (weight_only := re.fullmatch(r"w(\d+)-weight-only", clean)) is not None:
        return Option(int(weight_only.group(1)), None)
    match = _OPTION_RE.match(clean)
    if not match:
        raise InputError(f"malformed precision {text!r}; write wNaM, e.g. w4a8 (N, M in {MIN_BITS}..{MAX_BITS}, "
                         "or f for float), wN-weight-only or fp32")
    w, a = (None if g.startswith("f") else int(g) for g in match.groups())
    return Option(w, a)


def grid(w_bits: Sequence[int], a_bits: Sequence[int]) -> tuple[Option, ...]:
    """Every (w, a) pair, cheapest first (weights major): HAQ's two-step choice space."""
    return tuple(Option(w, a) for w in sorted(set(w_bits)) for a in sorted(set(a_bits)))


def weight_only(w_bits: Sequence[int]) -> tuple[Option, ...]:
    """Weight-only options (activations float), narrowest first: the k-means setting's choice space."""
    return tuple(Option(w, None) for w in sorted(set(w_bits)))


def reference_option(method: Method) -> Option:
    """The all-8-bit option relative budgets (``0.5x``) are fractions of."""
    return Option(8, 8 if method == "linear" else None)
