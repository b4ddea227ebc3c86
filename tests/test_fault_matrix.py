"""A fault matrix: every fault on every execution path ends the stream the same, correct way.

Faults: a provider error before the first chunk and after 1 and 3 chunks, a connection dropped mid-stream
(reported as a truncated reply), a stream that stalls
(`chunk_timeout`), a step that runs too long (`timeout`), a sync and an async handler raising, and
cancellation (`task.cancel()` on the async paths, `_thread.interrupt_main()` -> KeyboardInterrupt on the
sync ones). Paths: `invoke` (sync), `ainvoke` on a native async generator, `ainvoke` on a sync-only
generator (hybrid), and `invoke` / `ainvoke` against the loopback OpenAI server (tests/openai_sse_server.py).
Plus SIGINT to a `pipeline-ex run` subprocess.

In every cell: every handler gets exactly one Done and it is its last event; the Done's text is the joined
text deltas that handler received (nothing delivered is lost); `StreamingRecorder.assert_complete()`
passes; the Done carries the right error type; and the right exception is raised afterwards.

Also here: `on_handler_error="log"` (the stream completes and each failing handler is logged once, although
it raised on every event) and `retries` against the loopback server (failures before the first delta are
retried, a failure after it is not).
"""

from __future__ import annotations

import _thread
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_kit import read_jsonl, signal_after_lines, slow_workflow, write
from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk
from openai_sse_server import OpenAISSEServer

import pipeline_ex
from pipeline_ex import (
    Delta,
    Done,
    Event,
    HandlerError,
    ProviderError,
    StepTimeoutError,
    StreamingRecorder,
    StreamTruncatedError,
)
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator

pytestmark = [pytest.mark.streaming, pytest.mark.live]

PROMPT = "Tell me a long story."
STEP = "cell"
CHUNKS = tuple(f"w{i} " for i in range(40))
SCRIPT_TEXT = "".join(CHUNKS)
DELAY_S = 0.02  # between chunks: 40 chunks take ~0.8 s, far longer than any fault needs
STALL_AFTER = 2  # the stalling generators deliver this many chunks, then go quiet
CHUNK_TIMEOUT = 0.25
STEP_TIMEOUT = 0.4
FAIL_ON_DELTA = 2  # the failing handlers raise on this delta (1-based)
OPENAI_PATHS = ("openai_sync", "openai_async")
PATHS = ("sync", "async", "hybrid", *OPENAI_PATHS)
FAULTS = (
    "error_before_first",
    "error_after_1",
    "error_after_3",
    "dropped_after_1",
    "chunk_timeout",
    "step_timeout",
    "sync_handler_error",
    "async_handler_error",
    "cancel",
)
CELLS = [(fault, path) for fault in FAULTS for path in PATHS]
CLI_CELLS = [("sigint", "cli")]
LOG_CELLS = list(PATHS)
RETRY_CELLS = [
    "error_before_first_is_retried",
    "error_after_first_delta_is_not_retried",
    "dropped_after_first_delta_is_not_retried",
]


class FaultyProviderError(ConnectionError):
    """What the test generators raise when told to fail part-way."""


# -- generators ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How a test generator streams `CHUNKS`: pace, a failure, or a stall."""

    delay_s: float = DELAY_S
    error_after: int | None = None
    drop_after: int | None = None
    """Fail as a connection reset by the server would, at this position."""
    stall_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    """Set once the step delivered its Done (and at teardown), so a stalled worker thread ends with its step."""
    built: list[Any] = field(default_factory=list)
    """The sync-only generators built, in order."""


def _reply() -> dict[str, list[ChatMessage]]:
    return {"replies": [ChatMessage.from_assistant(SCRIPT_TEXT, meta={"finish_reason": "stop"})]}


