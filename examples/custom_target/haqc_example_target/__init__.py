"""A third-party haqc hardware target, written in plain Python against the public interface.

TinyNPU is an illustrative device, not a real product: a 16 x 16 array of
int8 multiply-accumulators at 400 MHz with 4 GB/s of DRAM bandwidth, whose
multipliers split into two 4-bit or four 2-bit lanes (a common "int4 mode").
Its numbers are made up to show the interface; the built-in targets are the
ones based on published figures.
"""
from __future__ import annotations

from haqc.hw_targets import LayerCost, Target, weight_bytes

from haqc.layers import Layer

MACS_PER_CYCLE = 16 * 16
CLOCK_HZ = 400e6
DRAM_BYTES_PER_S = 4e9
MAC_ENERGY_J = 0.25e-12  # one int8 multiply-accumulate lane
DRAM_ENERGY_J_PER_BYTE = 100e-12


class TinyNPU(Target):
    name = "tiny_npu"
    description = "Example plugin: 16x16 int8 MAC array @ 400 MHz, int4/int2 lane packing, 4 GB/s, batch 1"
    batch = 1
    w_bits = (2, 4, 8)  # the widths the hardware runs natively; others run on the next wider lane
    a_bits = (2, 4, 8)

    def layer_cost(self, layer: Layer, w_bits: int, a_bits: int) -> LayerCost:
        lane_bits = next(b for b in (2, 4, 8, 16) if b >= max(w_bits, a_bits))
        lanes = max(8 // lane_bits, 1)  # an int8 multiplier splits into 1, 2 or 4 lanes
        passes = max(lane_bits // 8, 1)  # 16-bit operands (float layers) take two passes
        macs = layer.macs * self.batch
        compute_s = macs * passes / (MACS_PER_CYCLE * lanes) / CLOCK_HZ
        dram_bytes = (
            layer.params * lane_bits / 8
            + layer.input_elems * self.batch * lane_bits / 8
            + layer.output_elems * self.batch  # int8 outputs
        )
        memory_s = dram_bytes / DRAM_BYTES_PER_S
        return LayerCost(
            latency_s=max(compute_s, memory_s),  # compute and DMA overlap (double buffering)
            energy_j=macs * passes * MAC_ENERGY_J / lanes + dram_bytes * DRAM_ENERGY_J_PER_BYTE,
            weight_bytes=weight_bytes(layer, w_bits),  # haqc's shared storage convention
        )
