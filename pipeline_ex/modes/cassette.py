"""Event cassettes: record a live step's event stream to JSONL, and replay it later.

A cassette is the JSONL a `StreamingRecorder` saves: one event per line with its time offset. The line
of each step's Done also holds the request the step answered (its step path, messages, model and
options; see `StepRequest`), and a replay serves a recording only to the same request: anything else is
a `CassetteError` that shows what differs. Replay goes through the normal step machinery (see
`cassette_generator`), so replayed events are built by the same bridge as live ones.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Delta, Done, Event
from pipeline_ex.modes.recording import read_records, record_line
from pipeline_ex.modes.request import StepRequest

RERECORD = "re-record it with PIPELINE_TEST_MODE=record (for @pytest.mark.cassette tests: pytest --pipeline-record)"
"""How to record a cassette again, for error messages."""


class CassetteError(PipelineError):
    """A cassette is missing, unreadable, misplaced, or has no recording of the request being replayed."""


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
    """One recorded step run: its deltas with the pause before each, its Done, and the request it answered.

    `request` is None in cassettes recorded before requests were recorded; those cannot be replayed.
    """

    deltas: tuple[tuple[float, Delta], ...]
    done: Done
    request: StepRequest | None = None


class CassetteRecorder:
    """The handler that records one step run into a cassette; the step's Done line carries its request."""

    def __init__(self, cassette: Cassette, request: StepRequest) -> None:
        self.cassette = cassette
        self.request = request

    def handle_event(self, event: Event) -> None:
        """Append the event to the cassette (with the request, when it is the Done)."""
        self.cassette.append(event, self.request if isinstance(event, Done) else None)


class Cassette:
    """One cassette file, opened for recording or for replay."""

    def __init__(self, path: str | Path, *, record: bool) -> None:
        self.path = Path(path)
        self.record = record
        self._lock = threading.Lock()
        self._started: float | None = None
        self._replay: dict[str, list[RecordedStep]] | None = None
        if record:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    # -- recording -------------------------------------------------------------------------------

    def recorder(self, request: StepRequest) -> CassetteRecorder:
        """A handler that records one step run, which answers `request`, into this cassette."""
        return CassetteRecorder(self, request)

    def append(self, event: Event, request: StepRequest | None = None) -> None:
        """Append one event, and with a Done the request its step answered."""
        now = time.perf_counter()
        with self._lock:
            if self._started is None:
                self._started = now
            line = record_line((now - self._started) * 1000, event, request.to_json() if request else None)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line)

    # -- replaying -------------------------------------------------------------------------------

    def _load(self) -> dict[str, list[RecordedStep]]:
        if not self.path.is_file():
            raise CassetteError(
                f"no cassette at {self.path}; record it first with PIPELINE_TEST_MODE=record "
                "(or `pytest --pipeline-record` for @pytest.mark.cassette tests)"
            )
        pending: dict[tuple[str, str], list[tuple[float, Delta]]] = defaultdict(list)
        steps: dict[str, list[RecordedStep]] = defaultdict(list)
        last_offset: dict[tuple[str, str], float] = {}
        try:
            records = list(read_records(self.path))
            requests = [StepRequest.from_json(r) if r is not None else None for _, _, r in records]
        except ValueError as error:
            raise CassetteError(f"cassette {self.path}: {error}; {RERECORD}") from error
        for number, ((offset, event, _), request) in enumerate(zip(records, requests, strict=True), start=1):
            if not isinstance(event, Delta | Done):
                raise CassetteError(
                    f"cassette {self.path}: record {number} is a {event.type} event; a cassette holds only "
                    f"the Delta and Done events of steps; {RERECORD}"
                )
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
                steps[event.step].append(RecordedStep(tuple(deltas), event, request))
                last_offset.pop(key, None)
        return steps

    def next_recording(self, request: StepRequest) -> RecordedStep:
        """The recorded run that answers `request`: the first one left of its step made for the same request.

        Runs of one step with the same request replay in recording order; runs with different requests
        may replay in any order (as concurrent steps finish in any order).

        :raises CassetteError: no run of the step is left, the step's next run was recorded for another
            request (the message shows what differs), or the cassette predates recorded requests.
        """
        step = request.step
        with self._lock:
            if self._replay is None:
                self._replay = self._load()
            left = self._replay.get(step)
            if not left:
                recorded = ", ".join(sorted(k for k, v in self._replay.items() if v)) or "none left"
                raise CassetteError(
                    f"cassette {self.path} has no recorded run left for step {step!r} (recorded: {recorded}); "
                    + RERECORD
                )
            if any(recording.request is None for recording in left):
                raise CassetteError(
                    f"cassette {self.path} was recorded without the request of step {step!r} (by an older "
                    "pipeline-ex), so a replay cannot check that it answers this one; " + RERECORD
                )
            for position, recording in enumerate(left):
                assert recording.request is not None
                if request.matches(recording.request):
                    return left.pop(position)
            closest = left[0].request
            assert closest is not None
            differences = "\n".join(f"  {line}" for line in request.differences(closest))
            raise CassetteError(
                f"cassette {self.path} does not match step {step!r}: it was recorded for another request "
                f"(- recorded, + now)\n{differences}\n{RERECORD}"
            )
