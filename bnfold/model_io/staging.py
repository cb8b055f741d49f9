"""Putting a written model in place without ever losing a file.

Writing happens in a hidden staging folder beside the destination OUT,
`.bnfold-<pid>-<random>`, fsynced before anything is renamed. An external-data
output pairs OUT with `OUT.<token>.data`, the token derived from the input's
identity (its files' device, inode, size and times), bnfold's version and the
options: the same input gives the same name (and the same bytes), and two
different writes never share a data file.

The commit, under a lock on the folder so that concurrent runs take turns:

1. note in the staging folder which files are about to change;
2. rename the new data file into place (a name nothing refers to yet);
3. rename the new model file over OUT, atomically: a reader sees the old model
   with its old data, or the new one with its new data, never a mix;
4. fsync the folder, then delete the data file the old OUT referred to, if bnfold
   named it (`OUT.<token>.data`): a data file named otherwise may serve another model.

A run killed between any two steps leaves OUT loading with its own data. The next
run in the folder removes what a killed run left (its staging folder, and a data
file nothing refers to) once that run's process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from bnfold.errors import InputError, OutputError
from bnfold.model_io.safe_files import (
    check_folder_creatable,
    folder_lock,
    fsync_folder,
    make_folders,
    probe_writable,
    remove_created_folders,
    same_file,
    signals_deferred,
)

logger = logging.getLogger(__name__)

_STAGE = re.compile(r"^\.bnfold-(\d+)-")
_INTENT = "intent.json"


def data_file_pattern(destination_name: str) -> re.Pattern:
    """The names bnfold gives the data files of `destination_name`."""
    return re.compile(rf"^{re.escape(destination_name)}\.[0-9a-f]{{12}}\.data$")


def data_file_name(destination: Path, token: str) -> str:
    return f"{destination.name}.{token}.data"


def data_token(sources: Iterable[Path], *parts: str) -> str:
    """12 hex digits naming the output's data file: from the input files' identity and `parts` (options)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in sources):
        status = path.stat()
        digest.update(
            f"{path}\0{status.st_dev}\0{status.st_ino}\0{status.st_size}\0{status.st_mtime_ns}\0"
            f"{status.st_ctime_ns}\0".encode()
        )
    for part in parts:
        digest.update(f"{part}\0".encode())
    return digest.hexdigest()[:12]


def check_output_path(destination: Path) -> None:
    """The output's folder must be a folder (or not exist yet: it is created), and an existing output a regular
    file (or a link, replaced)."""
    try:
        check_folder_creatable(destination.parent, f"{destination}: output")
        status = os.lstat(destination) if os.path.lexists(destination) else None
    except OSError as error:
        raise InputError(f"{destination}: cannot use this path ({error.strerror or error})") from None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise InputError(f"{destination}: is a directory")
    if status is not None and not (stat.S_ISREG(status.st_mode) or stat.S_ISLNK(status.st_mode)):
        raise InputError(f"{destination}: is not a regular file (a FIFO, socket or device); bnfold writes files only")


def refuse_clobbering(
    sources: Iterable[Path], destination: Path, data_name: str | None, report: Path | None = None
) -> None:
    """Nothing bnfold writes may be one of its inputs (model or data files), and the report may not be
    any of those nor the output (or its data file)."""
    protected = [Path(p) for p in sources]
    for path, role in (
        (destination, "the output"),
        (destination.parent / data_name if data_name else None, "the output's data file"),
    ):
        if path is not None and any(same_file(path, source) for source in protected):
            raise InputError(
                f"{destination}: {role} would be {path}, one of the input's files; bnfold never writes over its input"
            )
    if report is None:
        return
    taken = [*protected, destination] + ([destination.parent / data_name] if data_name else [])
    if any(same_file(report, path) for path in taken):
        raise InputError(
            f"--report {report}: that is one of the model files (input, output or data); give the report its own path"
        )
    check_report_path(report)


