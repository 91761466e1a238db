"""BitFusionArray: a BitFusion-style systolic array of fusible 2-bit BitBricks (the `bitfusion` family).

Bit Fusion (Sharma et al., ISCA 2018): each fusion unit holds 16 BitBricks
that fuse into processing engines matching the operand widths, giving
16 / (ceil(w/2) * ceil(a/2)) multiply-adds per unit per cycle; 8x8 runs 16x
slower than 2x2. Units form a rows x cols systolic array (reduction along
rows, output channels along columns). Energy follows the authors' simulator:
every active array cycle costs the synthesized core energy, plus SRAM energy
per byte of operands read (output stationary: a weight and an input per
multiply-add, one 32-bit read+write per output) and DRAM energy per byte. Latency is the
roofline max(compute, memory), as in their simulator's double-buffered model.
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BitFusionParams(ModelParams):
    """One array instance; field names are the keys of a ``model = "bitfusion"`` TOML file."""

    rows: int  # fusion units along the reduction dimension
    cols: int  # fusion units along output channels
    clock_hz: float
    dram_bytes_per_s: float
    batch: int
    unit_cycle_energy_j: float  # dynamic energy of one fusion unit for one cycle
    wbuf_energy_j_per_byte: float
    ibuf_energy_j_per_byte: float
    obuf_energy_j_per_byte: float  # one read plus one write
    dram_energy_j_per_byte: float
    w_bits: tuple[int, ...] = SEARCH_BITS
    a_bits: tuple[int, ...] = SEARCH_BITS
    bricks_per_unit: int = 16
    brick_bits: int = 2
    output_bits: int = 32  # partial sums / outputs leave the array at accumulator width


class BitFusionArray(ParametricTarget):
    """Latency and energy of layers on a bit-fusion array; each group is its own GEMM."""

    family = "bitfusion"
    Params = BitFusionParams
    params: BitFusionParams

    def breakdown_arrays(self, g: LayerArrays, w: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray | None]:
        p = self.params
        n = g.n * p.batch
        w_bricks = ceil_div(w, p.brick_bits)
        a_bricks = ceil_div(a, p.brick_bits)
        bricks = w_bricks * a_bricks  # BitBricks one fused multiply-add occupies
        # Reduction steps: each step feeds rows * bricks_per_unit / bricks products into every column.
        k_steps = ceil_div(g.k * bricks, p.rows * p.bricks_per_unit)
        cycles = g.groups * ceil_div(g.m, p.cols) * k_steps * n
        macs = g.groups * g.m * g.k * n
        # Operands are laid out in whole bricks.
        w_stored = w_bricks * p.brick_bits
        a_stored = a_bricks * p.brick_bits
        out_bytes = g.groups * align_to(g.m, p.cols) * n * p.output_bits / 8.0
        dram_bytes = (
            g.params * w_stored / 8.0
            + g.input_elems * p.batch * a_stored / 8.0
            + g.output_elems * p.batch * p.output_bits / 8.0
        )
        core_j = cycles * (p.rows * p.cols) * p.unit_cycle_energy_j
        sram_j = (
            macs * w_stored / 8.0 * p.wbuf_energy_j_per_byte
            + macs * a_stored / 8.0 * p.ibuf_energy_j_per_byte
            + out_bytes * p.obuf_energy_j_per_byte
        )
        dram_j = dram_bytes * p.dram_energy_j_per_byte
        timing = roofline(cycles, dram_bytes, p.clock_hz, p.dram_bytes_per_s)
        return {"latency_s": timing.pop("latency_s"), "energy_j": core_j + sram_j + dram_j,
                "weight_bytes": quantized_weight_bytes(g.params, g.c_out, w), **timing,
                "core_energy_j": core_j, "sram_energy_j": sram_j, "dram_energy_j": dram_j}
