"""The JSONL format of event recordings, shared by cassettes and `StreamingRecorder.save`.

One event per line, with its time offset in milliseconds: `{"t_ms": 12.5, "event": {...}}`. Lines are
redacted before they are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pipeline_ex.events import EVENT_ADAPTER, Event
from pipeline_ex.redaction import redact


def record_line(offset_ms: float, event: Event) -> str:
    """One line of a recording: the event and its time offset in ms (the JSONL both recordings use)."""
    record = {"t_ms": round(offset_ms, 3), "event": redact(event.model_dump(mode="json"))}
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_recording(path: str | Path) -> Iterator[tuple[float, Event]]:
    """The (offset in ms, event) pairs of a recording file.

    :raises ValueError: naming the file and line of anything that is not a recorded event.
    """
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                event = EVENT_ADAPTER.validate_python(record["event"])
                offset = float(record["t_ms"])
            except Exception as error:
                raise ValueError(f"{path}:{number}: not a recorded event: {error}") from error
            yield offset, event
