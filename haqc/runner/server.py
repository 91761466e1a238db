"""``haqc-runner``: times ONNX models on the device it runs on, for the holder of its token.

HAQ searches against the hardware a model will run on; this small server lets haqc, on
another machine, measure layers on that hardware (docs/runner.md). It runs only ONNX models
in ONNX Runtime, one request at a time, each bounded in size and time, and answers anything
it will not do with one line. Standard library, numpy and onnxruntime only.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path

import onnxruntime as ort

from haqc.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, HaqcError, InputError, first_line
from haqc.runner import auth, wire
from haqc.runner.facts import device_facts
from haqc.runner.screen import Refused, screen
from haqc.runner.timing import Protocol, providers, time_models

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7878
MAX_MODELS_PER_REQUEST = 64


@dataclass(frozen=True)
class Settings:
    """What the runner measures with unless a request asks otherwise, and its bounds."""

    token: str
    provider: str = "CPU"
    threads: int | None = 1  # None: ONNX Runtime's default (all physical cores)
    max_model_bytes: int = 256 << 20
    request_timeout: float = 120.0  # seconds of timing per request
    read_timeout: float = 60.0  # seconds to receive a whole request


class RequestError(Exception):
    """A request the runner answers with an error: ``kind`` tells the client what to do."""

    def __init__(self, kind: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.kind, self.extra = kind, extra


class Runner(socketserver.TCPServer):
    """One connection, one request, at a time: a timing never shares the device with another."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        super().__init__(address, _Handler)
        self.settings = settings
        self.models: OrderedDict[str, bytes] = OrderedDict()  # by sha256, least recently used first
        self.timed = 0  # timing requests served

    def keep(self, digest: str, model: bytes) -> None:
        """Keep ``model`` for later requests; the least recently used go past 4 models' worth of the bound."""
        self.models[digest] = model
        self.models.move_to_end(digest)
        while sum(map(len, self.models.values())) > 4 * self.settings.max_model_bytes:
            self.models.popitem(last=False)


class _Handler(socketserver.BaseRequestHandler):
    server: Runner

    def handle(self) -> None:
        sock: socket.socket = self.request
        peer = "%s:%s" % self.client_address[:2]
        try:
            header, body = self._read(sock)
            reply = {"ok": True, **self._dispatch(header, body)}
        except RequestError as err:  # a missing model is the usual first answer to a timing request
            logger.log(logging.INFO if err.kind == "missing" else logging.WARNING, "refused a request from %s: %s",
                       peer, err)
            reply = {"ok": False, "kind": err.kind, "error": str(err), **err.extra}
        except (ConnectionError, OSError) as err:  # the client went away or stalled: nobody to answer
            logger.warning("dropped a connection from %s: %s", peer, first_line(err))
            return
        except Exception as err:  # noqa: BLE001 - a request must never stop the runner; the client gets one line
            logger.warning("request from %s failed: %s", peer, first_line(err))
            reply = {"ok": False, "kind": "failed", "error": f"the runner failed: {first_line(err)}"}
        try:
            wire.send(sock, reply)
        except OSError as err:
            logger.warning("could not answer %s: %s", peer, first_line(err))

    def _read(self, sock: socket.socket) -> tuple[dict, bytes]:
        """The request, authenticated before its body is read; the whole read within ``read_timeout``."""
        settings = self.server.settings
        sock.settimeout(settings.read_timeout)
        stall = threading.Timer(settings.read_timeout, _shut, (sock,))  # a client trickling bytes
        stall.start()
        try:
            header_len, body_len = wire.read_prefix(sock)
            header = wire.read_header(sock, header_len)
            if not auth.matches(header.get("token"), settings.token):
                raise RequestError("auth", "wrong or missing token; nothing runs without the runner's token")
            if body_len > settings.max_model_bytes:
                raise RequestError("too_large", f"the request's {body_len / 1e6:.1f} MB are over the runner's bound "
                                                f"of {settings.max_model_bytes / 1e6:.1f} MB (its --max-model-mb)")
            return header, wire.recv_exact(sock, body_len)
        except wire.ProtocolError as err:
            raise RequestError("malformed", str(err)) from None
        finally:
            stall.cancel()

    def _dispatch(self, header: dict, body: bytes) -> dict:
        op = header.get("op")
        if op == "facts":
            provider, threads = self._device(header)
            return {"facts": device_facts(provider, threads), "max_model_bytes": self.server.settings.max_model_bytes}
        if op == "put":
            return self._put(header, body)
        if op == "time":
            return self._time(header, body)
        raise RequestError("malformed", f"unknown op {str(op)[:40]!r}; the runner answers facts, put and time")

    def _device(self, header: dict) -> tuple[str, int | None]:
        """The provider and thread count a request asks for, else the runner's."""
        settings = self.server.settings
        provider = header.get("provider") or settings.provider
        threads = header.get("threads", -1)
        if not isinstance(provider, str) or not (isinstance(threads, int) and not isinstance(threads, bool)
                                                 and -1 <= threads <= 1024):
            raise RequestError("malformed", "`provider` must be a string and `threads` an integer in 0..1024")
        try:
            providers(provider)
        except InputError as err:
            raise RequestError("input", str(err)) from None
        return provider, settings.threads if threads == -1 else threads or None

    def _put(self, header: dict, body: bytes) -> dict:
        digest = hashlib.sha256(body).hexdigest()
        if header.get("sha256") != digest:
            raise RequestError("malformed", "the model's sha256 does not match the one its header gives")
        try:
            screen(body)
        except Refused as err:
            raise RequestError("refused", str(err)) from None
        self.server.keep(digest, body)
        return {}

    def _time(self, header: dict, body: bytes) -> dict:
        server, settings = self.server, self.server.settings
        digests = header.get("models")
        if not (isinstance(digests, list) and 0 < len(digests) <= MAX_MODELS_PER_REQUEST
                and all(isinstance(d, str) for d in digests)):
            raise RequestError("malformed", f"`models` must list 1..{MAX_MODELS_PER_REQUEST} model sha256 digests")
        missing = [d for d in dict.fromkeys(digests) if d not in server.models]
        if missing:
            raise RequestError("missing", f"{len(missing)} of the models are not on the runner; put them first",
                               missing=missing)
        provider, threads = self._device(header)
        try:
            feeds = wire.unpack_arrays(header.get("inputs"), body)
            protocol = Protocol(**_known(header.get("protocol") or {}, Protocol))
        except (wire.ProtocolError, InputError, TypeError) as err:
            raise RequestError("malformed", first_line(err)) from None
        models = [server.models[d] for d in digests]
        for d in digests:
            server.models.move_to_end(d)
        run_options = ort.RunOptions()
        deadline = threading.Timer(settings.request_timeout, setattr, (run_options, "terminate", True))
        start = time.perf_counter()
        deadline.start()
        try:
            seconds = time_models(models, feeds, provider, threads, protocol, run_options)
        except InputError as err:
            raise RequestError("input", str(err)) from None
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's errors have no common type; each is one line back
            if run_options.terminate:
                raise RequestError("timeout", f"timing took over the runner's {settings.request_timeout:g} s bound "
                                              "per request (its --request-timeout)") from None
            raise RequestError("failed", f"ONNX Runtime could not run the model: {first_line(err)}") from None
        finally:
            deadline.cancel()
        server.timed += 1
        logger.info("timed %d models (%s, %s threads) in %.2f s for %s:%s [request %d]", len(models), provider,
                    threads or "default", time.perf_counter() - start, *self.client_address[:2], server.timed)
        return {"seconds": seconds, "facts": device_facts(provider, threads)}


