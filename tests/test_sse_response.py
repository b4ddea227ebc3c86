"""`RunSSEResponse` and `RunLog.take`: every ready event in one send, keepalives, and clean exits at every await.

The response is driven here with a fake ASGI `receive` and `send`, so that the test controls when the
client disconnects and can cancel the response at each of its await points: sending the response start,
sending a batch, and waiting for the log. Whatever the point, the run is cancelled (for a primary
response), the log is released, the events sent are counted and the stream leaves `active_streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline_ex import Delta
from pipeline_ex.errors import RunCancelled
from pipeline_ex.gaps import Gap
from pipeline_ex.server.runs import RunLog
from pipeline_ex.server.sse_response import RunFrames, RunSSEResponse
from pipeline_ex.sse import KEEPALIVE_FRAME, _frame, end_frame, event_frame, event_id, parse_frames, retry_frame

pytestmark = pytest.mark.streaming

RUN = "run-sse-response"


def delta(seq: int, content: str = "x") -> Delta:
    return Delta(content=content, step="answer", run_id=RUN, seq=seq)


class Counter:
    """Stands in for the metrics' `EventCounter`."""

    def __init__(self) -> None:
        self.total = 0
        self.adds = 0

    def add(self, count: int) -> None:
        self.total += count
        self.adds += 1


