"""`FileHandler` and `JsonlFileHandler`: write a step's stream to a file without losing delivered output."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from pipeline_ex.events import Delta, Done, Event

_runs_started: OrderedDict[tuple[str, str], None] = OrderedDict()
"""(run id, file) pairs already truncated, so later steps of the same run append (bounded)."""
_RUNS_REMEMBERED = 4096


def _first_write_of_run(run_id: str, path: Path) -> bool:
    key = (run_id, str(path.resolve()))
    if key in _runs_started:
        return False
    _runs_started[key] = None
    if len(_runs_started) > _RUNS_REMEMBERED:
        _runs_started.popitem(last=False)
    return True


class FileHandler:
    """Writes each event to a file as soon as it arrives.

    Every write goes straight to the operating system (the file is unbuffered), so a crash of the
    process loses nothing that was already delivered. On Done the file is fsynced and closed.

    A run's first event truncates the file; later events of the same run, including later steps that
    name the same file (say from `defaults:`), append to it.

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

    def _open(self, run_id: str) -> io.FileIO:
        truncate = _first_write_of_run(run_id, self.path) and not self.append
        self._file = io.FileIO(self.path, "wb" if truncate else "ab")  # unbuffered; closed on Done
        return self._file

    def handle_event(self, event: Event) -> None:
        """Write the event; on Done, fsync and close the file."""
        file = self._file if self._file is not None and not self._file.closed else self._open(event.run_id)
        if self.format == "jsonl":
            file.write(event.model_dump_json().encode() + b"\n")
        elif isinstance(event, Delta) and event.kind == "text":
            file.write(event.content.encode())
        if isinstance(event, Done):
            os.fsync(file.fileno())
            file.close()


class JsonlFileHandler(FileHandler):
    """A `FileHandler` whose format defaults to JSONL: one event per line."""

    default_format: Literal["text", "jsonl"] = "jsonl"