def _before_chunk(plan: Plan, position: int) -> float:
    """Raise the planned failure at `position`; return how long to wait before the chunk."""
    if plan.error_after is not None and position >= plan.error_after:
        raise FaultyProviderError(f"test provider failed after {position} chunks")
    if plan.drop_after is not None and position >= plan.drop_after:
        raise ConnectionResetError(104, "Connection reset by peer")
    if plan.stall_after is not None and position == plan.stall_after:
        return 5.0
    return plan.delay_s


@component
class SyncOnlyFaultyGenerator:
    """Streams `CHUNKS` from its sync `run` only (no `run_async`), so `ainvoke` runs it hybrid."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.run_threads: list[int] = []

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        self.run_threads.append(threading.get_ident())
        for position, piece in enumerate(CHUNKS):
            wait = _before_chunk(self.plan, position)
            if self.plan.release.wait(wait):
                raise FaultyProviderError("released at teardown")
            if streaming_callback is not None:
                streaming_callback(StreamingChunk(content=piece))
        if streaming_callback is not None:
            streaming_callback(StreamingChunk(content="", finish_reason="stop"))
        return _reply()


@component
class NativeStallingGenerator:
    """Streams `CHUNKS` from a native `run_async` (and `run`) and stalls as its plan says."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        for position, piece in enumerate(CHUNKS):
            if self.plan.release.wait(_before_chunk(self.plan, position)):
                raise FaultyProviderError("released at teardown")
            if streaming_callback is not None:
                streaming_callback(StreamingChunk(content=piece))
        if streaming_callback is not None:
            streaming_callback(StreamingChunk(content="", finish_reason="stop"))
        return _reply()

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        for position, piece in enumerate(CHUNKS):
            await asyncio.sleep(_before_chunk(self.plan, position))
            if streaming_callback is not None:
                await streaming_callback(StreamingChunk(content=piece))
        if streaming_callback is not None:
            await streaming_callback(StreamingChunk(content="", finish_reason="stop"))
        return _reply()


@pytest.fixture
def plan(monkeypatch: pytest.MonkeyPatch) -> Iterator[Plan]:
    """Register the `sync_only` (hybrid) and `stalling` (native) test providers, both following this plan."""
    the_plan = Plan()

    def sync_only(model: str | None, options: Any) -> BuiltGenerator:
        generator = SyncOnlyFaultyGenerator(the_plan)
        the_plan.built.append(generator)
        return BuiltGenerator(generator, "sync_only", "m")

    def stalling(model: str | None, options: Any) -> BuiltGenerator:
        return BuiltGenerator(NativeStallingGenerator(the_plan), "stalling", "m")

    monkeypatch.setitem(PROVIDERS, "sync_only", sync_only)
    monkeypatch.setitem(PROVIDERS, "stalling", stalling)
    yield the_plan
    the_plan.release.set()


# -- handlers --------------------------------------------------------------------------------------------


