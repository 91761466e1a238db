"""Strategies as a public interface: the built-ins register through the ``haqc.strategies`` entry-point
group, and a plugin package's strategy is found by name, as examples/custom_strategy/ installs one."""
from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, EXAMPLE_DIR, ROOT, add_fake_dist
from haqc.cli import main
from haqc.errors import InputError
from haqc.search import Strategy, load_strategy, search, strategy_names
from haqc.search.strategies import ENTRY_POINT_GROUP
from search_helpers import synthetic_problem

PLUGIN = ROOT / "examples" / "custom_strategy"


def _install_example(monkeypatch, tmp_path) -> None:
    """The example package's dist-info exactly as its pyproject.toml declares it (pip minus pip)."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    add_fake_dist(monkeypatch, tmp_path, project["name"], project["version"], project["entry-points"][ENTRY_POINT_GROUP],
                  source_dir=PLUGIN, group=ENTRY_POINT_GROUP)


def test_the_builtins_register_through_the_group():
    assert strategy_names() == ["ddpg", "random", "uniform", "greedy", "ilp"]
    assert all(isinstance(load_strategy(name), Strategy) for name in strategy_names())


def test_a_plugin_strategy_searches_through_the_python_api(monkeypatch, tmp_path):
    _install_example(monkeypatch, tmp_path)
    assert strategy_names()[-1] == "evolve"
    result = search(synthetic_problem(), "evolve", 8, seed=3)
    again = search(synthetic_problem(), "evolve", 8, seed=3)
    assert result.episodes == 8 and result.meets_budget and result.history == again.history
    from haqc_example_strategy import EvolveConfig

    wide = search(synthetic_problem(), "evolve", 8, seed=3, config=EvolveConfig(mutations=4))
    assert wide.history != result.history
    with pytest.raises(InputError, match="takes a EvolveConfig, got DDPGConfig"):
        from haqc.search import DDPGConfig

        search(synthetic_problem(), "evolve", 8, config=DDPGConfig())


def test_haqc_compress_finds_a_plugin_strategy_by_name(monkeypatch, tmp_path):
    _install_example(monkeypatch, tmp_path)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [
        "compress", str(EXAMPLE), "--data", str(EXAMPLE_DIR / "val.npz"), "--calib-data", str(EXAMPLE_DIR / "calib.npz"),
        "--target", "edge", "--latency", "0.6x", "--strategy", "evolve", "--episodes", "3", "-o", str(tmp_path / "m.onnx"),
        "--report", str(report), "--no-plot", "--quiet"])
    assert result.exit_code == 0, result.output
    searched = json.loads(report.read_text())["search"]
    assert searched["strategy"] == "evolve" and searched["episodes"] == 3


def test_unknown_and_broken_strategies_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(InputError, match=r"unknown search strategy 'annealing'; choose one of ddpg, random, uniform"):
        load_strategy("annealing")
    add_fake_dist(monkeypatch, tmp_path, "broken-strategies", "1.0",
                  {"broken": "haqc_no_such_module_xyz:S", "dicty": "builtins:dict"}, group=ENTRY_POINT_GROUP)
    with pytest.raises(InputError, match=r"plugin 'broken' \(plugin broken-strategies 1.0\) failed to load: "
                                         r"ModuleNotFoundError"):
        load_strategy("broken")
    with pytest.raises(InputError, match=r"'dicty' .* is not a Strategy"):
        load_strategy("dicty")
    result = CliRunner().invoke(main, ["compress", str(EXAMPLE), "--latency", "0.5x", "--strategy", "annealing"])
    assert result.exit_code == 2 and "unknown search strategy 'annealing'" in result.output
    assert "Traceback" not in result.output


def test_a_strategy_that_records_nothing_is_refused():
    class Idle:
        config_type = None
        episodic = False

        def play(self, run, config):
            pass

    with pytest.raises(InputError, match="recorded no outcome"):
        search(synthetic_problem(), Idle())
    assert np.isfinite(search(synthetic_problem(), load_strategy("uniform")).reward)
