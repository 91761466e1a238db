"""haqc's side of the device runner: facts and timings from ``haqc-runner`` at ``HOST:PORT``.

Every failure is one line in haqc's own errors: a runner that is not there, stops answering or
dies is a RunnerError (exit 6; measurements already made are cached, so the same command
continues); a wrong token or a model the runner refuses is an InputError (exit 2).
"""
from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Sequence

import numpy as np

from haqc.errors import InputError, RunnerError, first_line
from haqc.runner import auth, wire
from haqc.runner.timing import Protocol

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0  # above the runner's default request bound (120 s) plus sessions' creation


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; an InputError if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"runner address {address!r} is not HOST:PORT; write e.g. ort-cpu@192.168.1.7:7878")
    return host, int(port)


class RunnerClient:
    """Talks to one runner: one connection per request, so a runner restarted between requests
    is simply asked again (and sent the models it no longer has)."""

    def __init__(self, address: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.host, self.port = parse_address(address)
        self.address = address
        self.token = token if token is not None else auth.client_token()
        self.timeout = timeout
        self.max_model_bytes: int | None = None  # the runner's bound, learnt from its facts

    def facts(self, provider: str | None, threads: int | None) -> dict:
        """The device's facts for timing on ``provider`` with ``threads`` (None: the runner's own settings)."""
        reply = self._ask(self._header("facts", provider, threads))
        self.max_model_bytes = reply.get("max_model_bytes")
        return reply["facts"]

    def time_models(self, models: Sequence[bytes], feeds: dict[str, np.ndarray], provider: str | None,
                    threads: int | None, protocol: Protocol = Protocol()) -> list[float]:
        """Seconds per run of each model on the device (haqc.runner.timing.time_models there)."""
        digests = [hashlib.sha256(m).hexdigest() for m in models]
        specs, body = wire.pack_arrays(feeds)
        header = {**self._header("time", provider, threads), "models": digests, "inputs": specs,
                  "protocol": vars(protocol)}
        reply = self._ask(header, body, resend=dict(zip(digests, models)))
        return [float(s) for s in reply["seconds"]]

    def _header(self, op: str, provider: str | None, threads: int | None) -> dict:
        header: dict = {"op": op, "token": self.token}
        if provider is not None:
            header["provider"] = provider
        if threads is not None:
            header["threads"] = threads
        return header

    def _ask(self, header: dict, body: bytes = b"", resend: dict[str, bytes] | None = None) -> dict:
        """The runner's answer to one request; the models it lacks are put, then it is asked again."""
        reply = self._exchange(header, body)
        if reply.get("kind") == "missing" and resend:
            for digest in reply.get("missing", []):
                self._put(digest, resend[digest])
            reply = self._exchange(header, body)
        if not reply.get("ok"):
            raise self._error(reply)
        return reply

    def _put(self, digest: str, model: bytes) -> None:
        if self.max_model_bytes is not None and len(model) > self.max_model_bytes:
            raise InputError(f"a {len(model) / 1e6:.1f} MB model is over the runner's bound of "
                             f"{self.max_model_bytes / 1e6:.1f} MB; start it with a larger --max-model-mb")
        reply = self._exchange({"op": "put", "token": self.token, "sha256": digest}, model)
        if not reply.get("ok"):
            raise self._error(reply)

    def _exchange(self, header: dict, body: bytes) -> dict:
        where = f"the runner at {self.address}"
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                wire.send(sock, header, body)
                reply, _ = wire.receive(sock, 0)
        except ConnectionRefusedError:
            raise RunnerError(f"no runner answers at {self.address} (connection refused); start it there with "
                              "haqc-runner, then run this command again") from None
        except TimeoutError:
            raise RunnerError(f"{where} did not answer within {self.timeout:g} s; check that it is running and "
                              "reachable, then run this command again (measurements so far are cached)") from None
        except wire.ProtocolError as err:
            raise RunnerError(f"{where} answered something that is not a runner reply ({err}); is "
                              f"{self.address} a haqc-runner?") from None
        except OSError as err:  # reset, unreachable, closed mid-reply: the runner died or the network did
            raise RunnerError(f"lost {where} ({first_line(err)}); check that it is still running, then run this "
                              "command again (measurements so far are cached)") from None
        if not isinstance(reply.get("ok"), bool):
            raise RunnerError(f"{where} answered without a status; is {self.address} a haqc-runner?")
        return reply

    def _error(self, reply: dict) -> Exception:
        where, message = f"the runner at {self.address}", str(reply.get("error", "no reason given"))
        kind = reply.get("kind")
        if kind == "auth":
            return InputError(f"{where} refused the token; set {auth.TOKEN_ENV} (or {auth.TOKEN_FILE_ENV}) to the "
                              "token it printed on first start (kept in its runner-token file)")
        if kind in ("refused", "too_large", "input"):
            return InputError(f"{where} refused the request: {message}")
        return RunnerError(f"{where} failed: {message}")
