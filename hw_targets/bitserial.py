"""BitSerialOverlay: a BISMO-style bit-serial matrix-multiply overlay (the `edge` and `cloud` family).

BISMO (Umuroglu et al., FPL 2018) is a Dm x Dk x Dn array of binary
dot-product units: each cycle every unit ANDs and popcounts a Dk-bit slice of
one LHS row and one RHS column. A w-bit x a-bit product is w * a binary
products, so compute scales with w x a. Operands live in DRAM as bit-planes
padded to the array (BISMO runtime: LHS rows to Dm and K to Dk, RHS columns to
Dn and K to Dk, results int32 padded to Dn x Dm); the fetch, execute and result
stages run concurrently, so latency is the roofline max(compute, memory).
Equations and sources: docs/cost_models.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from haqc.precision import SEARCH_BITS
from haqc.hw_targets.base import (
    LayerArrays,
    ModelParams,
    ParametricTarget,
    align_to,
    ceil_div,
    quantized_weight_bytes,
    roofline,
)

from haqc.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BitSerialParams(ModelParams):
    """One overlay instance; field names are the keys of a ``model = "bitserial"`` TOML file."""

    dm: int  # LHS rows (weight output channels) per cycle
    dk: int  # bits of each binary dot product per cycle
    dn: int  # RHS columns (output pixels x batch) per cycle
    clock_hz: float
    dram_bytes_per_s: float
    batch: int
    w_bits: tuple[int, ...] = SEARCH_BITS
    a_bits: tuple[int, ...] = SEARCH_BITS
    result_bits: int = 32  # BISMO writes int32 accumulators back to DRAM
    # Optional energy model: both or neither (BISMO publishes no per-operation energy).
    binary_op_energy_j: float | None = None  # one 1-bit AND + popcount lane, one cycle
    dram_energy_j_per_byte: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.binary_op_energy_j is None) != (self.dram_energy_j_per_byte is None):
            raise InputError("give both binary_op_energy_j and dram_energy_j_per_byte for an energy model, or neither")


class BitSerialOverlay(ParametricTarget):
    """Latency (and optionally energy) of layers on a bit-serial overlay; each group is its own GEMM."""

    family = "bitserial"
    Params = BitSerialParams
    params: BitSerialParams

    def breakdown_arrays(self, g: LayerArrays, w: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray | None]:
        p = self.params
        n = g.n * p.batch  # RHS columns: every output vector of every sample in the batch
        k_pad = align_to(g.k, p.dk)
        tiles = g.groups * ceil_div(g.m, p.dm) * ceil_div(g.k, p.dk) * ceil_div(n, p.dn)
        cycles = tiles * w * a
        lhs_bytes = g.groups * w * align_to(g.m, p.dm) * k_pad / 8.0
        rhs_bytes = g.groups * a * align_to(n, p.dn) * k_pad / 8.0
        result_bytes = g.groups * (p.result_bits / 8.0) * align_to(n, p.dn) * align_to(g.m, p.dm)
        dram_bytes = lhs_bytes + rhs_bytes + result_bytes
        energy = None
        if p.binary_op_energy_j is not None:
            energy = cycles * (p.dm * p.dk * p.dn) * p.binary_op_energy_j + dram_bytes * p.dram_energy_j_per_byte
        timing = roofline(cycles, dram_bytes, p.clock_hz, p.dram_bytes_per_s)
        return {"latency_s": timing.pop("latency_s"), "energy_j": energy,
                "weight_bytes": quantized_weight_bytes(g.params, g.c_out, w), **timing}
