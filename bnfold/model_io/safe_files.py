"""Careful file operations: atomic writes, folders created (and removed again), a folder lock, fsync,
signals held off while a commit runs."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bnfold.errors import InputError, OutputError


def check_folder_creatable(folder: Path, what: str) -> Path:
    """`folder` is a folder, or its nearest existing ancestor is one (bnfold creates the rest); returns that one."""
    existing = folder.absolute()
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} folder '{folder}' cannot be created: '{existing}' is not a folder")
    return existing


def probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in `folder`: permission bits alone do not tell (root, read-only mounts, /proc)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".bnfold-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"{what} cannot be written in '{folder}' ({error.strerror or error})") from None


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and any missing parents; the ones created, outermost first."""
    missing = []
    current = folder.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: cannot create this folder ({error.strerror or error})") from None
    return list(reversed(missing))


def remove_created_folders(created: list[Path]) -> None:
    """Remove folders `make_folders` created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` (its folder created if need be), then rename it into place."""
    if str(path.parent):
        make_folders(path.parent)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    except OSError as error:
        raise OutputError(f"{path}: cannot write it ({error.strerror or error})") from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write it ({error.strerror or error})") from error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends: a commit is never cut in half (SIGKILL is: see above)."""
    import signal

    deferred = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` held by this process (POSIX flock; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
