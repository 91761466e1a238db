"""The runner as a server: what it refuses, each with one line, and that it serves the next request."""
from __future__ import annotations

import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from haqc.errors import InputError, RunnerError
from haqc.runner import wire
from haqc.runner.client import RunnerClient
from tests.runner.conftest import ROOT, clean_env, start_runner


def _relu(domain: str = "") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    node = helper.make_node("Relu", ["x"], ["y"], domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, 8), np.float32)}


def _raw(address: str, data: bytes, close_early: bool = False) -> dict | None:
    """Send ``data`` as it is; the runner's reply header (None when hanging up first)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if close_early:
            return None
        return wire.receive(sock, 0)[0]


def _message(header: dict, body: bytes = b"", body_len: int | None = None) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">4sIQ", wire.MAGIC, len(data), len(body) if body_len is None else body_len) + data + body


def _new_warnings(runner, before: int) -> list[str]:
    """The runner's log lines since ``before``, less its -v lines (a timing, a model it asks for)."""
    return [line for line in runner.log_lines()[before:] if " timed " not in line and "put them first" not in line]


def _serves_next(runner) -> None:
    """The runner still times a model after whatever came before."""
    timed = runner.timed()
    seconds = RunnerClient(runner.address, runner.token).time_models([_relu().SerializeToString()], _feeds(), None, None)
    assert len(seconds) == 1 and seconds[0] > 0 and runner.timed() == timed + 1


def test_importing_the_runner_imports_neither_torch_nor_onnx():
    code = ("import sys, haqc.runner.server, haqc.runner.client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnx_graphsurgeon', 'click', "
            "'scipy', 'networkx'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_facts_are_the_runners_settings_not_the_hosts(runner):
    facts = RunnerClient(runner.address, runner.token).facts(None, None)
    assert facts["threads"] == 2 and facts["provider"] == "CPU"  # the host's ort-cpu default is 1 thread
    assert RunnerClient(runner.address, runner.token).facts(None, 0)["threads"] is None  # ONNX Runtime's default


@pytest.mark.parametrize("token", ["wrong", None])
def test_a_wrong_or_missing_token_runs_nothing(runner, token):
    before, timed = len(runner.log_lines()), runner.timed()
    header = {"op": "time", "models": ["0" * 64], "inputs": []} | ({"token": token} if token else {})
    reply = _raw(runner.address, _message(header))
    assert reply["ok"] is False and reply["kind"] == "auth" and "token" in reply["error"]
    with pytest.raises(InputError, match="refused the token") as err:
        RunnerClient(runner.address, token="wrong").time_models([_relu().SerializeToString()], _feeds(), None, None)
    assert "\n" not in str(err.value) and runner.timed() == timed
    assert len(_new_warnings(runner, before)) == 2  # one line each
    _serves_next(runner)


def test_no_token_anywhere_is_one_line(tmp_path, monkeypatch):
    for name in ("HAQC_RUNNER_TOKEN", "HAQC_RUNNER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(InputError, match="no runner token: set HAQC_RUNNER_TOKEN"):
        RunnerClient("127.0.0.1:7878")


def test_a_model_over_the_size_bound_is_refused_unread(runner):
    before = len(runner.log_lines())
    reply = _raw(runner.address, _message({"op": "put", "token": runner.token, "sha256": "0" * 64}, body_len=2 << 20))
    assert reply["kind"] == "too_large" and "--max-model-mb" in reply["error"]
    big = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.zeros(600_000, np.float32), "w")]))
    client = RunnerClient(runner.address, runner.token)
    client.facts(None, None)  # learns the bound, and refuses before sending
    with pytest.raises(InputError, match="over the runner's bound"):
        client.time_models([big.SerializeToString()], {}, None, None)
    assert len(_new_warnings(runner, before)) == 1
    _serves_next(runner)


def test_custom_op_and_external_data_models_are_refused(runner):
    before = len(runner.log_lines())
    client = RunnerClient(runner.address, runner.token)
    with pytest.raises(InputError, match="custom-op domain 'my.ops'"):
        client.time_models([_relu("my.ops").SerializeToString()], _feeds(), None, None)
    external = _relu()
    w = onnx.numpy_helper.from_array(np.zeros(8, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="/etc/passwd")
    external.graph.initializer.append(w)
    with pytest.raises(InputError, match="external data"):
        client.time_models([external.SerializeToString()], _feeds(), None, None)
    assert len(_new_warnings(runner, before)) == 2
    _serves_next(runner)


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4,
                                     struct.pack(">4sIQ", wire.MAGIC, 5, 0) + b"{nope"])
