"""Event cassettes: record a live step's event stream to JSONL, and replay it later.

A cassette is the JSONL a `StreamingRecorder` saves: one event per line with its time offset. The line
of each step's Done also holds the request the step answered (its step path, messages, model and
options; see `StepRequest`), and a replay serves a recording only to the same request: anything else is
a `CassetteError` that shows what differs. Replay goes through the normal step machinery (see
`cassette_generator`), so replayed events are built by the same bridge as live ones.

A step with tools is recorded with its tool-call deltas, `ToolCall` and `ToolResult` events, and read
back as one `RecordedRound` per call of the model. The recording answers for the model only: on replay
the step runs its tools again, and their results may differ from the recorded ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Delta, Done, Partial, StepEvent, ToolCall, ToolResult
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
class RecordedRound:
    """One call of the model in a recorded step run: its deltas (with the pause before each), and its tool calls.

    A step without tools has one round. A step with tools has one per round of its tool loop: each round
    that called tools holds the `ToolCall` events the step emitted for them (and, for reading, the
    `ToolResult`s the tools returned; a replay runs the tools again).
    """

    deltas: tuple[tuple[float, Delta], ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class RecordedStep:
    """One recorded step run: its rounds of model output, its Done, and the request it answered.

    `request` is None in cassettes recorded before requests were recorded; those cannot be replayed.
    """

    rounds: tuple[RecordedRound, ...]
    done: Done
    request: StepRequest | None = None
    source: Path | None = None
    """The cassette it was read from, for error messages."""

    @property
    def deltas(self) -> tuple[tuple[float, Delta], ...]:
        """Every recorded delta of the step, over all its rounds, with the pause before each."""
        return tuple(delta for round_ in self.rounds for delta in round_.deltas)


_MODEL_FAILURES = frozenset({"provider", "timeout", "truncated"})
"""Failures of a model call: a step that failed so after a round of tool calls had called the model again."""


def _streamed_calls(deltas: list[tuple[float, Delta]]) -> list[ToolCall]:
    """The tool calls the `tool_call` deltas of one round streamed, put together from their fragments."""
    fragments: dict[int, list[Delta]] = {}
    for _, delta in deltas:
        if delta.kind == "tool_call":
            fragments.setdefault(delta.index, []).append(delta)
    calls = []
    for index, parts in sorted(fragments.items()):
        try:
            arguments = json.loads("".join(part.content for part in parts))
        except ValueError:
            arguments = None
        last = parts[-1]
        calls.append(
            ToolCall(
                step=last.step,
                run_id=last.run_id,
                seq=last.seq,
                id=last.tool_call_id or f"call_{index}",
                name=last.tool_name or "",
                arguments=arguments if isinstance(arguments, dict) else {},
            )
        )
    return calls


class _StepReader:
    """Splits one step run's recorded events into rounds, as `Cassette._load` reads them in order.

    A round ends with the tool calls the model made in it: the first delta after a round's `ToolCall`
    events starts the next round, and so does a `ToolCall` after the round's tool results unless one of
    the round's deltas already streamed that call (a step without streaming has no deltas to tell by).
    """

    def __init__(self) -> None:
        self.rounds: list[RecordedRound] = []
        self.deltas: list[tuple[float, Delta]] = []
        self.calls: list[ToolCall] = []
        self.results: list[ToolResult] = []
        self.last_offset: float | None = None
        self.attempts = 1
        """The structured reply's attempt so far (a repair of an invalid reply is a model call of its own)."""

    def _close_round(self) -> None:
        self.rounds.append(RecordedRound(tuple(self.deltas), tuple(self.calls), tuple(self.results)))
        self.deltas, self.calls, self.results = [], [], []

    def add(self, offset: float, event: Delta | ToolCall | ToolResult) -> None:
        """Take the step's next recorded event."""
        if isinstance(event, Delta):
            if self.calls:
                self._close_round()
            pause = 0.0 if self.last_offset is None else offset - self.last_offset
            self.deltas.append((pause, event))
        elif isinstance(event, ToolCall):
            streamed = any(delta.tool_call_id == event.id for _, delta in self.deltas)
            if self.results and not streamed:
                self._close_round()
            self.calls.append(event)
        else:
            self.results.append(event)
        self.last_offset = offset

    def attempt(self, number: int) -> None:
        """A `Partial` of the structured reply's attempt `number` was recorded.

        The first one of a repair attempt follows the delta that began its object: that delta, and the
        ones after it, are the repair's own model call.
        """
        if number <= self.attempts:
            return
        self.attempts = number
        first = self.deltas.pop() if self.deltas else None
        self._close_round()
        if first is not None:
            self.deltas.append(first)

    def finish(self, done: Done, request: StepRequest | None, source: Path) -> RecordedStep:
        """The recorded step run that `done` closed."""
        out_of_rounds = done.error is not None and done.error.type == "tool_rounds"
        if out_of_rounds and not self.calls:
            # the step stopped at its round limit before emitting the calls: only their fragments were recorded
            self.calls = _streamed_calls(self.deltas)
        self._close_round()
        rounds = self.rounds
        if rounds[-1].tool_calls and done.error is not None and done.error.type in _MODEL_FAILURES:
            rounds.append(RecordedRound())  # the model call that failed before it streamed anything
        first = rounds[0]
        if first.deltas and done.ttft_ms is not None:
            rounds[0] = replace(first, deltas=((done.ttft_ms, first.deltas[0][1]), *first.deltas[1:]))
        return RecordedStep(tuple(rounds), done, request, source)


class CassetteRecorder:
    """The handler that records one step run into a cassette; the step's Done line carries its request."""

    def __init__(self, cassette: Cassette, request: StepRequest) -> None:
        self.cassette = cassette
        self.request = request

    def handle_event(self, event: StepEvent) -> None:
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

    def append(self, event: StepEvent, request: StepRequest | None = None) -> None:
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
        readers: dict[tuple[str, str], _StepReader] = defaultdict(_StepReader)
        steps: dict[str, list[RecordedStep]] = defaultdict(list)
        try:
            records = list(read_records(self.path))
            requests = [StepRequest.from_json(r) if r is not None else None for _, _, r in records]
        except ValueError as error:
            raise CassetteError(f"cassette {self.path}: {error}; {RERECORD}") from error
        for number, ((offset, event, _), request) in enumerate(zip(records, requests, strict=True), start=1):
            if isinstance(event, Partial):  # the step parses its structured reply again from the replayed text
                readers[(event.run_id, event.step)].attempt(event.attempt)
                continue
            if not isinstance(event, Delta | ToolCall | ToolResult | Done):
                raise CassetteError(
                    f"cassette {self.path}: record {number} is a {event.type} event; a cassette holds only "
                    f"the events of LLM steps (delta, tool_call, tool_result, partial, done); {RERECORD}"
                )
            key = (event.run_id, event.step)
            if isinstance(event, Done):
                steps[event.step].append(readers.pop(key, _StepReader()).finish(event, request, self.path))
            else:
                readers[key].add(offset, event)
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
