"""Generator-based streaming: iterate over a run's events instead of (or as well as) using handlers.

`astream()` returns an async iterator and `stream()` a sync one. The handlers a workflow configures
still receive every event; the iterator sees the same events in the same order. Breaking out of the
loop (or calling `aclose()` / `close()`) cancels the run: the provider stream is closed and the step's
handlers get `Done(finish_reason="cancelled")`. When the run fails, the iterator yields the failing
step's `Done` and then raises the error.

Events are queued without a bound between the run and the consumer: a handler cannot wait for a slow
consumer, and a step's text is bounded anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pipeline_ex.errors import PipelineError, RunCancelled
from pipeline_ex.events import RunEvent
from pipeline_ex.running_loop import running_loop, warn_blocking_once
from pipeline_ex.streaming.resolve import normalize_handlers
from pipeline_ex.workflow.checkpoints import CheckpointStore
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.runner import RunResult, arun

_END = object()


class _Ready:
    """The events a run produced and its consumer has not taken yet: a deque and at most one waiter.

    Cheaper than an `asyncio.Queue` per stream, which `astream` had: `put` wakes the consumer only when it
    is waiting, and the consumer takes what is ready without awaiting (no future per event).
    """

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        """Queue an event (or the end marker), waking the consumer if it waits."""
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> Any:
        """The next item, waiting for one if none is ready."""
        while not self.items:
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class EventStream:
    """The async iterator `astream()` returns. Iterate it once; `aclose()` cancels the run.

    After the iteration ends, `.result` holds the `RunResult` of a run that succeeded.
    """

    def __init__(
        self,
        workflow: str | os.PathLike[str] | LoadedWorkflow,
        inputs: Mapping[str, Any] | None,
        *,
        mock: bool,
        on_event: Any = None,
        lifecycle: bool = False,
        output_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        checkpoints: CheckpointStore | None = None,
        resume: bool = False,
    ) -> None:
        self._args = (workflow, inputs)
        self._durability: dict[str, Any] = {"checkpoints": checkpoints, "resume": resume}
        self._run_id = run_id
        self._mock = mock
        self._lifecycle = lifecycle
        self._extra = normalize_handlers(on_event)
        self._output_dir = output_dir
        self._ready = _Ready()
        self._task: asyncio.Task[RunResult] | None = None
        self._started = False
        self._finished = False
        self.result: RunResult | None = None
        self.cancelled = False
        """True once `cancel()` was called; the iteration then ends after the cancelled Done."""

    def __aiter__(self) -> EventStream:
        self._claim()
        return self

    def _claim(self) -> None:
        """Mark the stream consumed (by iterating it or by `run_into`): a stream runs its workflow once."""
        if self._started:
            raise PipelineError("this event stream was already consumed; call astream() again for a new run")
        self._started = True

    def _start(self, sink: Callable[[RunEvent], None] | None = None) -> None:
        workflow, inputs = self._args
        ready = self._ready  # not `self`: the running task must not keep this stream alive
        self._task = asyncio.ensure_future(
            arun(
                workflow,
                inputs,
                mock=self._mock,
                on_event=[*self._extra, ready.put if sink is None else sink],
                lifecycle=self._lifecycle,
                output_dir=self._output_dir,
                run_id=self._run_id,
                **self._durability,
            )
        )
        if sink is None:  # the iteration's end marker; `run_into` waits on the task instead
            self._task.add_done_callback(lambda _: ready.put(_END))

    async def __anext__(self) -> RunEvent:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            if not self._started:
                self._started = True
            self._start()
        ready = self._ready
        item = ready.items.popleft() if ready.items else await ready.get()
        if item is _END:
            self._finished = True
            self._take_outcome()
            raise StopAsyncIteration
        event: RunEvent = item
        return event

    async def run_into(self, sink: Callable[[RunEvent], None]) -> None:
        """Consume the stream by handing each event to `sink` as it happens, instead of iterating it.

        `sink` is called like a handler, by the run itself: no task hop per event (a server's run log
        takes them so). Returns when the run has ended, or when it ended after `cancel()`; raises as the
        iteration would (the run's error, or `RunCancelled` if it was cancelled otherwise).
        """
        self._claim()
        self._start(sink)
        assert self._task is not None
        try:
            await asyncio.wait({self._task})  # the run's own cancellation is told apart below, not raised here
        finally:
            self._finished = True
        self._take_outcome()

    def _take_outcome(self) -> None:
        """Once the run ended: keep its result, or raise its error (its Done was delivered first).

        A run cancelled by `cancel()` just ends the stream (its cancelled Done was the last event); one
        cancelled otherwise raises `RunCancelled`.
        """
        task = self._task
        assert task is not None
        if task.cancelled():
            if self.cancelled:
                return
            raise RunCancelled("the run was cancelled; its steps' Done events were delivered")
        self.result = task.result()

    def cancel(self) -> None:
        """Cancel the run but keep iterating: its steps' `Done(cancelled)` events still arrive."""
        if self._task is not None and not self._task.done():
            self.cancelled = True
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop consuming: cancel the run (if still going) and wait until its steps have closed."""
        self._finished = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif task is not None and task.done() and not task.cancelled():
            task.exception()  # the consumer stopped early; the run's outcome is not theirs to see

    def __del__(self) -> None:
        # Breaking out of `async for` drops the stream: stop its run too, as the docs promise.
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                task.cancel()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def astream(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    lifecycle: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
) -> EventStream:
    """Run a workflow and iterate over its events with `async for`.

    The run starts on the first iteration. See the module docstring for cancellation and errors.

    :param lifecycle: also yield `StepStarted`, `StepFinished` and `RunFinished` (and give them to the
        `on_event` handlers).
    :param checkpoints: keep a checkpoint of the run there; with `resume`, continue the one it has for
        `run_id` (see `arun`).
    """
    return EventStream(
        workflow,
        inputs,
        mock=mock,
        on_event=on_event,
        lifecycle=lifecycle,
        output_dir=output_dir,
        run_id=run_id,
        checkpoints=checkpoints,
        resume=resume,
    )


def stream(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    lifecycle: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
) -> Iterator[RunEvent]:
    """Run a workflow on a background event loop and iterate over its events with `for`.

    Leaving the loop early (break, an exception, or `close()`) cancels the run and waits for it.

    Inside a running event loop (a Jupyter cell) this works as well; in async code, `astream` lets the
    loop go on while waiting for events.

    :param lifecycle: also yield `StepStarted`, `StepFinished` and `RunFinished`.
    """
    if running_loop() is not None:
        warn_blocking_once("stream", "astream")
    return _SyncStream(
        astream(workflow, inputs, mock=mock, on_event=on_event, lifecycle=lifecycle, output_dir=output_dir)
    )


class _SyncStream:
    """A sync iterator over an `EventStream` running on its own thread's event loop.

    Iterating returns a generator (not kept on this object) whose cleanup closes the stream, so that
    leaving a `for` loop early cancels the run right away.
    """

    def __init__(self, events: EventStream) -> None:
        self._events = events
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumed = False
        self._closed = False
        self._ready = threading.Event()
        self._iterator: Iterator[RunEvent] | None = None

    def __iter__(self) -> Iterator[RunEvent]:
        if self._consumed:
            raise PipelineError("this event stream was already consumed; call stream() again for a new run")
        self._consumed = True
        if self._closed:  # closed before it was ever iterated: nothing was run
            return iter(())
        return self._generate()

    def __next__(self) -> RunEvent:
        if self._iterator is None:
            if self._closed:
                raise StopIteration
            self._iterator = iter(self)
        return next(self._iterator)

    def _generate(self) -> Iterator[RunEvent]:
        try:
            self._start()
            while True:
                kind, value = self._queue.get()
                if kind == "event":
                    yield value
                    continue
                self._closed = True
                self._join()
                if kind == "error":
                    raise value
                return
        finally:
            self.close()

    async def _pump(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            async for event in self._events:
                self._queue.put(("event", event))
        except BaseException as error:
            self._queue.put(("error", error))
            return
        self._queue.put(("end", None))

    def _start(self) -> None:
        # The run sees the caller's context variables (test sessions, ambient handlers), as astream() does.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(asyncio.run, self._pump()), name="pipeline-ex-stream", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Cancel the run if it is still going, and wait for it to finish."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._ready.wait()  # the loop starts a moment after the thread
        loop = self._loop
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop finished in the meantime
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._events.aclose()))
        self._join()

    def _join(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
