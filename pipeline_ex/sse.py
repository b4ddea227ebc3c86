"""Server-Sent Events framing for pipeline_ex events, and a plain-text rendering of a stream.

Each event is one frame: `event: <its type>`, `id: <run_id>:<seq>` and `data: <the event as JSON>`. The
type is `delta`, `tool_call`, `tool_result`, `partial` or `done` for a step's events, and
`step_started`, `step_finished` or `run_finished` for the lifecycle events a stream carries when it was
made with `lifecycle=True` (the server's always are).
A run that fails after the response started gets an `event: error` frame (type and message, never a
traceback), every stream ends with an `event: end` frame, and a `: keepalive` comment goes out whenever
the stream has been idle for `keepalive` seconds (2 s by default: below the 5 s read timeout of a default
httpx client). `retry_frame()` sets how long a browser `EventSource` waits before reconnecting.

The framing is written here by hand (it is a few lines) rather than taken from sse-starlette: its ping
is periodic rather than idle-based, and these frames are also used away from HTTP (the server's resume
log, tests). The HTTP side — responses, disconnects, cancellation — is Starlette's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from json.encoder import encode_basestring as _json_string
from typing import Any

from pipeline_ex.errors import PipelineError, RemoteRunError, RunCancelled, StepError
from pipeline_ex.events import Delta, RunEvent
from pipeline_ex.redaction import redact_text

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
DEFAULT_KEEPALIVE = 2.0
DEFAULT_RETRY_MS = 3000
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _frame(event: str, data: str, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # Only CR and LF end SSE lines; str.splitlines() would also split on U+2028 and others inside JSON.
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return "\n".join(lines) + "\n\n"


def event_id(event: RunEvent) -> str:
    """The SSE id of an event, `<run_id>:<seq>`, which `Last-Event-ID` sends back to resume."""
    return f"{event.run_id}:{event.seq}"


def _text_delta_json(delta: Delta) -> str | None:
    """A plain text Delta's JSON, exactly as `model_dump_json` writes it; None for any other Delta.

    Written by hand because it runs once per streamed event: pydantic's serializer takes about 1.7 µs
    here, this 0.7 µs. It covers Deltas without tool-call fields whose strings are ASCII (so no lone
    surrogate, which pydantic refuses); the rest go through pydantic.
    """
    fields = delta.__dict__
    content, step, run_id = fields["content"], fields["step"], fields["run_id"]
    if fields["tool_call_id"] is not None or fields["tool_name"] is not None:
        return None
    if not (content.isascii() and step.isascii() and run_id.isascii()):
        return None
    return (
        f'{{"type":"delta","content":{_json_string(content)},"step":{_json_string(step)},'
        f'"run_id":{_json_string(run_id)},"seq":{fields["seq"]},"index":{fields["index"]},'
        f'"kind":"{fields["kind"]}"}}'
    )


def event_frame(event: RunEvent) -> str:
    """One SSE frame for an event."""
    data = (_text_delta_json(event) if type(event) is Delta else None) or event.model_dump_json()
    if "\n" in data or "\r" in data:  # never from JSON, which escapes them; framed line by line all the same
        return _frame(event.type, data, event_id(event))
    return f"event: {event.type}\nid: {event.run_id}:{event.seq}\ndata: {data}\n\n"


def error_payload(error: BaseException) -> dict[str, Any]:
    """What a client is told about a failure: the kind and message, never a traceback."""
    if isinstance(error, StepError):
        info = error.done.error
        return {
            "type": info.type if info is not None else "error",
            "message": redact_text(str(error)),
            "step": error.step,
            "run_id": error.done.run_id,
        }
    if isinstance(error, RemoteRunError):  # made fit for clients by the worker that ran it
        return dict(error.payload)
    if isinstance(error, PipelineError):  # our own messages name no internals
        kind = "cancelled" if isinstance(error, RunCancelled) else "error"
        return {"type": kind, "message": redact_text(str(error))}
    return {"type": "internal", "message": "the run failed; see the server log"}


def error_frame(error: BaseException, payload: dict[str, Any] | None = None) -> str:
    """The `event: error` frame for a run that failed after the response started.

    `payload` replaces `error_payload(error)` (a server adds its reference id to it, for instance).
    """
    return _frame("error", json.dumps(error_payload(error) if payload is None else payload))


def retry_frame(milliseconds: int = DEFAULT_RETRY_MS) -> str:
    """The `retry:` field: how long an `EventSource` waits before it reconnects (it dispatches no event)."""
    return f"retry: {int(milliseconds)}\n\n"


END_ID = "end"
"""The seq part of the `end` frame's id once the run has finished: `<run_id>:end`."""