class Tap:
    """A sync handler recording every event it receives."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle_event(self, event: Event) -> None:
        self.events.append(event)


class FirstDeltaSignal(Tap):
    """Records events, sets `first` on the first delta and `release` on Done (goes last in the handler list).

    Setting `release` wakes a sync-only generator stalled in its worker thread once its step is over: the
    thread cannot be interrupted, and `asyncio.run` waits for the default executor's threads when it closes.
    """

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.first = threading.Event()
        self.release = release

    def handle_event(self, event: Event) -> None:
        super().handle_event(event)
        if isinstance(event, Delta):
            self.first.set()
        elif isinstance(event, Done):
            self.release.set()


class SyncFailingHandler(Tap):
    """Raises on its `FAIL_ON_DELTA`th delta (after recording it)."""

    def handle_event(self, event: Event) -> None:
        super().handle_event(event)
        if isinstance(event, Delta) and sum(isinstance(e, Delta) for e in self.events) == FAIL_ON_DELTA:
            raise RuntimeError("sync handler exploded")


class AsyncFailingHandler(Tap):
    """Async; raises on its `FAIL_ON_DELTA`th delta (after recording it)."""

    async def handle_event(self, event: Event) -> None:  # type: ignore[override]
        self.events.append(event)
        await asyncio.sleep(0)
        if isinstance(event, Delta) and sum(isinstance(e, Delta) for e in self.events) == FAIL_ON_DELTA:
            raise ValueError("async handler exploded")


class SyncAlwaysFailing(Tap):
    """Raises on every event it receives, Done included."""

    def handle_event(self, event: Event) -> None:
        super().handle_event(event)
        raise RuntimeError("sync handler fails on every event")


class AsyncAlwaysFailing(Tap):
    """Async; raises on every event it receives, Done included."""

    async def handle_event(self, event: Event) -> None:  # type: ignore[override]
        self.events.append(event)
        raise ValueError("async handler fails on every event")


# -- the checks every cell makes -------------------------------------------------------------------------


def joined_text(events: list[Event]) -> str:
    return "".join(e.content for e in events if isinstance(e, Delta) and e.kind == "text")


def check_every_handler(recorder: StreamingRecorder, taps: list[Tap]) -> Done:
    """Exactly one Done per handler, last; its text is the handler's joined deltas; return the Done."""
    recorder.assert_complete()
    assert len(recorder.dones) == 1
    done = recorder.events[-1]
    assert isinstance(done, Done)
    assert done.step == STEP
    for tap in taps:
        dones = [e for e in tap.events if isinstance(e, Done)]
        assert len(dones) == 1, f"{type(tap).__name__} got {len(dones)} Done events"
        assert tap.events[-1] is dones[0], f"{type(tap).__name__}: events arrived after its Done"
        assert dones[0] == done
        assert joined_text(tap.events) == dones[0].response.text, f"{type(tap).__name__} lost delivered text"
    return done


# -- running one cell ------------------------------------------------------------------------------------


@dataclass
class Cell:
    fault: str
    path: str
    plan: Plan
    server: OpenAISSEServer | None
    recorder: StreamingRecorder = field(default_factory=StreamingRecorder)
    taps: list[Tap] = field(default_factory=list)
    signal: FirstDeltaSignal = field(init=False)

    def __post_init__(self) -> None:
        self.signal = FirstDeltaSignal(self.plan.release)

    @property
    def openai(self) -> bool:
        return self.path in OPENAI_PATHS

    @property
    def is_sync(self) -> bool:
        return self.path in ("sync", "openai_sync")


def configure(cell: Cell) -> tuple[dict[str, Any], list[Any]]:
    """The step's keyword arguments and handler list for a cell."""
    fault, path, plan = cell.fault, cell.path, cell.plan
    kwargs: dict[str, Any] = {"prompt": PROMPT, "step": STEP}
    if cell.openai:
        assert cell.server is not None
        kwargs.update(provider="openai", api_base_url=cell.server.url, max_retries=0)
        script: dict[str, Any] = {"pieces": CHUNKS, "delay_s": DELAY_S}
        if fault.startswith("error_"):
            # the server reports a failure in the stream (an error event), which the SDK raises
            script.update(error_after=0 if fault == "error_before_first" else int(fault[-1]))
        elif fault.startswith("dropped_"):
            # chunked framing: the connection closes without the terminating chunk, an incomplete body
            script.update(break_after=int(fault[-1]), framing="chunked")
        elif fault == "chunk_timeout":
            # no role chunk: the first piece comes at once, then every chunk waits 5 s
            script.update(role_chunk=False, delay_s=5.0)
        cell.server.script(**script)
    elif path == "hybrid":
        kwargs["provider"] = "sync_only"
    elif fault in ("chunk_timeout", "dropped_after_1"):
        kwargs["provider"] = "stalling"
    else:
        kwargs.update(provider="mock", mock_response=list(CHUNKS), delay_ms=DELAY_S * 1000)

    if fault.startswith("error_"):
        failure = 0 if fault == "error_before_first" else int(fault[-1])
        plan.error_after = failure
        if kwargs["provider"] == "mock":
            kwargs["error_after"] = failure
    elif fault.startswith("dropped_"):
        plan.drop_after = int(fault[-1])
    elif fault == "chunk_timeout":
        plan.stall_after = STALL_AFTER
        kwargs["chunk_timeout"] = CHUNK_TIMEOUT
    elif fault == "step_timeout":
        kwargs["timeout"] = STEP_TIMEOUT

    failing: list[Tap] = []
    if fault == "sync_handler_error":
        failing.append(SyncFailingHandler())
    elif fault == "async_handler_error":
        failing.append(AsyncFailingHandler())
    plain = Tap()
    cell.taps = [plain, *failing, cell.signal]
    # the recorder first, then a failing handler between two others, and the signal last
    return kwargs, [cell.recorder, *cell.taps]


