"""The runner's token: made once, kept in a file only its owner can read, compared in constant time.

The runner executes the models it is sent, so every request must carry this token. The
runner and a client on the same machine find it in the same file; a client elsewhere gets
it from ``HAQC_RUNNER_TOKEN`` or the file ``HAQC_RUNNER_TOKEN_FILE`` names (never the command
line, where other users see it in the process list).
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from haqc.errors import InputError

TOKEN_ENV, TOKEN_FILE_ENV = "HAQC_RUNNER_TOKEN", "HAQC_RUNNER_TOKEN_FILE"


def default_token_file() -> Path:
    """``$XDG_CONFIG_HOME/haqc/runner-token``, else ``~/.config/haqc/runner-token``."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "haqc" / "runner-token"


def load_or_create(path: Path) -> tuple[str, bool]:
    """``(token, created)``: the token in ``path``, or a new one written there with mode 0600."""
    try:
        return read(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def read(path: Path) -> str:
    """The token in ``path``; an InputError if others may read the file or it holds no token."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"token file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                         f"run chmod 600 {path}")
    token = path.read_text().strip()
    if not token:
        raise InputError(f"token file {path} is empty; delete it to have the runner make a new token")
    return token


def client_token() -> str:
    """The token a client sends: ``$HAQC_RUNNER_TOKEN``, else the file ``$HAQC_RUNNER_TOKEN_FILE``
    names, else this user's runner token file (a runner on this machine)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = Path(os.environ[TOKEN_FILE_ENV]) if os.environ.get(TOKEN_FILE_ENV) else default_token_file()
    try:
        return read(path)
    except OSError as err:
        raise InputError(f"no runner token: set {TOKEN_ENV}, or {TOKEN_FILE_ENV} to a file holding it "
                         f"({path}: {err.strerror or err})") from None


def matches(given: object, token: str) -> bool:
    """Whether ``given`` is the token, in time that does not depend on where they differ."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())
