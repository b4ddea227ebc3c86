"""Event cassettes: record a live step's event stream to JSONL, and replay it later.

A cassette is the JSONL a `StreamingRecorder` saves: one event per line with its time offset. Replay
goes through the normal step machinery (see `cassette_generator`), so replayed events are built by the
same bridge as live ones.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Delta, Done, Event
from pipeline_ex.modes.recording import read_recording, record_line


class CassetteError(PipelineError):
    """A cassette is missing, unreadable, or has no recording for the step being replayed."""


def cassette_path(folder: str | Path, name: str, *, named_after: str = "the workflow's name") -> Path:
    """The cassette file for `name` in `folder`: `folder/name.jsonl`, which must stay inside `folder`.

    A name may hold sub-folders (`reports/weekly`), but one that would put the file outside the folder
    (`..` parts, an absolute path, a symlink inside the folder that points out of it) is rejected rather
    than rewritten, so two different names never share one cassette.

    :param named_after: where the name comes from, for the error message.
    :raises CassetteError: naming the problem and a name that would work.
    """
    folder = Path(folder)
    pure = PurePosixPath(name)
    outside = f"would put the cassette outside the cassette folder {folder}"
    if not name.strip():
        problem = "is empty"
    elif "\x00" in name:
        problem = "contains a NUL character"
    elif pure.is_absolute() or ".." in pure.parts:
        problem = outside
    elif not pure.parts:
        problem = "is not a file name"
    else:
        path = folder / f"{name}.jsonl"
        if path.resolve().is_relative_to(folder.resolve()):
            return path
        problem = f"{outside} (through a symbolic link)"
    safe = pure.name.replace("\x00", "")
    if safe in ("", ".", ".."):
        safe = "cassette"
    raise CassetteError(
        f"cassette name {name!r} ({named_after}) {problem}; "
        f"name it with a plain file name such as {safe!r} (no '..' parts, no leading '/')"
    )


class ReplayedProviderError(RuntimeError):
    """Replays a provider failure that was recorded in the cassette."""


@dataclass(frozen=True)
class RecordedStep:
    """One recorded step run: its deltas with the pause before each, and its Done."""

    deltas: tuple[tuple[float, Delta], ...]
    done: Done


class Cassette:
    """One cassette file, opened for recording or for replay."""

    def __init__(self, path: str | Path, *, record: bool) -> None:
        self.path = Path(path)
        self.record = record
        self._lock = threading.Lock()
        self._started: float | None = None
        self._replay: dict[str, deque[RecordedStep]] | None = None
        if record:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    # -- recording -------------------------------------------------------------------------------

    def handle_event(self, event: Event) -> None:
        """Append an event (a handler that recording steps deliver to)."""
        now = time.perf_counter()
        with self._lock:
            if self._started is None:
                self._started = now
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(record_line((now - self._started) * 1000, event))

    # -- replaying -------------------------------------------------------------------------------

    def _load(self) -> dict[str, deque[RecordedStep]]:
        if not self.path.is_file():
            raise CassetteError(
                f"no cassette at {self.path}; record it first with PIPELINE_TEST_MODE=record "
                "(or `pytest --pipeline-record` for @pytest.mark.cassette tests)"
            )
        pending: dict[tuple[str, str], list[tuple[float, Delta]]] = defaultdict(list)
        steps: dict[str, deque[RecordedStep]] = defaultdict(deque)
        last_offset: dict[tuple[str, str], float] = {}
        try:
            recording = list(read_recording(self.path))
        except ValueError as error:
            raise CassetteError(str(error)) from error
        for offset, event in recording:
            key = (event.run_id, event.step)
            if isinstance(event, Delta):
                previous = last_offset.get(key)
                pause = 0.0 if previous is None else offset - previous
                pending[key].append((pause, event))
                last_offset[key] = offset
            else:
                deltas = pending.pop(key, [])
                if deltas and event.ttft_ms is not None:
                    deltas[0] = (event.ttft_ms, deltas[0][1])
                steps[event.step].append(RecordedStep(tuple(deltas), event))
                last_offset.pop(key, None)
        return steps

    def next_recording(self, step: str) -> RecordedStep:
        """The next recorded run of `step`, in recording order."""
        with self._lock:
            if self._replay is None:
                self._replay = self._load()
            queue = self._replay.get(step)
            if not queue:
                recorded = ", ".join(sorted(k for k, v in self._replay.items() if v)) or "none left"
                raise CassetteError(
                    f"cassette {self.path} has no recorded run left for step {step!r} (recorded: {recorded}); "
                    "record it again"
                )
            return queue.popleft()
