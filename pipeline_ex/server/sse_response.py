"""The SSE response of a run in this process: every ready event framed and sent at once, from one task.

`RunSSEResponse` streams a `RunLog` (a run's own response, or a resume with `Last-Event-ID`): it sends the
`retry:` frame, then, each time the log has news, takes *every* event ready (`RunLog.take`), frames them
(`RunFrames`) and hands them to the server in one `send`; it ends with the error frame of a run that failed
(with the server's reference id) and the end frame. A keepalive comment goes out after `keepalive` seconds
of waiting, from one timer per stream re-armed once per period (never per frame).

Why by hand rather than Starlette's `StreamingResponse` (over an async generator, with
`sse.with_keepalive`): that costs a task hop per event for the keepalive pump, another for the generator,
an anyio task group to notice a disconnect, and one `send` per frame through every middleware's send
wrapper, which together cost the server more than the event itself. Here the response waits on the log
directly (one future per wait, resolved by the log's `append`), so one wake-up and one `send` carry
whatever the run produced meanwhile. Once woken, the response lets the loop turn once more before it
takes: under load a run produces about one event per turn of the loop, so this makes batches of two or
more where there would be one (a time window does not: under load a turn lasts longer than any window
short enough to go unnoticed), and costs one turn, microseconds, when the server is idle. Disconnects
are noticed by a task reading `receive` (an idle stream would otherwise only notice at its next
`send`): it wakes the waiting response, which then closes. Headers, media type and the ASGI messages
are still Starlette's `Response` and uvicorn's. The stream runs as a task of its own, awaited by the
request's: a wake-up then resumes one coroutine rather than the whole chain of the server's, Starlette's
and the middlewares' calls above the response; and once the start went through the middleware, the
body frames go to the server's `send` directly where the app allows it (`body_send`).

On exit, however it happens (the run ended, the client left, the request was cancelled at any `await`),
a run whose client is gone is cancelled (`cancel_on_exit`), the events sent are counted, and `on_close`
runs (the primary response's `log.release`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pipeline_ex.events import Done
from pipeline_ex.gaps import Gap
from pipeline_ex.server.body_send import body_send
from pipeline_ex.server.metrics import EventCounter
from pipeline_ex.server.runs import RunLog
from pipeline_ex.sse import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RETRY_MS,
    KEEPALIVE_FRAME,
    MEDIA_TYPE,
    end_frame,
    error_frame,
    event_frame,
    gap_frame,
    retry_frame,
)

_KEEPALIVE = KEEPALIVE_FRAME.encode()


class RunFrames:
    """The SSE text of one stream of a run, taken from its log as it grows: `retry:`, events, gaps, error, end.

    :param after_seq: the last seq the client has (0 for the whole run).
    :param primary: the response that started the run: the log keeps every event until it was taken.
    :param cancel_on_exit: cancel the run if the stream closes before it ended (its client left).
    :param describe: what the client is told about a failure (the server's payload, with its reference).
    """

    def __init__(
        self,
        log: RunLog,
        after_seq: int = 0,
        *,
        primary: bool = False,
        cancel_on_exit: bool = False,
        retry_ms: int = DEFAULT_RETRY_MS,
        counter: EventCounter | None = None,
        describe: Callable[[BaseException], dict[str, Any]] | None = None,
    ) -> None:
        self.log = log
        self.after_seq = after_seq
        self.primary = primary
        self.cancel_on_exit = cancel_on_exit
        self.counter = counter
        self.describe = describe
        self.ended = False
        """The end frame was taken: there is nothing more to send."""
        self._sent = 0  # events taken since the counter was last added to (at each Done: never per event)
        self._closed = False
        self._head = retry_frame(retry_ms)
        if primary:
            log.hold_from(after_seq)

    def take(self) -> str:
        """The frames of everything ready now (empty when nothing is); the last ones end with the end frame."""
        if self.ended:
            return ""
        log = self.log
        parts = [self._head] if self._head else []
        self._head = ""
        try:
            items, self.after_seq = log.take(self.after_seq, hold=self.primary)
            for item in items:
                if type(item) is Gap:
                    parts.append(gap_frame(item.first_seq, item.last_seq))
                    continue
                parts.append(event_frame(item))  # type: ignore[arg-type]
                self._sent += 1
                if type(item) is Done and self.counter is not None:
                    self.counter.add(self._sent)
                    self._sent = 0
            if log.finished:  # and take() gave all there was: the end goes out with the last events
                if log.error is not None:
                    parts.append(self._error_frame(log.error))
                self._end(parts)
        except Exception as error:  # framing failed: say so, and end the stream as a failed run's
            parts.append(self._error_frame(error))
            self._end(parts)
        return "".join(parts)

    def _error_frame(self, error: BaseException) -> str:
        return error_frame(error, self.describe(error) if self.describe is not None else None)

    def _end(self, parts: list[str]) -> None:
        self.close()
        parts.append(end_frame(self.log.run_id, finished=self.log.finished))
        self.ended = True

    def close(self) -> None:
        """Count the events taken, and cancel the run if its client is gone before it ended (once)."""
        if self._closed:
            return
        self._closed = True
        if self.counter is not None:
            self.counter.add(self._sent)
        self._sent = 0
        if self.cancel_on_exit and not self.log.finished:
            self.log.cancel()  # the client is gone: stop the provider stream now


class RunSSEResponse(Response):
    """Stream `RunFrames` as `text/event-stream`, one `send` per batch of ready events (see the module docstring).

    :param keepalive: seconds of waiting before a `: keepalive` comment.
    :param on_close: called once the response has ended, however it ended.
    :param streaming: entered for as long as the response streams (the metrics' count of active streams).
    """

    def __init__(
        self,
        frames: RunFrames,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        headers: dict[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
        streaming: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.frames = frames
        self.keepalive = keepalive
        self.on_close = on_close
        self.streaming = streaming or contextlib.nullcontext()
        self.status_code = 200
        self.media_type = MEDIA_TYPE
        self.background = None
        self.init_headers(headers)  # no body: no content-length, the server chunks the stream
        self._waiting: asyncio.Future[None] | None = None
        self._waiting_since = 0.0
        self._keepalive_due = False
        self._gone = False
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the run's end frame is sent or the client disconnects; then clean up (see `RunFrames.close`)."""
        with self.streaming:
            try:
                with contextlib.suppress(OSError):  # the client went away while we were sending
                    # A task of its own: each wake-up then resumes this one coroutine, not the dozen of the
                    # server's, Starlette's and the middlewares' `__call__`s that await the response.
                    stream = self._stream(receive, send, body_send(scope, send))
                    await asyncio.get_running_loop().create_task(stream)
            finally:
                self.frames.close()
                if self.on_close is not None:
                    self.on_close()

    async def _stream(self, receive: Receive, start_send: Send, send: Send) -> None:
        loop = asyncio.get_running_loop()
        frames, log = self.frames, self.frames.log
        await start_send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        watcher = loop.create_task(self._watch(receive))
        self._timer = loop.call_later(self.keepalive, self._tick, loop)
        waiter: asyncio.Future[None] | None = None
        try:
            while not self._gone:
                text = frames.take()
                if text:
                    ended = frames.ended
                    await send({"type": "http.response.body", "body": text.encode(), "more_body": not ended})
                    if ended:
                        return
                    continue  # more may have arrived while sending
                waiter = self._waiting = log.waiter()
                self._waiting_since = loop.time()
                await waiter
                self._waiting = None
                # One more turn of the loop before taking: the events other tasks produce in this turn
                # join the batch. On a busy server that halves the sends; on an idle one it is microseconds.
                await asyncio.sleep(0)
                if self._keepalive_due and not self._gone:
                    self._keepalive_due = False
                    log.discard(waiter)  # woken by the timer, not by the log
                    await send({"type": "http.response.body", "body": _KEEPALIVE, "more_body": True})
        finally:
            self._waiting = None
            if self._timer is not None:
                self._timer.cancel()
            if waiter is not None:
                log.discard(waiter)
            watcher.cancel()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once per `keepalive` period: if the response has been waiting that long, wake it for a keepalive."""
        now = loop.time()
        waiting = self._waiting
        if waiting is not None and now - self._waiting_since >= self.keepalive:
            self._keepalive_due = True
            if not waiting.done():
                waiting.set_result(None)
            due = self.keepalive
        else:
            due = self.keepalive if waiting is None else self._waiting_since + self.keepalive - now
        self._timer = loop.call_later(due, self._tick, loop)

    async def _watch(self, receive: Receive) -> None:
        """Read `receive` until the client disconnects; then wake the response so that it ends."""
        with contextlib.suppress(Exception):  # a receive that fails cannot tell us more: treat it as gone
            while (await receive())["type"] != "http.disconnect":
                pass
        self._gone = True
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
