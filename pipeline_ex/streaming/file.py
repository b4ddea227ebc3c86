"""`FileHandler` and `JsonlFileHandler`: write a step's stream to a file without losing delivered output.

A step holds an exclusive lock on its file while it writes, so two runs that name the same file cannot
mix their output: the second one fails with `FileInUseError` (its step then fails with `HandlerError`).
The lock is `fcntl.flock` on the very descriptor the handler writes through, rather than a lock-file
library such as `filelock`: it needs no second file, and the kernel drops it when the file is closed or
the process dies, so a crashed run never leaves the file locked. (Where there is no `fcntl`, on Windows,
files are not locked.)
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Delta, Done, Event
from pipeline_ex.file_lock import try_lock

_Stamp = tuple[int, int, int]
"""A file's (inode, size, modification time in ns), as this run's previous step left it."""

_runs_started: OrderedDict[tuple[str, str], _Stamp | None] = OrderedDict()
"""(run id, file) pairs this process already wrote, so later steps of the same run append (bounded)."""
_runs_lock = threading.Lock()
_RUNS_REMEMBERED = 4096
_held: dict[tuple[str, str], tuple[io.FileIO, list[int]]] = {}
"""(run id, file) -> (the open, locked file, [how many of the run's steps write it now]): steps of one
run that run at the same time (a parallel group, a for_each) share the run's lock and descriptor."""
_ADVICE = "give each run its own path"


class FileInUseError(PipelineError):
    """Another run is writing (or wrote, between this run's steps) the file a `FileHandler` was given."""


def _stamp(fd: int) -> _Stamp:
    status = os.fstat(fd)
    return status.st_ino, status.st_size, status.st_mtime_ns


def _claim(file: io.FileIO, path: Path, run_id: str, append: bool) -> None:
    """Lock the open file for this step and truncate it at the run's first write (unless appending).

    :raises FileInUseError: another step holds the lock, or (unless appending, which adds to whatever the
        file holds by design) another run wrote the file since this run's previous step wrote it.
    """
    if not try_lock(file.fileno()):
        raise FileInUseError(
            f"{path} is being written by another run (a step locks its file until its Done); {_ADVICE}"
        )
    key = (run_id, str(path.resolve()))
    with _runs_lock:
        first = key not in _runs_started
        left = _runs_started.get(key)
        if first:
            _runs_started[key] = None
            if len(_runs_started) > _RUNS_REMEMBERED:
                _runs_started.popitem(last=False)
    if first:
        if not append:
            os.ftruncate(file.fileno(), 0)
    elif not append and left is not None and _stamp(file.fileno()) != left:
        raise FileInUseError(f"{path}: another run wrote it after this run's previous step did; {_ADVICE}")


def _release(file: io.FileIO, path: Path, run_id: str) -> None:
    """Remember how this step left the file (for the run's next step), then close it, which unlocks it."""
    key = (run_id, str(path.resolve()))
    with _runs_lock:
        if key in _runs_started:
            _runs_started[key] = _stamp(file.fileno())
    file.close()


class FileHandler:
    """Writes each event to a file as soon as it arrives.

    Every write goes straight to the operating system (the file is unbuffered), so a crash of the
    process loses nothing that was already delivered. On Done the file is fsynced and closed.

    A run's first event truncates the file; later events of the same run, including later steps that
    name the same file (say from `defaults:`), append to it.

    One run per file: a step holds an exclusive, non-blocking `flock` on the file from its first event to
    its Done; steps of the same run that run at the same time share it (in JSONL each line names its
    step; text from concurrent steps is mixed, so give them their own paths).

    A step of another run (in this process or another one) that reaches the file meanwhile
    fails with `FileInUseError`, so its step fails with `HandlerError`, every handler still gets its Done,
    and the file keeps only the first run's output. So does a run whose file another run rewrote between
    two of its steps, unless the handler appends: `append` is for files that runs add to one after
    another (a shared log). Give runs that may overlap their own paths.

    Options:
        path: the file to write; parent directories are created.
        format: "text" (the text deltas, default) or "jsonl" (one JSON event per line).
        append: keep what the file already holds, even at a run's first event (default false).
    """

    default_format: Literal["text", "jsonl"] = "text"

    def __init__(
        self, path: str | os.PathLike[str], format: Literal["text", "jsonl"] | None = None, append: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = format or self.default_format
        self.append = append
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: io.FileIO | None = None
        self._refused = False
        """The current step could not have the file: write nothing until its Done."""

    def _open(self, run_id: str) -> io.FileIO:
        key = (run_id, str(self.path.resolve()))
        with _runs_lock:
            shared = _held.get(key)
            if shared is not None:  # another step of this run is writing it right now
                shared[1][0] += 1
                self._file = shared[0]
                return shared[0]
        # Opened for appending, never truncated here: the file may be another run's until it is locked.
        file = io.FileIO(self.path, "ab")  # unbuffered; closed on Done
        try:
            _claim(file, self.path, run_id, self.append)
        except BaseException:
            file.close()
            raise
        with _runs_lock:
            _held[key] = (file, [1])
        self._file = file
        return file

    def _close(self, file: io.FileIO, run_id: str) -> None:
        """The step is done with the file: fsync it; the run's last step writing it releases it."""
        os.fsync(file.fileno())
        self._file = None
        key = (run_id, str(self.path.resolve()))
        with _runs_lock:
            shared = _held.get(key)
            if shared is not None and shared[0] is file:
                shared[1][0] -= 1
                if shared[1][0] > 0:
                    return
                del _held[key]
        _release(file, self.path, run_id)

    def handle_event(self, event: Event) -> None:
        """Write the event; on Done, fsync and close the file (which releases its lock)."""
        if self._refused:
            self._refused = not isinstance(event, Done)
            return
        file = self._file
        if file is None or file.closed:
            try:
                file = self._open(event.run_id)
            except FileInUseError:
                self._refused = not isinstance(event, Done)
                raise
        try:
            if self.format == "jsonl":
                file.write(event.model_dump_json().encode() + b"\n")
            elif isinstance(event, Delta) and event.kind == "text":
                file.write(event.content.encode())
        finally:
            if isinstance(event, Done):  # a failed last write (a full disk) still releases the file
                self._close(file, event.run_id)


class JsonlFileHandler(FileHandler):
    """A `FileHandler` whose format defaults to JSONL: one event per line.

    Options:
        format: "jsonl" (one JSON event per line, default) or "text" (the text deltas).
    """

    default_format: Literal["text", "jsonl"] = "jsonl"
