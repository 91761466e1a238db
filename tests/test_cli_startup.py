"""The newcomer's first commands answer at once: ``haqc --help`` and the CLI's import load neither onnx,
ONNX Runtime, torch nor scipy (seconds of imports); a command's module is imported when it runs."""
from __future__ import annotations

import json
import subprocess
import sys

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


def test_inspect_and_targets_help_load_no_onnx_or_torch():
    for command in ("inspect", "targets"):
        code = (f"from haqc.cli import main\ntry:\n    main(['{command}', '--help'])\nexcept SystemExit as e:\n"
                "    assert e.code == 0, e.code")
        assert not set(_loaded_after(code)) & {"torch", "onnx", "scipy"}, command
