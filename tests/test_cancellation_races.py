"""Cancellation at every point of delivery: every handler keeps the same deltas and gets exactly one Done.

A cancellation can land at any `await`: while an async handler receives a delta or the Done, in the pause
between retries, or while a generator's clients close. Ctrl-C can land between any two bytecodes of a
sync step: inside a handler, or between two handlers of one fan-out. In every case each handler must end
with the same deltas, the joined text must equal `Done.response.text`, and there must be exactly one
Done, after which the cancellation propagates.

The async cells cancel the step's task at the moment a gated async handler is awaiting a chosen event, on
the three async paths (native `run_async`, a sync-only generator run hybrid, and a step under a time limit
whose generator call runs supervised). The last test does the same through `pipeline-ex serve`: a client
that disconnects while an async handler receives the Done must leave the run's log with its Done.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import logging
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk
from server_kit import CliServer

from pipeline_ex import Delta, Done, Event, StreamingRecorder, llm
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.sse import parse_frames

pytestmark = [pytest.mark.streaming, pytest.mark.live]  # live: the steps run on in-process test generators


async def wait_until(reached: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Wait until the step reached the point to cancel at (failing at once if the step ended before)."""
    waiter = asyncio.ensure_future(reached.wait())
    await asyncio.wait({waiter, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        raise AssertionError(f"the step never reached the cancellation point: {task}")


CHUNKS = ("a ", "b ", "c ", "d ")
TEXT = "".join(CHUNKS)


@dataclass
class Plan:
    """What the test generators do, and where they stop for the test to cancel them."""

    fail_first: int = 0
    """Fail this many attempts before the first chunk (for the retry-pause cell)."""
    block_in_close: bool = False
    attempts: int = 0
    reached: asyncio.Event | None = None
    closed: list[str] = field(default_factory=list)


class FlakyStart(ConnectionError):
    """The failure before the first chunk that the retry cell retries."""


def _chunks() -> Iterator[StreamingChunk]:
    for piece in CHUNKS:
        yield StreamingChunk(content=piece)
    yield StreamingChunk(content="", finish_reason="stop")


def _reply() -> dict[str, list[ChatMessage]]:
    return {"replies": [ChatMessage.from_assistant(TEXT, meta={"finish_reason": "stop"})]}


@component
class NativeAsyncGenerator:
    """Streams `CHUNKS` from `run_async`, yielding to the loop before each chunk like a network stream."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @component.output_types(replies=list[ChatMessage])
    def run(
        self, messages: list[ChatMessage], streaming_callback: Any = None, generation_kwargs: Any = None
    ) -> dict[str, list[ChatMessage]]:
        raise AssertionError("the async cells run run_async")

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self, messages: list[ChatMessage], streaming_callback: Any = None, generation_kwargs: Any = None
    ) -> dict[str, list[ChatMessage]]:
        self.plan.attempts += 1
        if self.plan.attempts <= self.plan.fail_first:
            if self.plan.reached is not None and self.plan.attempts == self.plan.fail_first:
                self.plan.reached.set()  # the step is about to pause before its next attempt
            raise FlakyStart(f"attempt {self.plan.attempts} failed before any chunk")
        for chunk in _chunks():
            await asyncio.sleep(0)
            result = streaming_callback(chunk)
            if result is not None:
                await result
        return _reply()

    async def close_async(self) -> None:
        self.plan.closed.append("start")
        if self.plan.block_in_close:
            assert self.plan.reached is not None
            self.plan.reached.set()
            await asyncio.sleep(30)
        self.plan.closed.append("end")


@component
class SyncOnlyGenerator:
    """Streams `CHUNKS` from its sync `run` only, so `ainvoke` runs it in a worker thread (hybrid)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @component.output_types(replies=list[ChatMessage])
    def run(
        self, messages: list[ChatMessage], streaming_callback: Any = None, generation_kwargs: Any = None
    ) -> dict[str, list[ChatMessage]]:
        for chunk in _chunks():
            time.sleep(0.002)
            streaming_callback(chunk)
        return _reply()


@pytest.fixture
def plan() -> Iterator[Plan]:
    made = Plan()

    def native(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(NativeAsyncGenerator(made), "native", "native-model")

    def hybrid(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(SyncOnlyGenerator(made), "hybrid", "hybrid-model", async_mode="hybrid")

    PROVIDERS["race_native"] = native
    PROVIDERS["race_hybrid"] = hybrid
    yield made
    del PROVIDERS["race_native"], PROVIDERS["race_hybrid"]


class GatedHandler:
    """An async handler that records what it receives and, on one chosen event, awaits until cancelled."""

    def __init__(self, stop_at: int | str | None, reached: asyncio.Event) -> None:
        self.stop_at = stop_at
        """A delta's 0-based position, "done", or None to never stop."""
        self.reached = reached
        self.events: list[Event] = []
        self.interrupted_on: Event | None = None

    async def handle_event(self, event: Event) -> None:
        position = sum(isinstance(e, Delta) for e in self.events)
        self.events.append(event)
        chosen = (self.stop_at == "done") if isinstance(event, Done) else (self.stop_at == position)
        if chosen:
            self.reached.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.interrupted_on = event
                raise


def assert_consistent(*handlers: list[Event]) -> Done:
    """Every handler has the same deltas and one Done, last, whose text is the joined text deltas."""
    first = handlers[0]
    for events in handlers:
        dones = [e for e in events if isinstance(e, Done)]
        assert len(dones) == 1, events
        assert events[-1] is dones[0]
        assert [e for e in events if isinstance(e, Delta)] == [e for e in first if isinstance(e, Delta)]
        assert dones[0] == first[-1]
        joined = "".join(e.content for e in events if isinstance(e, Delta) and e.kind == "text")
        assert joined == dones[0].response.text
    done = first[-1]
    assert isinstance(done, Done)
    return done


PATHS = {
    "native": {"provider": "race_native"},
    "hybrid": {"provider": "race_hybrid"},
    "supervised": {"provider": "race_native", "timeout": 30.0},
}
POINTS = [*range(len(CHUNKS)), "done"]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("gated", [0, 1], ids=["first-handler", "second-handler"])
@pytest.mark.parametrize("point", POINTS, ids=lambda p: f"delta{p}" if isinstance(p, int) else "done")
async def test_a_cancel_while_an_async_handler_awaits_leaves_every_handler_consistent(
    path: str, gated: int, point: int | str, plan: Plan
) -> None:
    reached = asyncio.Event()
    handlers = [
        GatedHandler(point if gated == 0 else None, reached),
        GatedHandler(point if gated == 1 else None, reached),
    ]
    recorder = StreamingRecorder()
    options = dict(PATHS[path])
    task = asyncio.ensure_future(
        llm.ainvoke(prompt="go", on_event=[handlers[0], handlers[1], recorder], step="race", **options)
    )
    await wait_until(reached, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert handlers[gated].interrupted_on is not None, "the cancellation did not land in the gated handler"
    done = assert_consistent(handlers[0].events, handlers[1].events, recorder.events)
    recorder.assert_complete()
    deltas = [e for e in recorder.events if isinstance(e, Delta)]
    if point == "done":  # the cancellation came while the Done was being delivered: that Done stands
        assert done.response.finish_reason == "stop"
        assert done.response.text == TEXT
    else:
        assert done.response.finish_reason == "cancelled"
        assert done.error is not None and done.error.type == "cancelled"
        assert len(deltas) == point + 1  # the interrupted delta reached every handler
    assert handlers[gated].interrupted_on == (done if point == "done" else deltas[-1])


async def test_a_cancel_while_the_generator_closes_still_delivers_the_done(plan: Plan) -> None:
    plan.block_in_close = True
    plan.reached = asyncio.Event()
    recorder = StreamingRecorder()
    task = asyncio.ensure_future(llm.ainvoke(prompt="go", provider="race_native", on_event=recorder, step="close"))
    await wait_until(plan.reached, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert plan.closed == ["start"]
    done = assert_consistent(recorder.events)
    recorder.assert_complete()
    assert done.response.text == TEXT
    assert done.response.finish_reason == "cancelled"
    assert done.error is not None and done.error.type == "cancelled"


async def test_a_cancel_during_the_pause_between_retries_delivers_one_done(plan: Plan) -> None:
    plan.fail_first = 1
    plan.reached = asyncio.Event()
    recorder = StreamingRecorder()
    task = asyncio.ensure_future(
        llm.ainvoke(prompt="go", provider="race_native", on_event=recorder, step="retry", retries=3)
    )
    await wait_until(plan.reached, task)
    await asyncio.sleep(0.05)  # inside the 0.2 s pause before the second attempt
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert plan.attempts == 1
    done = assert_consistent(recorder.events)
    assert done.response.text == ""
    assert done.response.finish_reason == "cancelled"


# -- Ctrl-C in a sync step ---------------------------------------------------------------------------------


class InterruptingHandler:
    """A sync handler that, on one delta, either raises KeyboardInterrupt itself or makes SIGINT arrive."""

    def __init__(self, on_delta: int, how: str) -> None:
        self.on_delta = on_delta
        self.how = how
        self.events: list[Event] = []
        self.finished_its_work = False

    def handle_event(self, event: Event) -> None:
        position = sum(isinstance(e, Delta) for e in self.events)
        self.events.append(event)
        if isinstance(event, Delta) and position == self.on_delta:
            if self.how == "raise":
                raise KeyboardInterrupt
            _thread.interrupt_main()  # SIGINT arrives now, in the middle of this fan-out
            total = 0
            for number in range(20_000):  # bytecodes where the interrupt would otherwise land
                total += number
            self.finished_its_work = total > 0


@pytest.mark.parametrize("how", ["raise", "signal"])
@pytest.mark.parametrize("position", [0, 1], ids=["first-handler", "second-handler"])
def test_ctrl_c_in_the_middle_of_a_sync_fan_out_reaches_every_handler(how: str, position: int, plan: Plan) -> None:
    interrupting = InterruptingHandler(on_delta=1, how=how)
    others = [StreamingRecorder(), StreamingRecorder()]
    handlers: list[Any] = [others[0], others[1]]
    handlers.insert(position, interrupting)
    with pytest.raises(KeyboardInterrupt):
        llm.invoke(prompt="go", provider="mock", mock_response=list(CHUNKS), on_event=handlers, step="sync")

    done = assert_consistent(interrupting.events, others[0].events, others[1].events)
    assert done.response.finish_reason == "cancelled"
    assert done.response.text == "a b "  # the delta being delivered when Ctrl-C came reached everyone
    if how == "signal":  # held back until the fan-out was over, not raised inside the handler
        assert interrupting.finished_its_work


def test_ctrl_c_while_a_sync_handler_receives_the_done_reaches_every_handler() -> None:
    class InterruptOnDone(StreamingRecorder):
        def handle_event(self, event: Event) -> None:
            super().handle_event(event)
            if isinstance(event, Done):
                raise KeyboardInterrupt

    first, after = InterruptOnDone(), StreamingRecorder()
    with pytest.raises(KeyboardInterrupt):
        llm.invoke(prompt="go", provider="mock", mock_response=list(CHUNKS), on_event=[first, after], step="d")
    done = assert_consistent(first.events, after.events)
    assert done.response.finish_reason == "stop"


@component
class InterruptedWhileClosing:
    """A sync generator whose `close()` makes SIGINT arrive, as a Ctrl-C during the step's conclusion would."""

    @component.output_types(replies=list[ChatMessage])
    def run(
        self, messages: list[ChatMessage], streaming_callback: Any = None, generation_kwargs: Any = None
    ) -> dict[str, list[ChatMessage]]:
        for chunk in _chunks():
            streaming_callback(chunk)
        return _reply()

    def close(self) -> None:
        _thread.interrupt_main()
        total = 0
        for number in range(20_000):  # bytecodes where the interrupt would otherwise land
            total += number


def test_ctrl_c_while_a_sync_step_concludes_waits_for_the_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        PROVIDERS, "closing", lambda model, options: BuiltGenerator(InterruptedWhileClosing(), "closing", "m")
    )
    first, second = StreamingRecorder(), StreamingRecorder()
    with pytest.raises(KeyboardInterrupt):
        llm.invoke(prompt="go", provider="closing", on_event=[first, second], step="closing")
    done = assert_consistent(first.events, second.events)
    assert done.response.text == TEXT  # the stream had ended: its Done reports it, then Ctrl-C propagates


class InterruptOnRetry(logging.Handler):
    """A log handler that makes SIGINT arrive while the step decides to retry (it logs the retry)."""

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            _thread.interrupt_main()
            total = 0
            for number in range(20_000):  # bytecodes where the interrupt would otherwise land
                total += number


def test_ctrl_c_while_a_sync_step_decides_to_retry_still_delivers_the_done() -> None:
    recorder = StreamingRecorder()
    handler = InterruptOnRetry()
    logger = logging.getLogger("pipeline_ex")
    logger.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            llm.invoke(prompt="go", provider="mock", error_after=0, retries=3, on_event=recorder, step="retry")
    finally:
        logger.removeHandler(handler)
    done = assert_consistent(recorder.events)
    assert done.response.finish_reason == "cancelled" and done.response.text == ""


# -- through the server: a disconnect while an async handler receives the Done -------------------------------

SLOW_DONE_HANDLER = '''
import asyncio


async def handle_event(event):
    """Takes its time over the Done, as a handler that flushes to a slow store would."""
    if event.type == "done":
        await asyncio.sleep(0.5)
'''


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process handling")
def test_a_client_that_leaves_while_a_handler_receives_the_done_leaves_the_done_in_the_run_log(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow_done_handler.py").write_text(SLOW_DONE_HANDLER, encoding="utf-8")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "slow_done.yaml").write_text(
        textwrap.dedent(
            """
            workflow:
              name: slow_done
              steps:
                - id: answer
                  provider: mock
                  prompt: "go"
                  mock_response: ["one ", "two ", "three"]
                  stream_handler: slow_done_handler
            """
        ).lstrip(),
        encoding="utf-8",
    )
    server = CliServer(["--workflows", "workflows"], tmp_path / "serve.log", cwd=tmp_path).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            request = client.build_request(
                "POST",
                "/workflows/slow_done/run",
                headers={"Accept": "text/event-stream", "Content-Type": "application/json"},
                content=json.dumps({"inputs": {}}),
            )
            response = client.send(request, stream=True)
            run_id = response.headers["x-run-id"]
            seen = ""
            for text in response.iter_text():
                seen += text
                if seen.count("event: delta") == 3:
                    break  # every delta is here; the Done is being handed to the slow handler now
            response.close()  # the client leaves
            time.sleep(1.0)  # the slow handler's 0.5 s, and the cancellation that follows
            replay = client.get(
                f"/runs/{run_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": f"{run_id}:0"}
            )
        frames = parse_frames(replay.text)
    finally:
        server.stop()
    kinds = [frame.get("event") for frame in frames]
    assert kinds.count("delta") == 3, kinds
    assert kinds.count("done") == 1, kinds
    done = json.loads(next(frame["data"] for frame in frames if frame.get("event") == "done"))
    assert done["response"]["text"] == "one two three"
