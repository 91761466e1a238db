"""Atomic output: every file haqc writes goes to a temporary file in the same
directory and is renamed into place, so a crash or kill leaves either the old
file or the complete new one, never a partial one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from haqc.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else remove it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"output directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"output directory {path.parent} is not writable; choose another -o path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; outputs get the usual (or the replaced file's) mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _mode_for(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# Protobuf cannot serialize a message over 2 GiB: larger models keep their
# tensors in an external data file beside the model.
_EXTERNAL_DATA_ABOVE = 1_800_000_000


def check_output_path(path: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...], force: bool) -> Path:
    """Refuse to overwrite an input (None entries are skipped), or an existing file without ``force``."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).resolve() == path.resolve():
            raise InputError(f"output {path} is the input model; write to another path")
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name such as {path / 'model.onnx'}")
    if path.exists() and not force:
        raise InputError(f"output {path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise InputError(f"output directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"output directory {path.parent} is not writable; choose another -o path")
    return path


def save_model(model, path: str | os.PathLike) -> None:
    """Write an ONNX model atomically (external data beside it when over ~2 GB)."""
    import onnx

    path = Path(path)
    with atomic_path(path) as tmp:
        if model.ByteSize() > _EXTERNAL_DATA_ABOVE:
            from onnx.external_data_helper import load_external_data_for_model

            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data")
            # save_model moved the caller's weights out to the file; read them back in.
            load_external_data_for_model(model, str(path.parent))
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
