"""TOML target files: they reproduce the built-ins exactly, and every malformed file is one clear InputError."""
from __future__ import annotations

import numpy as np
import pytest

from haqc.errors import InputError
from haqc.hw_targets import BitFusionArray, BitSerialOverlay, BitSerialParams, load_target, load_target_file

from hwt_helpers import REPO, TARGETS, mnist_mbv2, resnet50, grid_costs


# The published parameters, typed from docs/cost_models.md (not read from configs/).
EDGE_TOML = """
model = "bitserial"
dm = 8
dk = 256
dn = 8
clock_hz = 200_000_000
dram_bytes_per_s = 2.1e9
batch = 1
"""
CLOUD_TOML = """
model = "bitserial"
dm = 32
dk = 256
dn = 32
clock_hz = 2e8
dram_bytes_per_s = 64e9
batch = 16
"""
BITFUSION_TOML = """
model = "bitfusion"
rows = 16
cols = 32
clock_hz = 500e6
dram_bytes_per_s = 12e9
batch = 1
unit_cycle_energy_j = 0.4592e-12
wbuf_energy_j_per_byte = 0.1709e-12
ibuf_energy_j_per_byte = 0.4758e-12
obuf_energy_j_per_byte = 0.8499e-12
dram_energy_j_per_byte = 120e-12
"""


@pytest.mark.parametrize(("name", "text"), [("edge", EDGE_TOML), ("cloud", CLOUD_TOML), ("bitfusion", BITFUSION_TOML)])
def test_a_file_with_the_published_parameters_reproduces_the_builtin_exactly(tmp_path, name, text):
    path = tmp_path / f"my_{name}.toml"
    path.write_text(text)
    mine = load_target(str(path))
    assert mine.name == f"my_{name}"  # defaults to the file name
    layers = mnist_mbv2() + resnet50()
    for ours, theirs in zip(grid_costs(mine, layers), grid_costs(TARGETS[name], layers), strict=True):
        if theirs is None:
            assert ours is None
        else:
            np.testing.assert_array_equal(ours, theirs)
    assert (mine.batch, mine.w_bits, mine.a_bits) == (
        TARGETS[name].batch,
        TARGETS[name].w_bits,
        TARGETS[name].a_bits,
    )


def test_builtins_are_the_shipped_config_files():
    for name, cls in (("edge", BitSerialOverlay), ("cloud", BitSerialOverlay), ("bitfusion", BitFusionArray)):
        target = load_target(str(REPO / "hw_targets" / "configs" / f"{name}.toml"))
        assert isinstance(target, cls)
        assert target.params == load_target(name).params


def test_python_parameters_and_file_parameters_build_the_same_target(tmp_path):
    path = tmp_path / "edge_like.toml"
    path.write_text(EDGE_TOML)
    params = BitSerialParams(dm=8, dk=256, dn=8, clock_hz=200e6, dram_bytes_per_s=2.1e9, batch=1)
    assert load_target_file(path).params == params


def test_an_optional_energy_model_on_the_overlay(tmp_path):
    path = tmp_path / "edge_energy.toml"
    path.write_text(EDGE_TOML + "binary_op_energy_j = 1e-15\ndram_energy_j_per_byte = 100e-12\n")
    target = load_target(str(path))
    energy = grid_costs(target, mnist_mbv2()).energy_j
    assert energy is not None and np.all(energy > 0)


def _error(tmp_path, text: str, name: str = "bad.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_target(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model = 'bitserial'\ndm = [", "is not valid TOML"),
        ("<accelerator dm='8'/>", "is not valid TOML"),
        (EDGE_TOML.replace("dn = 8\n", ""), "misses field 'dn'"),
        (EDGE_TOML.replace('model = "bitserial"\n', ""), "misses field 'model'"),
        (EDGE_TOML.replace("dm = 8", "dm = -8"), "'dm' must be positive, got -8"),
        (EDGE_TOML.replace("clock_hz = 200_000_000", "clock_hz = 0"), "'clock_hz' must be positive, got 0"),
        (EDGE_TOML.replace("dram_bytes_per_s = 2.1e9", "dram_bytes_per_s = -1.0"), "must be positive"),
        (EDGE_TOML.replace("dm = 8", "dm = 8.5"), "'dm' must be an integer"),
        (EDGE_TOML.replace("dm = 8", "dm = true"), "'dm' must be an integer"),
        (EDGE_TOML.replace("clock_hz = 200_000_000", "clock_hz = '200MHz'"), "'clock_hz' must be a number"),
        (EDGE_TOML.replace("dm = 8", "dm = 8\nclock_mhz = 200"), "unknown field 'clock_mhz'"),
        (EDGE_TOML.replace("bitserial", "systolic"), "unknown model 'systolic'"),
        (EDGE_TOML + "w_bits = []\n", "'w_bits' must be a non-empty list"),
        (EDGE_TOML + "a_bits = [4, 0]\n", "'a_bits' must list integers in 1..16"),
        (EDGE_TOML + "binary_op_energy_j = 1e-15\n", "give both binary_op_energy_j and dram_energy_j_per_byte"),
        (EDGE_TOML + "name = ''\n", "has name ''; it must be a non-empty string"),
        (BITFUSION_TOML.replace("dram_energy_j_per_byte = 120e-12", ""), "misses field 'dram_energy_j_per_byte'"),
    ],
)
def test_malformed_files_are_one_clear_input_error(tmp_path, text, expected):
    assert expected in _error(tmp_path, text)


def test_a_binary_file_is_not_toml(tmp_path):
    path = tmp_path / "accel.toml"
    path.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(InputError, match="is not valid TOML"):
        load_target(str(path))


def test_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_target(str(tmp_path / "nope.toml"))


def test_the_documented_example_file_loads(tmp_path):
    text = (REPO / "docs" / "writing_targets.md").read_text()
    block = next(b.split("```")[0] for b in text.split("```toml\n")[1:] if b.startswith("# my_accel.toml"))
    path = tmp_path / "my_accel.toml"
    path.write_text(block)
    target = load_target(str(path))
    assert (target.name, target.params.dm, target.batch) == ("my_accel", 16, 1)
