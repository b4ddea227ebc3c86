"""`StreamingRecorder`: a handler that records events and checks the stream invariants."""

from __future__ import annotations

import difflib
import time
from pathlib import Path

from pipeline_ex.events import (
    LIFECYCLE_TYPES,
    Delta,
    Done,
    LifecycleEvent,
    RunEvent,
    RunFinished,
    StepEvent,
    StepFinished,
    StepStarted,
)
from pipeline_ex.modes.recording import read_recording, record_line
from pipeline_ex.streaming.buffer import BufferHandler


class StreamingRecorder(BufferHandler):
    """Records every event it receives, with its arrival time, for assertions in tests.

    Besides the `BufferHandler` queries (`.events`, `.deltas`, `.text`, `.done`, `.by_step`) it offers
    `assert_complete()`, which checks the stream rules, and `save(path)` / `load(path)` in JSONL with
    relative timestamps, so a recorded stream can be replayed with its timing.

    Given to a run (`on_event=`, or the `stream_recorder` fixture) it also receives the run's lifecycle
    events (`lifecycle = True`): they are kept in `.lifecycle`, and `.timeline` holds every event in
    arrival order. `.events` holds the steps' Delta and Done events only, as for a step's own handler.
    (The lifecycle events are `.lifecycle_events`; the class attribute `lifecycle` is the opt-in.)
    """

    lifecycle = True
    """Run-level recorders receive `StepStarted`, `StepFinished` and `RunFinished` as well."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets_ms: list[float] = []
        """When each of `.events` arrived, in ms after the first recorded event."""
        self.lifecycle_events: list[LifecycleEvent] = []
        self.timeline: list[RunEvent] = []
        """Every recorded event, lifecycle events included, in arrival order."""
        self._timeline_offsets: list[float] = []
        self._started: float | None = None

    def handle_event(self, event: RunEvent) -> None:
        """Record the event and when it arrived."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        offset = (now - self._started) * 1000
        self.timeline.append(event)
        self._timeline_offsets.append(offset)
        if isinstance(event, LIFECYCLE_TYPES):
            self.lifecycle_events.append(event)
            return
        self.events.append(event)
        self.offsets_ms.append(offset)

    def clear(self) -> None:
        """Forget every recorded event."""
        super().clear()
        self.offsets_ms.clear()
        self.lifecycle_events.clear()
        self.timeline.clear()
        self._timeline_offsets.clear()
        self._started = None

    def assert_complete(self) -> None:
        """Check the stream rules; raise AssertionError describing every violation.

        Per LLM step instance (a step path within a run): exactly one Done, and it is the instance's last
        event; no empty deltas; the text deltas joined equal `Done.response.text`. Per run: `seq` strictly
        increases over every recorded event, lifecycle events included. When lifecycle events were
        recorded: every `StepStarted` has one `StepFinished` after it, an LLM step's Done comes between
        the two, and `RunFinished` is the run's one last event.
        """
        problems: list[str] = []
        if not self.events:
            problems.append("no events were recorded")
        last_seq: dict[str, int] = {}
        in_timeline = [e for e in self.timeline if not isinstance(e, LIFECYCLE_TYPES)]
        ordered: list[RunEvent] = self.timeline if in_timeline == self.events else list(self.events)
        for position, event in enumerate(ordered):
            previous = last_seq.get(event.run_id)
            name = getattr(event, "step", event.type)
            if previous is not None and event.seq <= previous:
                problems.append(f"event #{position} ({name}): seq {event.seq} does not exceed {previous}")
            last_seq[event.run_id] = event.seq
            if isinstance(event, Delta) and not event.content:
                problems.append(f"event #{position} ({name}): empty delta")
        many_runs = len({event.run_id for event in ordered}) > 1
        instances: dict[tuple[str, str], list[StepEvent]] = {}
        for event in self.events:
            instances.setdefault((event.run_id, event.step), []).append(event)
        for (run_id, step), events in instances.items():
            label = f"step {step!r}" + (f" of run {run_id}" if many_runs else "")
            problems.extend(_instance_problems(label, events))
        if self.lifecycle_events:
            problems.extend(self._lifecycle_problems(many_runs))
        if problems:
            raise AssertionError("stream is not complete:\n- " + "\n- ".join(problems))

    def _lifecycle_problems(self, many_runs: bool) -> list[str]:
        problems: list[str] = []
        open_steps: dict[tuple[str, str], int] = {}
        finished_runs: set[str] = set()
        llm_steps: set[tuple[str, str]] = set()
        done_steps: set[tuple[str, str]] = set()
        for position, event in enumerate(self.timeline):
            run = f" of run {event.run_id}" if many_runs else ""
            if event.run_id in finished_runs:
                problems.append(f"event #{position} ({event.type}){run} arrived after RunFinished")
                continue
            if isinstance(event, StepStarted):
                key = (event.run_id, event.step)
                if key in open_steps:
                    problems.append(f"step {event.step!r}{run} started again before it finished")
                open_steps[key] = position
                if event.kind == "llm":
                    llm_steps.add(key)
            elif isinstance(event, StepFinished):
                key = (event.run_id, event.step)
                if open_steps.pop(key, None) is None:
                    problems.append(f"step {event.step!r}{run} finished without a StepStarted before it")
                elif key in llm_steps and event.status == "ok" and key not in done_steps:
                    problems.append(f"LLM step {event.step!r}{run} finished ok without a Done")
            elif isinstance(event, RunFinished):
                finished_runs.add(event.run_id)
                for run_id, step in open_steps:
                    if run_id == event.run_id:
                        problems.append(f"step {step!r}{run} had no StepFinished before RunFinished")
            elif isinstance(event, Done) and (event.run_id, event.step) in open_steps:
                done_steps.add((event.run_id, event.step))
            elif (event.run_id, event.step) not in open_steps and (event.run_id, event.step) in llm_steps:
                problems.append(
                    f"{event.type} of step {event.step!r}{run} arrived outside its StepStarted/StepFinished"
                )
        for run_id in {event.run_id for event in self.timeline} - finished_runs:
            problems.append("no RunFinished was recorded" + (f" for run {run_id}" if many_runs else ""))
        return problems

    def save(self, path: str | Path) -> None:
        """Write the recording as JSONL: one event per line (lifecycle events too), `t_ms` from the first."""
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(record_line(o, e) for o, e in zip(self._timeline_offsets, self.timeline, strict=True))

    @classmethod
    def load(cls, path: str | Path) -> StreamingRecorder:
        """Read a recording written by `save`."""
        recorder = cls()
        for offset, event in read_recording(path):
            recorder.timeline.append(event)
            recorder._timeline_offsets.append(offset)
            if isinstance(event, LIFECYCLE_TYPES):
                recorder.lifecycle_events.append(event)
            else:
                recorder.events.append(event)
                recorder.offsets_ms.append(offset)
        return recorder


def _instance_problems(label: str, events: list[StepEvent]) -> list[str]:
    """What breaks the stream rules in one LLM step instance's events."""
    dones = [e for e in events if isinstance(e, Done)]
    if len(dones) != 1:
        return [f"{label}: {len(dones)} Done events, expected exactly 1"]
    problems = []
    if not isinstance(events[-1], Done):
        problems.append(f"{label}: events arrived after its Done")
    joined = "".join(e.content for e in events if isinstance(e, Delta) and e.kind == "text")
    final = dones[0].response.text
    if joined != final:
        diff = (
            "\n".join(
                difflib.unified_diff(
                    final.splitlines(), joined.splitlines(), "Done.response.text", "joined deltas", lineterm=""
                )
            )
            or f"Done.response.text={final!r}\njoined deltas     ={joined!r}"
        )
        problems.append(f"{label}: joined deltas differ from Done.response.text\n{diff}")
    return problems