def check_report_path(report: Path) -> None:
    """The report's folder must be writable (or creatable), and the report (if it exists) a regular file."""
    folder = report.parent if str(report.parent) else Path(".")
    existing = check_folder_creatable(folder, f"--report {report}:")
    if os.path.lexists(report) and not report.is_file():
        raise InputError(f"--report {report}: is not a regular file")
    if report.exists() and not os.access(report, os.W_OK):
        raise InputError(f"--report {report}: cannot be written (permission denied)")
    probe_writable(existing, f"--report {report}:")


class Stage:
    """The staging folder beside `destination`; `commit()` puts its files in place, leaving it removes them."""

    def __init__(self, destination: str | os.PathLike, token: str) -> None:
        self.destination = Path(destination)
        check_output_path(self.destination)
        self.folder = self.destination.parent
        self.created = make_folders(self.folder)  # removed again unless the output is committed
        self.committed = False
        with folder_lock(self.folder):
            remove_stale_stages(self.folder)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".bnfold-{os.getpid()}-", dir=self.folder))
        except OSError as error:
            remove_created_folders(self.created)
            raise OutputError(f"{self.destination}: cannot write in '{self.folder}' ({error.strerror})") from None
        self.model = self.path / self.destination.name
        self.data_name = data_file_name(self.destination, token)

    @property
    def data(self) -> Path:
        return self.path / self.data_name

    def commit(self) -> None:
        try:
            with signals_deferred(), folder_lock(self.folder):
                self._commit()
        except OSError as error:
            raise OutputError(f"{self.destination}: cannot put it in place ({error.strerror or error})") from error
        self.committed = True
        self.discard()

    def _commit(self) -> None:
        previous = sorted(referenced_data_files(self.destination) - {self.data_name})
        mode = _existing_mode(self.destination)
        has_data = self.data.exists()
        intent = {
            "destination": self.destination.name,
            "data": self.data_name if has_data else None,
            "previous": previous,
        }
        (self.path / _INTENT).write_text(json.dumps(intent))
        for path in (self.data, self.model) if has_data else (self.model,):
            if mode is not None:
                os.chmod(path, mode)
        if has_data:
            os.replace(self.data, self.folder / self.data_name)
        os.replace(self.model, self.destination)
        fsync_folder(self.folder)
        for name in previous:
            (self.folder / name).unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.committed:
            remove_created_folders(self.created)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


def _existing_mode(destination: Path) -> int | None:
    """The permission bits of the file being replaced (not of a link's target: the link is replaced)."""
    try:
        status = os.lstat(destination)
    except OSError:
        return None
    return stat.S_IMODE(status.st_mode) if stat.S_ISREG(status.st_mode) else None


def referenced_data_files(destination: Path) -> set[str]:
    """The data files named by bnfold that the model file at `destination` refers to (none for a link)."""
    if not destination.is_file() or destination.is_symlink():
        return set()
    pattern = data_file_pattern(destination.name)
    try:
        present = {entry.name for entry in os.scandir(destination.parent) if pattern.match(entry.name)}
    except OSError:
        present = {"?"}  # cannot tell: read the model
    if not present:
        return set()  # no bnfold data file beside it: nothing to read the old model for
    return {name for name in _data_locations(destination) if pattern.match(name)}


def _data_locations(path: Path) -> set[str]:
    from bnfold.graph.proto_walk import proto_tensors
    from bnfold.model_io.wire_format import WireError, strip_large_tensors

    try:
        model = strip_large_tensors(path)[0]
    except (WireError, OSError, ValueError):
        return set()
    return {entry.value for tensor in proto_tensors(model) for entry in tensor.external_data if entry.key == "location"}


def remove_stale_stages(folder: Path) -> None:
    """Remove the staging folders (and what they were putting in place) of bnfold runs that no longer live."""
    for stage in _stale_stages(folder):
        note = stage / _INTENT
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            intent = json.loads(note.read_text())
            destination = folder / intent["destination"]
            pattern = data_file_pattern(destination.name)
            still_used = _data_locations(destination) if destination.is_file() else set()
            for name in [intent["data"], *intent["previous"]]:
                if name and pattern.match(name) and name not in still_used:
                    (folder / name).unlink(missing_ok=True)
        logger.info("removing %s, left by a bnfold run that no longer runs", stage)
        shutil.rmtree(stage, ignore_errors=True)


def _stale_stages(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _STAGE.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match.group(1))):
            yield Path(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True
