"""The newcomer's first commands answer at once: ``haqc --help``, every ``haqc X --help`` and the CLI's
modules load neither onnx, ONNX Runtime, torch nor scipy (seconds of imports); the API they call is
imported when a command runs, and option defaults come from haqc.settings."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from haqc.cli import COMMANDS

HEAVY = ("torch", "onnx", "scipy", "onnxruntime")


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_module():
    assert _loaded_after("import haqc.cli") == []


def test_help_exits_0_listing_every_command_without_importing_them():
    code = ("from haqc.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code")
    assert _loaded_after(code) == []
    result = subprocess.run([sys.executable, "-c", "from haqc.cli import main; main(['--help'])"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(f"  {name} " in result.stdout for name in COMMANDS), result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_importing_a_command_loads_no_heavy_module(command):
    assert _loaded_after(f"import haqc.cli.{COMMANDS[command]}") == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_exits_0_loading_no_heavy_module(command):
    code = (f"from haqc.cli import main\ntry:\n    main(['{command}', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nelse:\n    raise AssertionError('--help did not exit')")
    assert _loaded_after(code) == [], command


def test_settings_are_the_defaults_the_heavy_modules_use():
    """One definition per default: the heavy modules read haqc.settings rather than keep their own."""
    from haqc import api, evaluation, finetune, quantizer, settings
    from haqc.passes import calibrate
    from haqc.search import strategies

    assert api.CompressConfig is settings.CompressConfig and finetune.FinetuneConfig is settings.FinetuneConfig
    assert quantizer.QuantizeOptions is settings.QuantizeOptions and calibrate.CLIP_METHODS is settings.CLIP_METHODS
    assert evaluation.TOP1 is settings.TOP1 and tuple(strategies.strategy_names()[:5]) == settings.STRATEGY_NAMES
