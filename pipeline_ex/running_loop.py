"""Sync entry points (`run`, `stream`, `invoke`) called from code that already runs an event loop.

A Jupyter cell runs inside the kernel's event loop, and so does any sync function that async code calls.
`asyncio.run` refuses to start a second loop on that thread, so `run_to_completion` runs the coroutine on
a worker thread with its own loop instead, and the calling thread waits for it: the cell (or the caller)
gets the result, or the run's own exception with its traceback. Handlers are then called from that
worker thread. Ctrl-C while waiting (a notebook's "interrupt kernel") cancels the run, waits until its
steps have delivered their `Done(finish_reason="cancelled")`, then raises `KeyboardInterrupt`, as
`asyncio.run` does on the main thread.

Waiting blocks the caller's loop for the whole run. That is what a notebook cell wants, but in async code
other tasks stall, so outside IPython a `RuntimeWarning` says so once per entry point and names the
async twin to await instead.

Under `asyncio.run` itself, whose SIGINT handler cancels its main task instead of raising, Ctrl-C is
seen only once the call returns; that is one more reason to await the async twin there.

The loop is looked up without raising inside an `except` block, so that no error the run raises later
is chained to asyncio's internal "no running event loop" `RuntimeError`.

Hand-written rather than `nest_asyncio` (which patches the caller's loop to re-enter it) or asgiref's
`async_to_sync` (a new dependency, whose waiting thread does not cancel the run on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_warned: set[str] = set()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, or None (without leaving an exception being handled)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_to_completion(make: Callable[[], Coroutine[Any, Any, T]], *, entry: str, twin: str) -> T:
    """Run the coroutine `make()` builds and return its result, whether or not a loop runs on this thread.

    Without a running loop this is `asyncio.run`. With one, the coroutine runs on a worker thread's own
    loop (see the module docstring). `make` is called on the thread that runs the coroutine, so that
    nothing is bound to the caller's loop.

    :param entry: the sync entry point's name, for the warning (`run`).
    :param twin: its async twin's name, which the warning recommends (`arun`).
    """
    if running_loop() is None:
        return asyncio.run(make())
    warn_blocking_once(entry, twin, stacklevel=3)
    return _WorkerRun(make).result()


def warn_blocking_once(entry: str, twin: str, *, stacklevel: int = 2) -> None:
    """Warn, once per entry point and outside IPython, that a sync call is blocking a running loop."""
    if entry in _warned or _in_ipython():
        return
    _warned.add(entry)
    warnings.warn(
        f"pipeline_ex.{entry}() was called inside a running event loop: the work runs on a worker thread "
        f"and this loop is blocked until it ends; in async code, use 'await pipeline_ex.{twin}(...)'",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def _in_ipython() -> bool:
    """True inside an IPython shell or Jupyter kernel, where a cell waiting for its run is expected.

    Looked up in `sys.modules` so that IPython is never imported here.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


class _WorkerRun(Generic[T]):
    """One coroutine run to completion on a worker thread's own event loop, awaited by the caller."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._make = make
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._value: T | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        # The run sees the caller's context variables (test sessions, ambient handlers).
        self._context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._thread_main, name="pipeline-ex-run", daemon=True)

    def _thread_main(self) -> None:
        try:
            self._context.run(asyncio.run, self._main())
        finally:
            self._started.set()  # also when the loop never started: nothing waits for it in vain
            self._finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        try:
            self._value = await self._make()
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._error = error

    def result(self) -> T:
        """Start the run, wait for it, and return its value or raise its exception."""
        self._thread.start()
        # Waiting on an event, not on `Thread.join`: a join that Ctrl-C interrupts marks the thread as
        # stopped on Python 3.11, and a second join would then return while the run still goes on.
        try:
            self._finished.wait()
        except KeyboardInterrupt:
            self._cancel()
            self._finished.wait()
            raise
        finally:
            if self._finished.is_set():
                self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error  # outside any except block: the run's own traceback, with no context added
        return self._value  # type: ignore[return-value]  # set: the run ended without an error

    def _cancel(self) -> None:
        self._started.wait()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime: the run is over
                loop.call_soon_threadsafe(task.cancel)
