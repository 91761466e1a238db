"""A device runner started as another process on this machine, with settings other than the host's."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunnerProcess:
    process: subprocess.Popen
    address: str
    token: str
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def timed(self) -> int:
        """Timing requests the runner served (it logs one line for each)."""
        return sum(" timed " in line for line in self.log_lines())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_runner(workdir: Path, *args: str, prefix: tuple[str, ...] = ()) -> RunnerProcess:
    """``haqc-runner --port 0 -v ARGS`` with its token file under ``workdir``; returns once it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file, log = workdir / "token", workdir / "runner.log"
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "haqc.runner.server", "--port", "0", "-v", "--token-file", str(token_file),
         *args],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=ROOT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "listening on" in line:
            address = line.split("listening on ", 1)[1].split()[0]
            return RunnerProcess(process, address, token_file.read_text().strip(), log)
    process.wait(timeout=10)
    raise AssertionError(f"the runner did not start: {''.join(lines)} {log.read_text()}")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """A runner with 2 threads (the host's ort-cpu default is 1), a 1 MB model bound."""
    proc = start_runner(tmp_path_factory.mktemp("runner"), "--threads", "2", "--max-model-mb", "1")
    yield proc
    proc.stop()


@pytest.fixture()
def as_client(runner, monkeypatch, tmp_path):
    """This test's haqc talks to ``runner`` with its token, and caches in a fresh directory."""
    monkeypatch.setenv("HAQC_RUNNER_TOKEN", runner.token)
    monkeypatch.setenv("HAQC_CACHE_DIR", str(tmp_path / "cache"))
    return runner


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any runner token, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAQC_RUNNER_")}
    return {**env, **extra}