class Client:
    """A fake ASGI client: records what is sent, disconnects when told, can block a send."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.block_sends = False
        self.sending = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.block_sends:
            self.sending.set()
            await asyncio.sleep(30)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    @property
    def text(self) -> str:
        return b"".join(self.bodies).decode()


class Streaming:
    def __init__(self) -> None:
        self.active = 0
        self.entered = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.active += 1
        self.entered += 1
        try:
            yield
        finally:
            self.active -= 1


def response(log: RunLog, *, primary: bool = True, keepalive: float = 30.0, after_seq: int = 0) -> Any:
    counter, streaming, closed = Counter(), Streaming(), []
    frames = RunFrames(log, after_seq, primary=primary, cancel_on_exit=primary, retry_ms=1000, counter=counter)

    def on_close() -> None:
        closed.append(True)
        if primary:
            log.release()

    made = RunSSEResponse(frames, keepalive=keepalive, on_close=on_close, streaming=streaming())
    return made, counter, streaming, closed


async def until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


def test_the_event_frame_is_the_frame_written_line_by_line() -> None:
    for content in ("plain", "two\nlines", "cr\r\nlf", "sep\u2028arator", 'quote " and \\'):
        event = delta(3, content)
        assert event_frame(event) == _frame(event.type, event.model_dump_json(), event_id(event))


async def test_every_event_ready_goes_out_in_one_send_and_the_last_send_ends_the_body() -> None:
    log = RunLog(RUN, capacity=100)
    for seq in (1, 2, 3):
        log.append(delta(seq))
    made, counter, streaming, closed = response(log)
    client = Client()
    task = asyncio.ensure_future(made({"type": "http"}, client.receive, client.send))
    await until(lambda: len(client.bodies) == 1)
    assert client.messages[0]["type"] == "http.response.start"
    assert client.bodies[0].decode() == retry_frame(1000) + "".join(event_frame(delta(s)) for s in (1, 2, 3))
    log.append(delta(4))
    log.append(delta(5))
    log.finish(None, None)
    await asyncio.wait_for(task, 5)
    assert client.bodies[-1].decode() == event_frame(delta(4)) + event_frame(delta(5)) + end_frame(RUN, finished=True)
    assert [m.get("more_body") for m in client.messages[1:]] == [True, False]
    assert counter.total == 5 and closed == [True] and streaming.active == 0
    assert log._waiters == {}


async def test_an_idle_stream_gets_keepalives_then_its_events() -> None:
    log = RunLog(RUN, capacity=100)
    made, _, _, _ = response(log, keepalive=0.05)
    client = Client()
    task = asyncio.ensure_future(made({"type": "http"}, client.receive, client.send))
    await asyncio.sleep(0.18)
    keepalives = client.bodies.count(KEEPALIVE_FRAME.encode())
    assert 2 <= keepalives <= 4, client.bodies
    assert len(log._waiters) == 1  # the waits the keepalives ended left nothing behind
    log.append(delta(1))
    log.finish(None, None)
    await asyncio.wait_for(task, 5)
    assert [f["event"] for f in parse_frames(client.text)] == ["delta", "end"]


async def test_a_failed_run_ends_with_its_error_frame_then_the_end_frame() -> None:
    log = RunLog(RUN, capacity=100)
    log.append(delta(1))
    log.finish(None, RunCancelled("run was cancelled"))
    made, *_ = response(log)
    client = Client()
    await asyncio.wait_for(made({"type": "http"}, client.receive, client.send), 5)
    frames = parse_frames(client.text)
    assert [f["event"] for f in frames] == ["delta", "error", "end"]
    assert frames[-1]["id"] == f"{RUN}:end"


async def test_a_resume_after_dropped_events_starts_with_the_gap() -> None:
    log = RunLog(RUN, capacity=2)
    for seq in range(1, 6):
        log.append(delta(seq))
    log.finish(None, None)
    made, *_ = response(log, primary=False, after_seq=1)
    client = Client()
    await asyncio.wait_for(made({"type": "http"}, client.receive, client.send), 5)
    frames = parse_frames(client.text)
    assert frames[0] == {"event": "gap", "data": '{"from_seq": 2, "to_seq": 3}'}
    assert [f.get("id") for f in frames[1:]] == [f"{RUN}:4", f"{RUN}:5", f"{RUN}:end"]


async def test_a_client_that_disconnects_while_the_stream_waits_cancels_the_run() -> None:
    log = RunLog(RUN, capacity=100)
    log.append(delta(1))
    made, counter, streaming, closed = response(log)
    client = Client()
    task = asyncio.ensure_future(made({"type": "http"}, client.receive, client.send))
    await until(lambda: len(log._waiters) == 1)
    client.gone.set()
    await asyncio.wait_for(task, 5)
    assert log.cancel_requested and closed == [True] and streaming.active == 0 and counter.total == 1
    assert "event: end" not in client.text and log._waiters == {}


@pytest.mark.parametrize("point", ["start", "body", "waiting"])
async def test_a_response_cancelled_at_any_await_cleans_up(point: str) -> None:
    log = RunLog(RUN, capacity=100)
    if point != "start":
        log.append(delta(1))
    made, counter, streaming, closed = response(log)
    client = Client()
    client.block_sends = point != "waiting"
    if point == "body":
        original = client.send

        async def send(message: dict[str, Any]) -> None:
            client.block_sends = message["type"] == "http.response.body"
            await original(message)

        sender = send
    else:
        sender = client.send
    task = asyncio.ensure_future(made({"type": "http"}, client.receive, sender))
    if point == "waiting":
        await until(lambda: len(log._waiters) == 1)
    else:
        await asyncio.wait_for(client.sending.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.cancel_requested and closed == [True] and streaming.active == 0
    assert counter.total == (0 if point == "start" else 1)
    assert log._waiters == {}
    assert log._held_after is None  # released: the log may drop old events again


async def test_take_gives_everything_ready_and_appends_allocate_nothing_while_nobody_waits() -> None:
    log = RunLog(RUN, capacity=3)
    for seq in range(1, 6):
        log.append(delta(seq))
    assert log._waiters == {}
    items, through = log.take(0)
    assert isinstance(items[0], Gap) and (items[0].first_seq, items[0].last_seq) == (1, 2)
    assert [e.seq for e in items[1:]] == [3, 4, 5] and through == 5  # type: ignore[union-attr]
    assert log.take(through) == ([], 5)
    waiter = log.waiter()
    log.append(delta(6))
    assert waiter.done() and log._waiters == {}