def run_sync(cell: Cell, kwargs: dict[str, Any], handlers: list[Any]) -> BaseException | None:
    interrupter: threading.Thread | None = None
    if cell.fault == "cancel":

        def interrupt_after_first_delta() -> None:
            if cell.signal.first.wait(10):
                _thread.interrupt_main()

        interrupter = threading.Thread(target=interrupt_after_first_delta, daemon=True)
        interrupter.start()
    try:
        pipeline_ex.invoke(on_event=handlers, **kwargs)
    except BaseException as error:  # KeyboardInterrupt is one of the expected outcomes
        return error
    finally:
        if interrupter is not None:
            interrupter.join(10)
    return None


def run_async(cell: Cell, kwargs: dict[str, Any], handlers: list[Any]) -> BaseException | None:
    async def drive() -> BaseException | None:
        task = asyncio.create_task(pipeline_ex.ainvoke(on_event=handlers, **kwargs))
        if cell.fault == "cancel":
            assert await asyncio.to_thread(cell.signal.first.wait, 10), "no delta arrived"
            task.cancel()
        try:
            await task
        except BaseException as error:  # CancelledError is one of the expected outcomes
            return error
        return None

    return asyncio.run(drive())


EXPECTED_ERROR_TYPE = {
    "error_before_first": "provider",
    "error_after_1": "provider",
    "error_after_3": "provider",
    "dropped_after_1": "truncated",
    "chunk_timeout": "timeout",
    "step_timeout": "timeout",
    "sync_handler_error": "handler",
    "async_handler_error": "handler",
    "cancel": "cancelled",
}


def expected_exception(cell: Cell) -> type[BaseException]:
    if cell.fault == "cancel":
        return KeyboardInterrupt if cell.is_sync else asyncio.CancelledError
    if cell.fault.startswith("error_"):
        return ProviderError
    if cell.fault.startswith("dropped_"):
        return StreamTruncatedError
    if cell.fault.endswith("timeout"):
        return StepTimeoutError
    return HandlerError


def expected_delta_count(cell: Cell) -> int | None:
    """How many deltas the cell delivers, where that is fixed."""
    if cell.fault.startswith(("error_", "dropped_")):
        return 0 if cell.fault == "error_before_first" else int(cell.fault[-1])
    if cell.fault == "chunk_timeout":
        return 1 if cell.openai else STALL_AFTER
    if cell.fault.endswith("handler_error"):
        return FAIL_ON_DELTA
    return None


