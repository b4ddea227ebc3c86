"""`StreamingRecorder`: a handler that records events and checks the stream invariants."""

from __future__ import annotations

import difflib
import time
from pathlib import Path

from pipeline_ex.events import Delta, Done, Event
from pipeline_ex.modes.recording import read_recording, record_line
from pipeline_ex.streaming.buffer import BufferHandler


class StreamingRecorder(BufferHandler):
    """Records every event it receives, with its arrival time, for assertions in tests.

    Besides the `BufferHandler` queries (`.events`, `.deltas`, `.text`, `.done`, `.by_step`) it offers
    `assert_complete()`, which checks the stream rules, and `save(path)` / `load(path)` in JSONL with
    relative timestamps, so a recorded stream can be replayed with its timing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offsets_ms: list[float] = []
        self._started: float | None = None

    def handle_event(self, event: Event) -> None:
        """Record the event and when it arrived."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        self.events.append(event)
        self.offsets_ms.append((now - self._started) * 1000)

    def assert_complete(self) -> None:
        """Check the stream rules; raise AssertionError describing every violation.

        Per step: exactly one Done, and it is the step's last event; no empty deltas; the text deltas
        joined equal `Done.response.text`. Across the recording: `seq` strictly increases within a run.
        """
        problems: list[str] = []
        if not self.events:
            problems.append("no events were recorded")
        last_seq: dict[str, int] = {}
        for position, event in enumerate(self.events):
            previous = last_seq.get(event.run_id)
            if previous is not None and event.seq <= previous:
                problems.append(f"event #{position} ({event.step}): seq {event.seq} does not exceed {previous}")
            last_seq[event.run_id] = event.seq
            if isinstance(event, Delta) and not event.content:
                problems.append(f"event #{position} ({event.step}): empty delta")
        for step, events in self.by_step.items():
            dones = [e for e in events if isinstance(e, Done)]
            if len(dones) != 1:
                problems.append(f"step {step!r}: {len(dones)} Done events, expected exactly 1")
                continue
            if not isinstance(events[-1], Done):
                problems.append(f"step {step!r}: events arrived after its Done")
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
                problems.append(f"step {step!r}: joined deltas differ from Done.response.text\n{diff}")
        if problems:
            raise AssertionError("stream is not complete:\n- " + "\n- ".join(problems))

    def save(self, path: str | Path) -> None:
        """Write the recording as JSONL: one event per line, with `t_ms` relative to the first event."""
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(record_line(o, e) for o, e in zip(self.offsets_ms, self.events, strict=True))

    @classmethod
    def load(cls, path: str | Path) -> StreamingRecorder:
        """Read a recording written by `save`."""
        recorder = cls()
        for offset, event in read_recording(path):
            recorder.events.append(event)
            recorder.offsets_ms.append(offset)
        return recorder