def test_garbage_gets_one_line(runner, garbage):
    before = len(runner.log_lines())
    reply = _raw(runner.address, garbage)
    assert reply["ok"] is False and reply["kind"] == "malformed" and "\n" not in reply["error"]
    assert len(_new_warnings(runner, before)) == 1
    _serves_next(runner)


def test_a_garbage_model_gets_one_line(runner):
    before = len(runner.log_lines())
    body = b"\x08\x07\x12\x03abc" + bytes(64)  # parses as fields, is no model
    with pytest.raises(InputError, match="refused the request: the model is not an ONNX protobuf"):
        RunnerClient(runner.address, runner.token)._put(hashlib.sha256(body).hexdigest(), body)
    assert len(_new_warnings(runner, before)) == 1
    _serves_next(runner)


def test_a_dropped_connection_gets_one_line(runner):
    before = len(runner.log_lines())
    # The header says 200 bytes follow; the client hangs up after 10.
    _raw(runner.address, struct.pack(">4sIQ", wire.MAGIC, 200, 0) + b"{" * 10, close_early=True)
    _serves_next(runner)
    lines = _new_warnings(runner, before)
    assert len(lines) == 1 and "dropped a connection" in lines[0]


def test_an_unavailable_execution_provider_is_one_line(runner):
    with pytest.raises(InputError, match="execution provider 'CUDA' is not in this onnxruntime build"):
        RunnerClient(runner.address, runner.token).facts("CUDA", None)
    out = subprocess.run([sys.executable, "-m", "haqc.runner.server", "--execution-provider", "NoSuch", "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, env=clean_env(XDG_CONFIG_HOME=str(ROOT / "nowhere")))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "'NoSuch' is not in this onnxruntime build" in out.stderr


def test_a_request_over_the_time_bound_is_stopped(tmp_path):
    slow = start_runner(tmp_path, "--request-timeout", "0.05")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 1024])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 1024])
    w = onnx.numpy_helper.from_array(np.ones((1024, 1024), np.float32), "w")
    matmul = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                               opset_imports=[helper.make_opsetid("", 17)])  # ~3 ms a run, 300 rounds of 4 runs
    try:
        with pytest.raises(RunnerError, match="over the runner's 0.05 s bound"):
            RunnerClient(slow.address, slow.token).time_models([matmul.SerializeToString()],
                                                               {"x": np.ones((64, 1024), np.float32)}, None, None)
        assert RunnerClient(slow.address, slow.token).facts(None, None)["threads"] == 1
    finally:
        slow.stop()


def test_the_token_is_made_once_private_and_refused_when_others_can_read_it(tmp_path):
    first = start_runner(tmp_path)
    first.stop()
    token_file = tmp_path / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and first.token
    again = start_runner(tmp_path)  # the same token, not printed again
    again.stop()
    assert again.token == first.token
    token_file.chmod(0o644)
    out = subprocess.run([sys.executable, "-m", "haqc.runner.server", "--port", "0", "--token-file", str(token_file)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "readable by other users" in out.stderr and out.stderr.count("\n") == 1


def test_a_runner_that_is_not_there_hangs_or_hangs_up_is_one_line():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RunnerError, match=r"no runner answers at .* \(connection refused\)"):
        RunnerClient(f"127.0.0.1:{port}", "t").facts(None, None)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        address = "127.0.0.1:%d" % silent.getsockname()[1]
        with pytest.raises(RunnerError, match="did not answer within 0.3 s"):
            RunnerClient(address, "t", timeout=0.3).facts(None, None)
        silent.accept()[0].close()

        def hang_up() -> None:  # the next request: read a little, then close, as a runner that dies
            conn, _ = silent.accept()
            conn.recv(10)
            conn.close()

        dying = threading.Thread(target=hang_up)
        dying.start()
        with pytest.raises(RunnerError, match="lost the runner at .*still running"):
            RunnerClient(address, "t", timeout=5).facts(None, None)
        dying.join()
    with pytest.raises(InputError, match="is not HOST:PORT"):
        RunnerClient("somewhere", "t")
