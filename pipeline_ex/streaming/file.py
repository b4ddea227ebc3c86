"""`FileHandler` and `JsonlFileHandler`: write a step's stream to a file without losing delivered output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pipeline_ex.events import Delta, Done, Event


class FileHandler:
    """Writes each event to a file as soon as it arrives.

    Every write goes straight to the operating system (the file is unbuffered), so a crash of the
    process loses nothing that was already delivered. On Done the file is fsynced and closed.

    Options:
        path: the file to write; parent directories are created.
        format: "text" (the text deltas, default) or "jsonl" (one JSON event per line).
        append: append instead of truncating (default false).
    """

    default_format: Literal["text", "jsonl"] = "text"

    def __init__(
        self, path: str | os.PathLike[str], format: Literal["text", "jsonl"] | None = None, append: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = format or self.default_format
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab" if append else "wb", buffering=0)  # noqa: SIM115 - closed on Done

    def handle_event(self, event: Event) -> None:
        """Write the event; on Done, fsync and close the file."""
        if self._file.closed:  # the same instance receiving a later step's events: keep appending
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        if self.format == "jsonl":
            self._file.write(event.model_dump_json().encode() + b"\n")
        elif isinstance(event, Delta) and event.kind == "text":
            self._file.write(event.content.encode())
        if isinstance(event, Done):
            os.fsync(self._file.fileno())
            self._file.close()


class JsonlFileHandler(FileHandler):
    """A `FileHandler` whose format defaults to JSONL: one event per line."""

    default_format: Literal["text", "jsonl"] = "jsonl"
