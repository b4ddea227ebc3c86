"""Runs started by the server, each with a bounded in-memory log of its events for resuming.

A run is produced by one task (consuming `astream`) and read by any number of followers: the response
that started it, and clients resuming with `Last-Event-ID`. Followers are woken when events arrive,
never by polling. When the log drops old events, a follower that asks for them is told about the gap.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_ex.errors import RunCancelled
from pipeline_ex.events import Event
from pipeline_ex.workflow.iterate import EventStream, astream
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.runner import RunResult


@dataclass(frozen=True)
class Gap:
    """Events `first_seq..last_seq` were dropped from the log before a follower read them."""

    first_seq: int
    last_seq: int


class RunLog:
    """The events of one run, newest `capacity` kept, plus its outcome once it finished."""

    def __init__(self, run_id: str, capacity: int) -> None:
        self.run_id = run_id
        self.capacity = capacity
        self._events: list[Event] = []
        self._seqs: list[int] = []
        self.evicted_through = 0
        """The highest seq no longer kept (0 while nothing was dropped)."""
        self.finished = False
        self.error: BaseException | None = None
        self.result: RunResult | None = None
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.events: EventStream | None = None

    def cancel(self) -> None:
        """Cancel the run; its remaining events (the cancelled Done) still reach the log."""
        if self.events is not None and not self.finished:
            self.events.cancel()

    def append(self, event: Event) -> None:
        """Add an event and wake the followers."""
        self._events.append(event)
        self._seqs.append(event.seq)
        if len(self._events) > self.capacity:
            drop = len(self._events) - self.capacity
            self.evicted_through = self._seqs[drop - 1]
            del self._events[:drop], self._seqs[:drop]
        self._wake()

    def finish(self, result: RunResult | None, error: BaseException | None) -> None:
        """Record how the run ended and wake the followers."""
        self.finished, self.result, self.error = True, result, error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after_seq: int = 0) -> AsyncIterator[Event | Gap]:
        """Every event with a seq above `after_seq`, as it arrives; then the run's error, if it failed."""
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
                yield event
            if self.finished and bisect.bisect_right(self._seqs, after_seq) == len(self._seqs):
                if self.error is not None:
                    raise self.error
                return
            changed = self._changed
            if bisect.bisect_right(self._seqs, after_seq) == len(self._seqs) and not self.finished:
                await changed.wait()


class RunRegistry:
    """The server's runs by id; the oldest finished ones are forgotten beyond `max_runs`."""

    def __init__(self, *, max_runs: int = 256, log_capacity: int = 10_000) -> None:
        self.max_runs = max_runs
        self.log_capacity = log_capacity
        self._runs: OrderedDict[str, RunLog] = OrderedDict()

    def get(self, run_id: str) -> RunLog | None:
        """The log of a run, if it is still known."""
        return self._runs.get(run_id)

    def start(self, loaded: LoadedWorkflow, inputs: Mapping[str, Any], *, mock: bool, run_id: str) -> RunLog:
        """Start a run in the background and return its log."""
        log = RunLog(run_id, self.log_capacity)
        events = astream(loaded, inputs, mock=mock, run_id=run_id)
        log.events = events

        async def produce() -> None:
            try:
                async for event in events:
                    log.append(event)
            except (asyncio.CancelledError, RunCancelled):
                log.finish(None, RunCancelled(f"run {run_id} was cancelled"))
            except Exception as error:
                log.finish(None, error)
            else:
                if events.cancelled or events.result is None:
                    log.finish(None, RunCancelled(f"run {run_id} was cancelled"))
                else:
                    log.finish(events.result, None)
            finally:
                await events.aclose()

        log.task = asyncio.ensure_future(produce())
        self._runs[run_id] = log
        self._forget_old()
        return log

    def _forget_old(self) -> None:
        for run_id in list(self._runs):
            if len(self._runs) <= self.max_runs:
                return
            if self._runs[run_id].finished:
                del self._runs[run_id]

    async def cancel_all(self) -> None:
        """Cancel every run still going (server shutdown)."""
        logs = [log for log in self._runs.values() if not log.finished]
        for log in logs:
            log.cancel()
        await asyncio.gather(*(log.task for log in logs if log.task is not None), return_exceptions=True)