@pytest.mark.parametrize(("fault", "path"), CELLS, ids=[f"{f}-{p}" for f, p in CELLS])
def test_fault_cell(fault: str, path: str, plan: Plan, request: pytest.FixtureRequest) -> None:
    server: OpenAISSEServer | None = request.getfixturevalue("openai_server") if path in OPENAI_PATHS else None
    cell = Cell(fault, path, plan, server)
    kwargs, handlers = configure(cell)

    started = time.perf_counter()
    error = (run_sync if cell.is_sync else run_async)(cell, kwargs, handlers)
    elapsed = time.perf_counter() - started

    # the right exception, raised after the Done
    assert isinstance(error, expected_exception(cell)), f"{fault}/{path}: raised {error!r}"
    done = check_every_handler(cell.recorder, cell.taps)
    assert done.error is not None, done
    assert done.error.type == EXPECTED_ERROR_TYPE[fault], done.error
    assert done.response.finish_reason == ("cancelled" if fault == "cancel" else "error")
    assert done.streamed is True
    text = done.response.text
    assert SCRIPT_TEXT.startswith(text)
    deltas = cell.recorder.deltas
    expected = expected_delta_count(cell)
    if expected is not None:
        assert len(deltas) == expected, [d.content for d in deltas]
    else:
        assert 1 <= len(deltas) < len(CHUNKS), [d.content for d in deltas]
    assert text == "".join(CHUNKS[: len(deltas)])

    if isinstance(error, pipeline_ex.StepError):
        assert error.done is done
        assert error.step == STEP
        assert error.partial_text == text
        assert f"step {STEP!r}" in str(error)
    if isinstance(error, HandlerError):
        failing = cell.taps[1]
        assert type(failing).__name__ in error.handler
        assert type(failing).__name__ in str(error)
        assert isinstance(error.__cause__, RuntimeError | ValueError)
        assert type(failing).__name__ in (done.error.message or "")
    if fault == "cancel":
        assert done.error.exception is not None
        assert done.error.exception.endswith(type(error).__name__)
    if fault == "chunk_timeout":
        assert "chunk_timeout" in str(error)
        assert elapsed < 3.0  # the stall lasts 5 s; the step gave up after ~0.25 s
    if fault == "step_timeout":
        assert elapsed < 2.0

    if path == "hybrid":
        built = plan.built
        assert built and built[0].run_threads, "the sync-only generator never ran"
        assert threading.get_ident() not in built[0].run_threads  # it ran in a worker thread

    if server is not None:
        request_record = server.requests[-1]
        assert len(server.requests) == 1
        if fault.startswith(("error_", "dropped_")):
            record = server.wait_for_response(timeout=2.0)
            assert record.client_closed_at is None  # the server broke the stream itself
        else:
            # the step stopped reading early: the client hung up on the server
            server.wait_for_client_close(timeout=2.0)
            assert not request_record.completed
            assert request_record.content_chunks_sent < len(CHUNKS)


# -- SIGINT to `pipeline-ex run` -------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only here")
def test_fault_cell_sigint_cli(tmp_path: Path) -> None:
    slow_workflow(tmp_path, stream_handler="jsonl", stream_handler_options={"path": "events.jsonl"})
    events_file = tmp_path / "events.jsonl"
    result = signal_after_lines(
        "run",
        "slow.yaml",
        cwd=tmp_path,
        lines_in=events_file,
        count=3,
        signum=signal.SIGINT,
        env=os.environ,
        script=True,
    )
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr

    events = read_jsonl(events_file, skip_blank=False)
    assert [e["type"] for e in events].count("done") == 1
    done = events[-1]
    assert done["type"] == "done"
    deltas = events[:-1]
    assert all(e["type"] == "delta" for e in deltas)
    assert 3 <= len(deltas) < 300
    assert done["response"]["finish_reason"] == "cancelled"
    assert done["error"]["type"] == "cancelled"
    assert done["response"]["text"] == "".join(e["content"] for e in deltas)


