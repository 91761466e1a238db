"""``haqc targets``: the table, the JSON, files given on the command line, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from haqc.cli import main

from hwt_helpers import BUILTINS, REPO, add_fake_dist


EDGE_TOML = REPO / "hw_targets" / "configs" / "edge.toml"


def test_table_lists_builtins_with_source_and_description():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SOURCE", "BATCH"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(BUILTINS) <= set(rows)
    assert "built-in" in rows["edge"] and "Zynq-7020" in rows["edge"]
    assert " 16 " in rows["cloud"]


def test_json_lists_every_field():
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0
    entries = {entry["name"]: entry for entry in json.loads(result.output)}
    assert entries["bitfusion"] == {
        "name": "bitfusion",
        "source": "built-in",
        "description": entries["bitfusion"]["description"],
        "batch": 1,
        "w_bits": [2, 3, 4, 5, 6, 7, 8],
        "a_bits": [2, 3, 4, 5, 6, 7, 8],
        "energy": True,
    }
    assert entries["edge"]["energy"] is False


def test_a_toml_file_is_checked_and_listed_with_its_path(tmp_path):
    mine = tmp_path / "my_accel.toml"
    mine.write_text(EDGE_TOML.read_text().replace('name = "edge"', 'name = "my_accel"'))
    result = CliRunner().invoke(main, ["targets", "--json", str(mine)])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)[-1]
    assert entry["name"] == "my_accel" and entry["source"] == f"file {mine}"


def test_a_bad_toml_file_is_exit_code_2_and_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(EDGE_TOML.read_text().replace("dm = 8", "dm = 0"))
    result = CliRunner().invoke(main, ["targets", str(bad)])
    assert result.exit_code == 2
    assert result.stderr == f"error: target file {bad}: parameter 'dm' must be positive, got 0\n"


def test_a_broken_plugin_warns_on_stderr_and_the_command_still_works(monkeypatch, tmp_path):
    site = add_fake_dist(monkeypatch, tmp_path, "broken-plugin", "1.0", {"broken": "haqc_no_such_module_xyz:target"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", "from haqc.cli import main; main()", "targets"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "'broken'" in line]
    assert len(warnings) == 1 and "broken-plugin 1.0" in warnings[0]
    assert "Traceback" not in result.stderr
    assert {"bitfusion", "cloud", "edge"} <= {line.split()[0] for line in result.stdout.splitlines()[1:]}
