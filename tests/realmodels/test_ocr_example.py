"""examples/ocr/README.md: its commands run as written, and the fp32 recognizer reads the rendered lines."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "ocr" / "README.md"


def readme_commands() -> str:
    return re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    script = readme_commands().replace("OUT=out/ocr", f"OUT={tmp_path}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    scores = [float(s) for s in re.findall(r"metric lines:exact_match ([0-9.]+)", result.stdout)]
    assert len(scores) == 3 and scores[0] >= 0.9, result.stdout