# -- on_handler_error="log" ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LOG_CELLS)
def test_on_handler_error_log_completes_and_logs_each_failing_handler_once(
    path: str, plan: Plan, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: OpenAISSEServer | None = request.getfixturevalue("openai_server") if path in OPENAI_PATHS else None
    cell = Cell("log", path, plan, server)
    kwargs, _ = configure(cell)
    kwargs["on_handler_error"] = "log"
    plan.delay_s = 0.0
    if server is not None:
        server.script(pieces=CHUNKS)
    else:
        kwargs.pop("delay_ms", None)
    sync_failing, async_failing = SyncAlwaysFailing(), AsyncAlwaysFailing()
    cell.taps = [Tap(), sync_failing, async_failing]
    handlers = [cell.recorder, cell.taps[0], sync_failing, async_failing]

    caplog.set_level(logging.ERROR, logger="pipeline_ex")
    if cell.is_sync:
        result = pipeline_ex.invoke(on_event=handlers, **kwargs)
    else:
        result = asyncio.run(pipeline_ex.ainvoke(on_event=handlers, **kwargs))

    done = check_every_handler(cell.recorder, cell.taps)
    assert result.done is done
    assert done.error is None
    assert done.response.finish_reason == "stop"
    assert result.text == SCRIPT_TEXT
    assert len(cell.recorder.deltas) == len(CHUNKS)
    # they raised on every one of the 41 events, and each was logged once
    assert len(sync_failing.events) == len(async_failing.events) == len(CHUNKS) + 1
    failures = [r for r in caplog.records if r.name == "pipeline_ex" and "failed on step" in r.getMessage()]
    assert len(failures) == 2, [r.getMessage() for r in failures]
    messages = sorted(r.getMessage() for r in failures)
    assert "AsyncAlwaysFailing" in messages[0]
    assert "SyncAlwaysFailing" in messages[1]
    assert {type(r.exc_info[1]) for r in failures if r.exc_info} == {RuntimeError, ValueError}
    if server is not None:
        record = server.wait_for_response(timeout=2.0)
        assert record.completed
        assert record.client_closed_at is None


# -- retries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retries_repeat_a_failure_before_the_first_delta(mode: str, openai_server: OpenAISSEServer) -> None:
    openai_server.script(pieces=CHUNKS[:5], error_after=0)
    recorder = StreamingRecorder()
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "step": STEP,
        "provider": "openai",
        "api_base_url": openai_server.url,
        "max_retries": 0,  # the SDK's own retries are off: every request the server sees is a step attempt
        "retries": 2,
        "on_event": recorder,
    }
    call: Callable[[], Any] = (
        (lambda: pipeline_ex.invoke(**kwargs))
        if mode == "sync"
        else (lambda: asyncio.run(pipeline_ex.ainvoke(**kwargs)))
    )
    with pytest.raises(ProviderError) as caught:
        call()
    assert len(openai_server.requests) == 3  # the first attempt and two retries
    recorder.assert_complete()
    done = check_every_handler(recorder, [])
    assert caught.value.done is done
    assert done.error is not None and done.error.type == "provider"
    assert done.response.text == ""


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("failure", "expected", "error_type"),
    [
        pytest.param({"error_after": 2}, ProviderError, "provider", id="provider-error"),
        pytest.param({"break_after": 2, "framing": "chunked"}, StreamTruncatedError, "truncated", id="dropped"),
    ],
)
def test_retries_do_not_repeat_a_failure_after_the_first_delta(
    mode: str,
    failure: dict[str, Any],
    expected: type[pipeline_ex.StepError],
    error_type: str,
    openai_server: OpenAISSEServer,
) -> None:
    openai_server.script(pieces=CHUNKS[:5], **failure)
    recorder = StreamingRecorder()
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "step": STEP,
        "provider": "openai",
        "api_base_url": openai_server.url,
        "max_retries": 0,
        "retries": 2,
        "on_event": recorder,
    }
    with pytest.raises(expected) as caught:
        if mode == "sync":
            pipeline_ex.invoke(**kwargs)
        else:
            asyncio.run(pipeline_ex.ainvoke(**kwargs))
    assert type(caught.value) is expected
    assert len(openai_server.requests) == 1  # a retry would deliver the same deltas twice
    done = check_every_handler(recorder, [])
    assert caught.value.done is done
    assert "not retried" in str(caught.value)
    assert done.error is not None and done.error.type == error_type
    assert done.response.text == "".join(CHUNKS[:2])


