"""``ort-cpu@HOST:PORT``: ort-cpu's measurements, made by a runner in another process (or namespace)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from haqc.errors import EXIT_BAD_INPUT, EXIT_RUNNER_FAILED
from haqc.hw_targets import load_target
from haqc.hw_targets.ort_cpu import OrtTarget, RemoteOrtTarget
from haqc.pipeline import cost_table, prepare
from tests.conftest import EXAMPLE, EXAMPLE_DIR
from tests.runner.conftest import ROOT, clean_env, start_runner

HAQC = str(Path(sys.executable).parent / "haqc")


@pytest.fixture(scope="module")
def prepared():
    return prepare(EXAMPLE)


def _cached(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in (cache / "measurements").glob("*.json")]


def test_the_table_is_timed_by_the_runner_and_cached_apart_from_the_host(prepared, as_client, tmp_path, monkeypatch):
    runner, cache = as_client, tmp_path / "cache"
    target = load_target(f"ort-cpu@{runner.address}")
    assert isinstance(target, RemoteOrtTarget) and target.name == f"ort-cpu@{runner.address}"
    assert target.facts["threads"] == 2 and target.threads == 2  # the runner's setting, not the host's 1
    timed = runner.timed()
    remote = cost_table(prepared, target, "linear")
    assert runner.timed() > timed  # every timing came from the runner
    entries = _cached(cache)
    assert entries and all(e["device"]["threads"] == 2 for e in entries)
    # The host's ort-cpu (1 thread) reads none of the runner's entries: it measures everything itself.
    local = cost_table(prepared, OrtTarget(), "linear")
    assert len(_cached(cache)) == 2 * len(entries) and local.n_layers == remote.n_layers
    # A second run (a resumed search) asks the runner for facts only: every timing is cached.
    timed = runner.timed()
    again = cost_table(prepared, load_target(f"ort-cpu@{runner.address}"), "linear")
    assert runner.timed() == timed and again.digest() == remote.digest()


@pytest.mark.slow  # three haqc processes start (torch): ~7 s each on a busy 2-core machine
def test_the_cli_says_one_line_for_a_dead_runner_or_a_wrong_token(runner, tmp_path):
    def inspect(address: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([HAQC, "inspect", str(EXAMPLE), "--target", f"ort-cpu@{address}"], capture_output=True,
                              text=True, cwd=ROOT, env=clean_env(HAQC_CACHE_DIR=str(tmp_path), **env), timeout=120)

    dead = inspect("127.0.0.1:1", HAQC_RUNNER_TOKEN="t")
    assert dead.returncode == EXIT_RUNNER_FAILED and dead.stderr.strip().count("\n") == 0
    assert "no runner answers at 127.0.0.1:1" in dead.stderr
    wrong = inspect(runner.address, HAQC_RUNNER_TOKEN="wrong")
    assert wrong.returncode == EXIT_BAD_INPUT and "refused the token" in wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0
    token_file = tmp_path / "token"
    token_file.write_text(runner.token)
    token_file.chmod(0o600)
    cli = subprocess.run([HAQC, "targets"], capture_output=True, text=True, cwd=ROOT,
                         env=clean_env(HAQC_RUNNER_TOKEN_FILE=str(token_file)), timeout=60)
    assert cli.returncode == 0  # the token file works as the variable does (listing needs no runner)


@pytest.mark.slow
def test_a_compress_through_the_runner_measures_its_policy_there(as_client, tmp_path):
    import haqc

    runner = as_client
    timed = runner.timed()
    result = haqc.compress(EXAMPLE, target=f"ort-cpu@{runner.address}", budgets={"latency": "1x"},
                           data=EXAMPLE_DIR / "val.npz", calib_data=EXAMPLE_DIR / "calib.npz", strategy="greedy",
                           episodes=2, finetune_epochs=0)
    report = json.loads(result.to_json())
    assert report["target"]["name"] == f"ort-cpu@{runner.address}"
    assert runner.timed() > timed and all(e["device"]["threads"] == 2 for e in _cached(tmp_path / "cache"))
    measured = report["result"]["measured_latency_ms"]
    assert measured is not None and measured > 0  # the final model, timed whole on the runner


def _netns_allowed() -> bool:
    if shutil.which("ip") is None:
        return False
    made = subprocess.run(["ip", "netns", "add", "haqc-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "haqc-probe"], capture_output=True)
    return made.returncode == 0


@pytest.mark.skipif(not _netns_allowed(), reason="needs `ip netns add` (root, a kernel that allows it)")
def test_a_runner_in_another_network_namespace(prepared, tmp_path, monkeypatch):
    ns, host_if, ns_if = "haqc-runner-test", "haqc-h0", "haqc-n0"
    setup = [["ip", "netns", "add", ns], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
             ["ip", "link", "set", ns_if, "netns", ns], ["ip", "addr", "add", "10.231.7.1/24", "dev", host_if],
             ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", "10.231.7.2/24", "dev", ns_if],
             ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True)
        runner = start_runner(tmp_path / "ns", "--host", "10.231.7.2", "--threads", "2",
                              prefix=("ip", "netns", "exec", ns))
        try:
            monkeypatch.setenv("HAQC_RUNNER_TOKEN", runner.token)
            monkeypatch.setenv("HAQC_CACHE_DIR", str(tmp_path / "cache"))
            table = cost_table(prepared, load_target(f"ort-cpu@{runner.address}"), "linear")
            assert table.n_layers == len(prepared.layers) and runner.timed() > 0
            assert runner.address.startswith("10.231.7.2:")
        finally:
            runner.stop()
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
