"""Atomic output: every file haqc writes goes to a temporary file in the same
directory and is renamed into place, so a crash or kill leaves either the old
file or the complete new one, never a partial one.

Temporaries are named ``.NAME.PID.XXXXXXXX.tmp`` (NAME: the final file's name,
PID: the writer's process id). A SIGKILL skips the cleanup, so the next write
of the same NAME removes the temporaries whose writer is no longer running.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from haqc.errors import InputError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else remove it."""
    path = Path(path)
    fd, tmp = _create_temp(path, tempfile.mkstemp)
    os.close(fd)
    os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; outputs get the usual (or the replaced file's) mode
    try:
        with _write_errors(path):
            yield Path(tmp)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """A write that fails (disk full, I/O error) is one line about the output, not a traceback."""
    try:
        yield
    except OSError as err:
        raise InputError(f"cannot write {path} ({err.strerror or err}); free space or choose another output path") from None


def _create_temp(path: Path, make: Callable[..., T]) -> T:
    """``make`` (tempfile.mkstemp or mkdtemp) a temporary for ``path`` beside it, after sweeping stale ones.

    Creating it is the only reliable writability test: os.access says yes to root on
    a read-only mount such as /sys, and to anyone on a full or quota-bound disk.
    """
    if not path.parent.is_dir():
        raise InputError(f"output directory {path.parent} does not exist; create it first")
    _remove_stale_temps(path)
    try:
        return make(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"output directory {path.parent} is not writable ({err.strerror or err}); "
                         "make it writable or choose another output path") from None


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporaries of ``path`` whose writer has died (a SIGKILL skips atomic_path's cleanup).

    Only names of exactly our pattern count (``.NAME.PID.XXXXXXXX.tmp``: the random part
    has no dot), so temporaries of another output such as ``NAME.1`` are never taken
    for ours. A live writer's temporaries (another process writing the same path) stay.
    """
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d{1,9})\.[^.]+\.tmp")
    try:
        with os.scandir(path.parent) as entries:
            stale = [e for e in entries if (m := pattern.fullmatch(e.name)) and not _alive(int(m.group(1)))]
    except OSError:  # a directory we may write in but not list: nothing we can see to sweep
        return
    for entry in stale:
        # Best effort: another haqc may be sweeping too, or the file may belong to another user.
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (writers of one output on two machines race anyway)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _mode_for(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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
    """Refuse to overwrite an input (None entries are skipped), or an existing file without ``force``,
    and check the directory takes a new file now rather than after the work is done."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).resolve() == path.resolve():
            raise InputError(f"output {path} is the input model; write to another path")
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name such as {path / 'model.onnx'}")
    if path.exists() and not force:
        raise InputError(f"output {path} already exists; pass `force` to overwrite it")
    fd, probe = _create_temp(path, tempfile.mkstemp)
    os.close(fd)
    os.unlink(probe)
    return path


PLOT_SUFFIXES = (".html", ".png")


def check_plot_path(path: str | os.PathLike) -> None:
    """A plot is a page or an image: refuse other names before any work."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"`plot` {path}: use a .html or .png file name")


def save_model(model, path: str | os.PathLike) -> None:
    """Write an ONNX model atomically (external data beside it when over ~2 GB)."""
    path = Path(path)
    if model.ByteSize() > _EXTERNAL_DATA_ABOVE:
        _save_with_external_data(model, path)
    else:
        atomic_write_bytes(path, model.SerializeToString())


def _save_with_external_data(model, path: Path) -> None:
    """Write ``path`` and ``path.data`` in a temporary directory beside them, then rename both out.

    The model records its data file's name, so both are written under their final
    names inside the temporary directory; the data goes into place first, so a
    kill leaves the old model (with a new data file when it had one of the same
    name) or the complete new pair, never a model without its data.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    data = path.with_name(f"{path.name}.data")
    tmp = Path(_create_temp(path, tempfile.mkdtemp))
    try:
        with _write_errors(path):
            onnx.save_model(model, str(tmp / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name)
            # save_model moved the caller's weights out to the file; read them back in.
            load_external_data_for_model(model, str(tmp))
            for final in (data, path):
                _fsync(tmp / final.name)
                os.chmod(tmp / final.name, _mode_for(final))
            for final in (data, path):
                os.replace(tmp / final.name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