# -- limits that do not hold (library bugs) --------------------------------------------------------------


def test_invoke_returns_at_the_chunk_timeout_even_if_a_sync_only_generator_stays_stalled(plan: Plan) -> None:
    plan.stall_after = STALL_AFTER
    stall_s = 2.0

    release_later = threading.Timer(stall_s, plan.release.set)  # the stall ends after 2 s, whatever happens
    release_later.start()
    recorder = StreamingRecorder()
    done_at: list[float] = []

    def note_done(event: Event) -> None:
        if isinstance(event, Done):
            done_at.append(time.perf_counter())

    started = time.perf_counter()
    try:
        with pytest.raises(StepTimeoutError):
            pipeline_ex.invoke(
                prompt=PROMPT,
                provider="sync_only",
                step=STEP,
                chunk_timeout=CHUNK_TIMEOUT,
                on_event=[recorder, note_done],
            )
        returned = time.perf_counter() - started
    finally:
        release_later.cancel()
        plan.release.set()
        release_later.join()
    check_every_handler(recorder, [])
    assert done_at[0] - started < 1.0  # the Done itself is delivered at the chunk timeout ...
    assert returned < 1.0, f"invoke() returned {returned:.2f} s after the start; its chunk_timeout is {CHUNK_TIMEOUT} s"


def test_timeout_bounds_the_step_including_the_retry_backoff() -> None:
    recorder = StreamingRecorder()
    started = time.perf_counter()
    with pytest.raises((StepTimeoutError, ProviderError)):
        pipeline_ex.invoke(
            prompt=PROMPT, provider="mock", step=STEP, error_after=0, timeout=0.25, retries=5, on_event=recorder
        )
    elapsed = time.perf_counter() - started
    check_every_handler(recorder, [])
    # attempts at 0 s and 0.2 s fail; the 0.4 s backoff that follows already passes the 0.25 s timeout
    assert elapsed < 0.45, f"a step with timeout=0.25 took {elapsed:.2f} s"


# -- the matrix size -------------------------------------------------------------------------------------


def test_matrix_size(request: pytest.FixtureRequest) -> None:
    """Count the cells and report them in the session's terminal summary."""
    fault_cells = len(CELLS) + len(CLI_CELLS)
    assert fault_cells == len(FAULTS) * len(PATHS) + 1 == 46
    retry_cells = 2 * len(RETRY_CELLS)
    total = fault_cells + len(LOG_CELLS) + retry_cells
    line = (
        f"fault matrix: {len(FAULTS)} faults x {len(PATHS)} paths + SIGINT/cli = {fault_cells} fault cells; "
        f"with {len(LOG_CELLS)} on_handler_error=log cells and {retry_cells} retries cells: {total} cells"
    )
    print(f"\n{line}")

    class Summary:
        def pytest_terminal_summary(self, terminalreporter: Any) -> None:
            terminalreporter.write_line(line)

    if not request.config.pluginmanager.has_plugin("fault-matrix-summary"):
        request.config.pluginmanager.register(Summary(), "fault-matrix-summary")


# -- the same faults inside a parallel group and a for_each body -----------------------------------------

GROUP_PATHS = ("async", "hybrid", "openai_async")
GROUPS = ("parallel", "for_each")
GROUP_CELLS = [(fault, path, group) for fault in FAULTS for path in GROUP_PATHS for group in GROUPS]
_STEP_KEYS = {"prompt", "step", "provider", "mock_response", "timeout", "chunk_timeout"}


