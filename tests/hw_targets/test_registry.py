"""Discovery through the ``haqc.hw_targets`` entry-point group: built-ins, plugins, broken plugins."""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from haqc.errors import InputError
from haqc.hw_targets import Target, available_targets, cost_summary, load_target

from hwt_helpers import BUILTINS, REPO, add_fake_dist, mnist_mbv2
from haqc.precision import grid


EXAMPLE = REPO / "examples" / "custom_target"


def _example_entry_points() -> tuple[str, str, dict[str, str]]:
    """Name, version and entry points exactly as the example package declares them."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return project["name"], project["version"], project["entry-points"]["haqc.hw_targets"]


def test_builtins_are_listed_as_built_in():
    infos = {info.name: info for info in available_targets()}
    for name in BUILTINS:
        assert infos[name].source == "built-in"
        assert infos[name].description
    assert infos["edge"].batch == 1 and infos["cloud"].batch == 16
    assert not infos["edge"].energy and infos["bitfusion"].energy


def test_unknown_target_lists_the_available_ones():
    with pytest.raises(InputError) as info:
        load_target("tpu_v9")
    message = str(info.value)
    assert "unknown target 'tpu_v9'" in message
    assert "bitfusion, cloud, edge" in message and ".toml" in message


def test_the_example_package_is_listed_and_used_without_changing_haqc(monkeypatch, tmp_path):
    name, version, entry_points = _example_entry_points()
    add_fake_dist(monkeypatch, tmp_path, name, version, entry_points, source_dir=EXAMPLE)
    infos = {info.name: info for info in available_targets()}
    assert infos["tiny_npu"].source == f"plugin {name} {version}"
    assert infos["tiny_npu"].w_bits == (2, 4, 8)
    assert set(BUILTINS) <= set(infos)
    npu = load_target("tiny_npu")
    assert isinstance(npu, Target)
    summary = cost_summary(npu.cost_table(mnist_mbv2()))
    total = summary["total"]
    assert total["w8a8"]["latency_ms"] > total["w4a4"]["latency_ms"] > total["w2a2"]["latency_ms"] > 0
    assert total["w8a8"]["energy_mj"] > 0
    table = npu.cost_table(mnist_mbv2())
    assert table.declared == (9,) * 24 and table.options[0][:9] == grid((2, 4, 8), (2, 4, 8))


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(monkeypatch, tmp_path, caplog):
    entry_points = {"broken": "haqc_no_such_module_xyz:target", "dicty": "builtins:dict"}
    add_fake_dist(monkeypatch, tmp_path, "broken-plugin", "1.0", entry_points)
    with caplog.at_level(logging.WARNING, logger="haqc.hw_targets"):
        names = [info.name for info in available_targets()]
    assert set(BUILTINS) <= set(names)
    assert "broken" not in names and "dicty" not in names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'broken'" in w and "broken-plugin 1.0" in w and "ModuleNotFoundError" in w for w in warnings)
    assert any("'dicty'" in w and "did not produce a haqc.hw_targets.Target" in w for w in warnings)
    assert load_target("edge").name == "edge"  # the others still work
    with pytest.raises(InputError, match=r"hardware target plugin 'broken' .*failed to load: ModuleNotFoundError"):
        load_target("broken")
    with pytest.raises(InputError, match=r"did not produce a haqc\.hw_targets\.Target"):
        load_target("dicty")


def test_a_plugin_cannot_shadow_a_builtin(monkeypatch, tmp_path, caplog):
    add_fake_dist(monkeypatch, tmp_path, "shadow", "1.0", {"edge": "builtins:dict"})
    with caplog.at_level(logging.WARNING, logger="haqc.hw_targets"):
        edge = load_target("edge")
    assert edge.params.dm == 8
    assert any("registered by both built-in and plugin shadow 1.0" in r.getMessage() for r in caplog.records)


def _can_build_without_isolation() -> bool:
    """pip --no-build-isolation needs setuptools, and a wheel builder (setuptools >= 70.1 has one built in)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_without_isolation(), reason="this venv has no setuptools able to build a wheel")
def test_the_example_package_really_installs_with_pip(tmp_path):
    """The README's route, into a throw-away folder so the venv is left as it was."""
    source = shutil.copytree(EXAMPLE, tmp_path / "src")  # keep build/ and *.egg-info out of the repo
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, capture_output=True, timeout=120)
    code = "from haqc.hw_targets import load_target; t = load_target('tiny_npu'); print(t.name, t.description)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert out.stdout.startswith("tiny_npu Example plugin")
