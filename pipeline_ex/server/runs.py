"""Runs started by the server, each with a bounded in-memory log of its events for resuming.

A run is produced by one task (consuming `astream(..., lifecycle=True)`) and read by any number of
followers: the response that started it, and clients resuming with `Last-Event-ID`. The log holds the
run's lifecycle events (`StepStarted`, `StepFinished`, `RunFinished`) along with its `Delta` and `Done`
events, in `seq` order: they share the run's `seq`, so they are resumed, bounded and reported in gaps
like any other event. Followers are woken when events arrive, never by polling. The log keeps the newest
events within a count and a byte bound; a follower that asks for dropped events is told about the gap.
The one exception is the response that started the run (its *primary* follower): the log keeps every
event that response has not read yet, so it never sees a gap; the bounds apply again as soon as it has
caught up or left.

What the log keeps is what clients are shown: the error of a failed `StepFinished` or `RunFinished` (and of
a `Done`) is redacted and has the server's paths scrubbed, and an unexpected failure (not one of
pipeline_ex's own errors) is replaced by a line naming the reference it is logged with, as the `error`
frame and the JSON answer do.

The registry admits runs: it holds at most `max_runs` (finished ones are forgotten, oldest first, to make
room; runs still going are never dropped, so a full registry refuses new runs), and a failed run is logged
with a reference id that the client is also given.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol

from pipeline_ex.errors import PipelineError, RunCancelled, StepError
from pipeline_ex.events import (
    Delta,
    Done,
    Partial,
    RunEvent,
    ToolCall,
    ToolResult,
)
from pipeline_ex.gaps import Gap
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.server.public_events import PublicEvents, new_reference
from pipeline_ex.workflow.iterate import EventStream, astream
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.runner import RunResult

logger = redacting_logger("pipeline_ex.server")  # failures may quote a secret the process holds

DEFAULT_MAX_RUNS = 2048
DEFAULT_LOG_EVENTS = 10_000
DEFAULT_LOG_BYTES = 1 << 20
_EVENT_OVERHEAD = 160
"""Roughly what an event costs besides its text (the model object, its ids and its JSON framing)."""


def event_size(event: RunEvent) -> int:
    """An estimate of an event's memory in the log, in bytes (its text and error message plus a fixed overhead).

    Lifecycle events count their error message too: a failed step's or run's can be long.
    """
    if isinstance(event, Delta):
        return len(event.content) + _EVENT_OVERHEAD
    if isinstance(event, ToolResult):
        return len(event.result) + 2 * _EVENT_OVERHEAD
    if isinstance(event, ToolCall | Partial):
        carried = event.arguments if isinstance(event, ToolCall) else event.data
        return len(repr(carried)) + 2 * _EVENT_OVERHEAD
    error = getattr(event, "error", None)  # StepStarted has none
    size = len(error.message) if error is not None else 0
    if isinstance(event, Done):
        return size + len(event.response.text) + 4 * _EVENT_OVERHEAD
    return size + 2 * _EVENT_OVERHEAD


LogStatus = Literal["running", "ok", "failed", "cancelled"]
"""Where a run in the registry stands (`DELETE /runs/{run_id}` answers with it)."""


def new_run_id() -> str:
    """A new run id: 16 random hex digits (64 bits; `uuid4()` would build a UUID object only to cut it)."""
    return os.urandom(8).hex()


class RunObserver(Protocol):
    """Told about each LLM step's `Done` and each run's end (the server's metrics); never about other events."""

    def step_done(self, workflow: str, done: Done) -> None:
        """An LLM step of a run of `workflow` ended with `done`."""

    def run_ended(self, workflow: str, status: str) -> None:
        """A run of `workflow` ended: `ok`, `failed` or `cancelled`."""


class RegistryFull(PipelineError):
    """The registry holds `max_runs` runs that are all still going: a new one cannot be admitted."""


class RunLog:
    """The events of one run, the newest `capacity` (and at most `max_bytes`) kept, plus its outcome.

    :param scrub: rewrites the server's paths in the error messages of the events kept (see `public`).
    """

    def __init__(
        self,
        run_id: str,
        capacity: int,
        max_bytes: int = DEFAULT_LOG_BYTES,
        *,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.scrub = scrub
        self.workflow = ""
        """The name of the workflow the run is of (for log lines)."""
        self.redactor = PublicEvents(run_id, scrub)
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._events: list[RunEvent] = []
        self._seqs: list[int] = []
        self._sizes: list[int] = []
        self.size_bytes = 0
        """The estimated size of the events kept (see `event_size`)."""
        self.evicted_through = 0
        """The highest seq no longer kept (0 while nothing was dropped)."""
        self._held_after: int | None = None
        """While the primary follower lags: the last seq it read (newer events are never dropped)."""
        self.finished = False
        self.error: BaseException | None = None
        self.reference: str | None = None
        """The reference id the failure was logged with, if the run failed."""
        self.result: RunResult | None = None
        self._waiters: dict[asyncio.Future[None], None] = {}
        """One future per follower waiting for news (made only when one waits, resolved by `_wake`)."""
        self.task: asyncio.Task[None] | None = None
        self.events: EventStream | None = None
        self.created = time.time()
        self.cancel_requested = False
        """`cancel()` was called (the run is cancelled as soon as it has started, if it had not yet)."""

    @property
    def last_seq(self) -> int:
        """The seq of the newest event (0 before the first)."""
        return self._seqs[-1] if self._seqs else self.evicted_through

    @property
    def status(self) -> LogStatus:
        """`running` until the run ends; then `ok`, `failed` or `cancelled`."""
        if not self.finished:
            return "running"
        if self.error is None:
            return "ok"
        return "cancelled" if isinstance(self.error, RunCancelled) else "failed"

    def cancel(self) -> None:
        """Cancel the run; its remaining events (the cancelled `Done`s, `RunFinished`...) still reach the log."""
        self.cancel_requested = True
        if self.events is not None and not self.finished:
            self.events.cancel()

    def public(self, event: RunEvent) -> RunEvent:
        """The event as clients may see it (see `PublicEvents.public`)."""
        self.redactor.workflow = self.workflow
        shown = self.redactor.public(event)
        if self.redactor.reference is not None:
            self.reference = self.redactor.reference
        return shown

    def append(self, event: RunEvent) -> None:
        """Add an event and wake the followers."""
        size = event_size(event)
        self._events.append(event)
        self._seqs.append(event.seq)
        self._sizes.append(size)
        self.size_bytes += size
        if len(self._events) > self.capacity or self.size_bytes > self.max_bytes:
            self._trim()
        self._wake()

    def _trim(self) -> None:
        """Drop the oldest events beyond the bounds, except those the primary follower has not read."""
        count, size, drop = len(self._events), self.size_bytes, 0
        held = self._held_after
        while drop < count and (count - drop > self.capacity or size > self.max_bytes):
            if held is not None and self._seqs[drop] > held:
                break
            size -= self._sizes[drop]
            drop += 1
        if drop:
            self.evicted_through = self._seqs[drop - 1]
            del self._events[:drop], self._seqs[:drop], self._sizes[:drop]
            self.size_bytes = size

    def finish(self, result: RunResult | None, error: BaseException | None) -> None:
        """Record how the run ended and wake the followers."""
        self.finished, self.result, self.error = True, result, error
        self._wake()

    def _wake(self) -> None:
        if self._waiters:  # an append nobody waits for costs nothing here
            waiters, self._waiters = self._waiters, {}
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next `append` or `finish` (one per waiting follower; see `discard`)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = None
        return waiter

    def discard(self, waiter: asyncio.Future[None]) -> None:
        """Forget a waiter its follower no longer waits on (it was woken by something else, or cancelled)."""
        self._waiters.pop(waiter, None)

    def take(self, after_seq: int, *, hold: bool = False) -> tuple[list[RunEvent | Gap], int]:
        """Everything ready after `after_seq` at once, and the seq read through.

        The items are a `Gap` first if events after `after_seq` were dropped, then every event kept after
        it. With `hold` (the primary follower, after `hold_from`) the log may drop what was taken. The
        follower is done once it took with `finished` already set (it then reports `error`).
        """
        items: list[RunEvent | Gap] = []
        if after_seq < self.evicted_through:
            items.append(Gap(after_seq + 1, self.evicted_through))
            after_seq = self.evicted_through
        seqs = self._seqs
        if seqs and seqs[-1] > after_seq:
            items += self._events[bisect.bisect_right(seqs, after_seq) :]
            after_seq = seqs[-1]
            if hold:
                self._held_after = after_seq
        return items, after_seq

    def hold_from(self, after_seq: int) -> None:
        """Keep every event after `after_seq` for a primary follower starting there (until `release()`)."""
        self._held_after = after_seq if self._held_after is None else min(after_seq, self._held_after)

    async def follow(self, after_seq: int = 0, *, primary: bool = False) -> AsyncIterator[RunEvent | Gap]:
        """Every event with a seq above `after_seq`, as it arrives; then the run's error, if it failed.

        With `primary` (the response that started the run, following it from the start), the log keeps
        every event until this follower has read it, so it never gets a `Gap`.
        """
        if not primary:
            async for item in self._follow(after_seq):
                yield item
            return
        self.hold_from(after_seq)
        try:
            async for item in self._follow(after_seq, hold=True):
                yield item
        finally:
            self.release()

    def hold(self) -> None:
        """Keep every event from now on until `release()` (or the primary follower) lets go of them."""
        if self._held_after is None:
            self._held_after = self.last_seq

    def release(self) -> None:
        """Let the log drop old events again (the primary response ended, or never started)."""
        if self._held_after is not None:
            self._held_after = None
            self._trim()

    async def _follow(self, after_seq: int, hold: bool = False) -> AsyncIterator[RunEvent | Gap]:
        while True:
            if after_seq < self.evicted_through:  # fell behind the log: say what was lost
                through = self.evicted_through  # more may be dropped while the gap is being sent
                yield Gap(after_seq + 1, through)
                after_seq = through
                continue  # look again: the follower may have fallen further behind meanwhile
            start = bisect.bisect_right(self._seqs, after_seq)
            for event in self._events[start:]:
                if event.seq <= self.evicted_through:
                    break  # dropped while we were yielding: report the gap on the next pass
                after_seq = event.seq
                if hold:
                    self._held_after = after_seq
                yield event
            if self.finished and bisect.bisect_right(self._seqs, after_seq) == len(self._seqs):
                if self.error is not None:
                    raise self.error
                return
            if bisect.bisect_right(self._seqs, after_seq) == len(self._seqs) and not self.finished:
                waiter = self.waiter()
                try:
                    await waiter
                finally:
                    self.discard(waiter)  # a cancelled wait leaves nothing behind


class RunRegistry:
    """The server's runs by id, at most `max_runs` of them; the oldest finished ones are forgotten first.

    :param max_runs: runs kept, finished or not; when all are still going, `start` raises `RegistryFull`.
    :param log_capacity: events kept per run log.
    :param log_bytes: bytes kept per run log (estimated, see `event_size`).
    """

    def __init__(
        self,
        *,
        max_runs: int = DEFAULT_MAX_RUNS,
        log_capacity: int = DEFAULT_LOG_EVENTS,
        log_bytes: int = DEFAULT_LOG_BYTES,
    ) -> None:
        if min(max_runs, log_capacity, log_bytes) < 1:
            raise ValueError("max_runs, log_capacity and log_bytes must be at least 1")
        self.max_runs = max_runs
        self.log_capacity = log_capacity
        self.log_bytes = log_bytes
        self.active = 0
        """Runs started and not finished yet."""
        self._runs: OrderedDict[str, RunLog] = OrderedDict()

    def __len__(self) -> int:
        """The number of runs kept (finished or not)."""
        return len(self._runs)

    def get(self, run_id: str) -> RunLog | None:
        """The log of a run, if it is still known."""
        return self._runs.get(run_id)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest runs kept, newest first: id, workflow, status and creation time."""
        logs = list(self._runs.values())[-limit:][::-1]
        return [
            {"run_id": log.run_id, "workflow": log.workflow, "status": log.status, "created": log.created}
            for log in logs
        ]

    def start(
        self,
        loaded: LoadedWorkflow,
        inputs: Mapping[str, Any],
        *,
        mock: bool,
        run_id: str,
        hold: bool = False,
        scrub: Callable[[str], str] | None = None,
        observer: RunObserver | None = None,
    ) -> RunLog:
        """Start a run in the background and return its log (held for a primary follower with `hold`).

        :param scrub: rewrites the server's paths in the error messages the log keeps (`RunLog.public`).
        :param observer: told about the run's `Done` events and its end.
        :raises RegistryFull: when the registry holds `max_runs` runs and none of them has finished.
        """
        self._forget_old(room_for=1)
        if len(self._runs) >= self.max_runs:
            raise RegistryFull(f"the server already keeps {self.max_runs} runs that are all still going")
        log = RunLog(run_id, self.log_capacity, self.log_bytes, scrub=scrub)
        log.workflow = workflow = loaded.name
        if hold:
            log.hold()
        events = astream(loaded, inputs, mock=mock, run_id=run_id, lifecycle=True)
        log.events = events

        def take(event: RunEvent) -> None:  # called by the run as each event happens
            if type(event) is Delta:
                log.append(event)
            else:
                log.append(log.public(event))
                if observer is not None and type(event) is Done:
                    observer.step_done(workflow, event)
            if log.cancel_requested and not events.cancelled:
                events.cancel()  # asked for before the run had started

        async def produce() -> None:
            try:
                await events.run_into(take)
            except (asyncio.CancelledError, RunCancelled):
                log.finish(None, RunCancelled(f"run {run_id} was cancelled"))
            except Exception as error:
                _log_failure(log, workflow, error)
                log.finish(None, error)
            else:
                if events.cancelled or events.result is None:
                    log.finish(None, RunCancelled(f"run {run_id} was cancelled"))
                else:
                    log.finish(events.result, None)
            finally:
                self.active -= 1
                if observer is not None and log.finished:
                    observer.run_ended(workflow, log.status)
                await events.aclose()

        self.active += 1
        log.task = asyncio.ensure_future(produce())
        self._runs[run_id] = log
        return log

    def _forget_old(self, room_for: int = 0) -> None:
        """Forget the oldest finished runs until there is room for `room_for` more (or none is finished).

        Once the registry is full this runs at every start: it walks only as far as the runs it drops,
        never copying the ids of all `max_runs` runs.
        """
        excess = len(self._runs) + room_for - self.max_runs
        if excess <= 0:
            return
        victims = []
        for run_id, log in self._runs.items():
            if log.finished:
                victims.append(run_id)
                if len(victims) == excess:
                    break
        for run_id in victims:
            del self._runs[run_id]

    async def cancel_all(self) -> None:
        """Cancel every run still going (server shutdown)."""
        logs = [log for log in self._runs.values() if not log.finished]
        for log in logs:
            log.cancel()
        await asyncio.gather(*(log.task for log in logs if log.task is not None), return_exceptions=True)


def _log_failure(log: RunLog, workflow: str, error: BaseException) -> None:
    """Log a failed run with a new reference id (kept on the log, for the client to be told)."""
    log.reference = reference = log.reference or new_reference()  # already named by the run_finished frame?
    extra = {"reference": reference, "run_id": log.run_id, "workflow": workflow}
    if isinstance(error, StepError):  # the step's own failure (provider, timeout, handler): its message says it
        logger.warning(
            "run %s of workflow %r failed (reference %s): %s", log.run_id, workflow, reference, error, extra=extra
        )
    else:
        logger.error(
            "run %s of workflow %r failed unexpectedly (reference %s)",
            log.run_id,
            workflow,
            reference,
            exc_info=error,
            extra=extra,
        )