def _faulty_step(cell: Cell, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The cell's step as a workflow step: its provider, options, limits and (for handler faults) handler."""
    step: dict[str, Any] = {"id": STEP, "prompt": kwargs["prompt"], "provider": kwargs["provider"]}
    for key in ("mock_response", "timeout", "chunk_timeout"):
        if key in kwargs:
            step[key] = kwargs[key]
    options = {k: v for k, v in kwargs.items() if k not in _STEP_KEYS}
    if options:
        step["options"] = options
    if cell.fault in ("sync_handler_error", "async_handler_error"):
        step["stream_handler"] = f"{__name__}.{type(cell.taps[1]).__name__}"
    return step


SIBLING = {
    "id": "sibling",
    "provider": "mock",
    "prompt": "slow",
    "mock_response": list(CHUNKS),
    "options": {"delay_ms": 40},
}


def _grouped_workflow(cell: Cell, kwargs: dict[str, Any], group: str) -> str:
    faulty = _faulty_step(cell, kwargs)
    if group == "parallel":
        steps = [{"id": "group", "parallel": [faulty, SIBLING]}]
    else:  # item 0 runs the faulty step, item 1 the slow healthy one
        steps = [
            {
                "id": "group",
                "for_each": [0, 1],
                "max_parallel": 2,
                "steps": [{**faulty, "when": "{{ item == 0 }}"}, {**SIBLING, "when": "{{ item == 1 }}"}],
            }
        ]
    return json.dumps({"workflow": {"name": "grouped_faults", "steps": steps, "defaults": {"stream": True}}})


@pytest.mark.parametrize(("fault", "path", "group"), GROUP_CELLS, ids=[f"{f}-{p}-{g}" for f, p, g in GROUP_CELLS])
def test_fault_cell_inside_a_group(
    fault: str, path: str, group: str, plan: Plan, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: OpenAISSEServer | None = request.getfixturevalue("openai_server") if path in OPENAI_PATHS else None
    cell = Cell(fault, path, plan, server)
    kwargs, _ = configure(cell)
    loaded = pipeline_ex.load_workflow(write(tmp_path / "grouped.yaml", _grouped_workflow(cell, kwargs, group)))
    faulty_path = STEP if group == "parallel" else f"group[0].{STEP}"
    sibling_path = "sibling" if group == "parallel" else "group[1].sibling"

    async def drive() -> BaseException | None:
        task = asyncio.create_task(pipeline_ex.arun(loaded, on_event=[cell.recorder, cell.signal]))
        if fault == "cancel":
            assert await asyncio.to_thread(cell.signal.first.wait, 10), "no delta arrived"
            task.cancel()
        try:
            await task
        except BaseException as error:
            return error
        return None

    error = asyncio.run(drive())
    expected = asyncio.CancelledError if fault == "cancel" else expected_exception(cell)
    assert isinstance(error, expected), f"{fault}/{path}/{group}: raised {error!r}"
    cell.recorder.assert_complete()  # one Done per instance, texts intact, seq increasing, steps bracketed
    dones = {d.step: d for d in cell.recorder.dones}
    faulty, sibling = dones[faulty_path], dones[sibling_path]
    assert faulty.error is not None and faulty.error.type == EXPECTED_ERROR_TYPE[fault], faulty.error
    assert faulty.response.finish_reason == ("cancelled" if fault == "cancel" else "error")
    assert SCRIPT_TEXT.startswith(faulty.response.text)
    # fail_fast: the sibling, still streaming, was cancelled with what it had
    assert sibling.response.finish_reason == "cancelled", sibling
    assert "".join(CHUNKS).startswith(sibling.response.text)
    finished = {e.step: e.status for e in cell.recorder.lifecycle_events if isinstance(e, pipeline_ex.StepFinished)}
    assert finished["group"] == ("cancelled" if fault == "cancel" else "failed")
    run_end = cell.recorder.timeline[-1]
    assert isinstance(run_end, pipeline_ex.RunFinished)
    assert run_end.status == ("cancelled" if fault == "cancel" else "failed")
