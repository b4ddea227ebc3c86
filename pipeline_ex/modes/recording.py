"""The JSONL format of event recordings, shared by cassettes and `StreamingRecorder.save`.

One event per line (tool calls, tool results and partial objects too), with its time offset in
milliseconds: `{"t_ms": 12.5, "event": {...}}`. In a cassette, the line of each step's Done also
carries the request the step answered (`"request": {...}`, see `pipeline_ex.modes.request`). Lines
are redacted before they are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline_ex.events import EVENT_ADAPTER, RunEvent
from pipeline_ex.redaction import redact


def record_line(offset_ms: float, event: RunEvent, request: Mapping[str, Any] | None = None) -> str:
    """One line of a recording: the event and its time offset in ms (the JSONL both recordings use).

    :param request: the request the step answered, written with its Done in cassettes.
    """
    record: dict[str, Any] = {"t_ms": round(offset_ms, 3)}
    if request is not None:
        record["request"] = redact(request)
    record["event"] = redact(event.model_dump(mode="json"))
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_records(path: str | Path) -> Iterator[tuple[float, RunEvent, dict[str, Any] | None]]:
    """The (offset in ms, event, recorded request or None) triples of a recording file.

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
                request = record.get("request")
                if request is not None and not isinstance(request, dict):
                    raise TypeError(f"the request is a {type(request).__name__}, not an object")
            except Exception as error:
                raise ValueError(f"{path}:{number}: not a recorded event: {error}") from error
            yield offset, event, request


def read_recording(path: str | Path) -> Iterator[tuple[float, RunEvent]]:
    """The (offset in ms, event) pairs of a recording file (a cassette's requests are skipped).

    :raises ValueError: naming the file and line of anything that is not a recorded event.
    """
    for offset, event, _ in read_records(path):
        yield offset, event