def _known(values: object, cls: type) -> dict:
    """``values`` as keyword arguments of the dataclass ``cls``; a TypeError for anything else."""
    names = {f.name for f in fields(cls)}
    if not isinstance(values, dict) or set(values) - names:
        raise TypeError(f"`protocol` takes only {', '.join(sorted(names))}")
    return values


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the request finished as the timer fired


def main(argv: list[str] | None = None) -> int:
    """``haqc-runner``: serve until interrupted; exit 2 on a bad option, a bad token file or a busy port."""
    parser = argparse.ArgumentParser(prog="haqc-runner", description="Time ONNX models on this device for haqc "
                                     "(docs/runner.md). Serves only the holder of its token.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}; 0: any free one).")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="Intra-op threads to time with unless a request asks (default 1; 0: ONNX Runtime's "
                             "default, all physical cores).")
    parser.add_argument("--execution-provider", default="CPU", metavar="EP",
                        help="ONNX Runtime execution provider to time on unless a request asks (CPU, CUDA, TensorRT).")
    parser.add_argument("--max-model-mb", type=float, default=256, metavar="MB",
                        help="Largest model (or input data) a request may carry, in MB (default 256).")
    parser.add_argument("--request-timeout", type=float, default=120, metavar="S",
                        help="Seconds one timing request may run (default 120).")
    parser.add_argument("--token-file", type=Path, default=None,
                        help=f"Where the token is kept (default {auth.default_token_file()}); made on first start.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log every request.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="haqc-runner: %(message)s", level=logging.INFO if args.verbose else logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        if args.threads < 0 or args.max_model_mb <= 0 or args.request_timeout <= 0:
            raise InputError("--threads must be at least 0, --max-model-mb and --request-timeout positive")
        provider = args.execution_provider.removesuffix("ExecutionProvider")
        providers(provider)
        token_file = args.token_file or auth.default_token_file()
        token, created = auth.load_or_create(token_file)
        settings = Settings(token, provider, args.threads or None, int(args.max_model_mb * 1e6), args.request_timeout)
        try:
            runner = Runner((args.host, args.port), settings)
        except OSError as err:
            raise InputError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); "
                             "choose another --port") from None
    except (HaqcError, OSError) as err:
        print(f"haqc-runner: error: {first_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    host, port = runner.server_address[:2]
    if created:
        print(f"new token (shown once; kept in {token_file}, mode 0600): {token}", flush=True)
    print(f"haqc-runner: listening on {host}:{port} (ONNX Runtime {ort.__version__}, {provider}, "
          f"{args.threads or 'default'} threads); token in {token_file}", flush=True)
    try:
        with runner:
            runner.serve_forever()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