def end_frame(run_id: str | None = None, *, finished: bool = False) -> str:
    """The last frame of every stream.

    With `finished` (the run is over, and this is the last thing there is to say about it) the frame has
    the id `<run_id>:end`, so a client that reconnects with it as `Last-Event-ID` is told there is nothing
    left (`204`), even when the run failed after its last event.
    """
    return _frame("end", json.dumps({"run_id": run_id}), f"{run_id}:{END_ID}" if finished and run_id else None)


def gap_frame(first_missing: int, last_missing: int) -> str:
    """Tells a resuming client that events `first_missing..last_missing` are no longer kept."""
    return _frame("gap", json.dumps({"from_seq": first_missing, "to_seq": last_missing}))


KEEPALIVE_FRAME = ": keepalive\n\n"


_PUMP_AHEAD = 64
"""Frames the pump of `with_keepalive` may read ahead of the response (the log's bounds still hold)."""
_FRAME, _END, _FAILED = 0, 1, 2


async def with_keepalive(frames: AsyncIterator[str], keepalive: float = DEFAULT_KEEPALIVE) -> AsyncIterator[str]:
    """Pass frames through, adding a keepalive comment after each `keepalive` seconds of silence.

    Written for a per-frame cost of one queue hand-off: one task per stream reads the frames into a small
    queue, and one timer per stream, re-armed once per `keepalive` period (not per frame), puts the
    comment in when the response has been waiting that long. (A task and a timed `asyncio.wait` per frame
    cost the server more than framing the event did.) Closing this stream cancels the source where it is
    waiting and closes it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=_PUMP_AHEAD)
    iterator = frames.__aiter__()
    waiting_since: float | None = None
    closing = False
    timer: asyncio.TimerHandle

    async def pump() -> None:
        item: tuple[int, Any] = (_END, None)
        try:
            async for frame in iterator:
                await queue.put((_FRAME, frame))
        except asyncio.CancelledError as error:
            if closing:
                raise
            item = (_FAILED, error)
        except Exception as error:
            item = (_FAILED, error)
        await queue.put(item)

    def tick() -> None:
        nonlocal timer
        now = loop.time()
        if waiting_since is not None and now - waiting_since >= keepalive:
            if not queue.full():
                queue.put_nowait((_FRAME, KEEPALIVE_FRAME))
            due = keepalive
        else:
            due = keepalive if waiting_since is None else waiting_since + keepalive - now
        timer = loop.call_later(due, tick)

    task = loop.create_task(pump())
    timer = loop.call_later(keepalive, tick)
    try:
        while True:
            if queue.empty():
                waiting_since = loop.time()
                kind, value = await queue.get()
                waiting_since = None
            else:
                kind, value = queue.get_nowait()
            if kind == _FRAME:
                yield value
            elif kind == _FAILED:
                raise value
            else:
                return
    finally:
        timer.cancel()
        if not task.done():
            closing = True
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        close = getattr(iterator, "aclose", None)
        if close is not None:  # close the framed stream now, not when it is garbage collected
            await close()


async def sse_frames(events: AsyncIterator[RunEvent], *, run_id: str | None = None) -> AsyncIterator[str]:
    """Frame a run's events as SSE: one frame per event, an error frame on failure, then the end frame."""
    last_run = run_id
    try:
        async for event in events:
            last_run = event.run_id
            yield event_frame(event)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        yield error_frame(error)
    yield end_frame(last_run)


async def text_chunks(
    events: AsyncIterator[object], describe: Callable[[BaseException], dict[str, Any]] | None = None
) -> AsyncIterator[str]:
    """Only the text of the text deltas, for plain-text streaming (`curl -N`); failures end with a line.

    Anything in the stream that is not a Delta (a Done, a lifecycle event) is skipped; the stream must not
    have gaps (a server gives its plain-text responses every event of their run). `describe` replaces
    `error_payload` for the failure line; a `reference` in its payload is shown too.
    """
    try:
        async for event in events:
            if isinstance(event, Delta) and event.kind == "text":
                yield event.content
    except asyncio.CancelledError:
        raise
    except Exception as error:
        payload = (describe or error_payload)(error)
        message, reference = payload["message"], payload.get("reference")
        if reference and reference not in message:
            message = f"{message} (reference {reference})"
        yield f"\n[error: {message}]\n"


def parse_frames(text: str) -> list[dict[str, str]]:
    """Split SSE text into frames (`event`, `id`, `data` fields). Handy for clients.

    Comments and blocks that only set `retry` are dropped (a browser dispatches no event for them).
    """
    frames = []
    for block in re.split(r"\r\n\r\n|\r\r|\n\n", text):
        fields: dict[str, str] = {}
        for line in _LINE_BREAK.split(block):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        if fields and set(fields) != {"retry"}:
            frames.append(fields)
    return frames
