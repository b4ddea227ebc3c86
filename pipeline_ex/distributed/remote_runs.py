"""The server side of a deployment: runs enqueued for the workers, followed and cancelled through Redis.

`RemoteRunRegistry` and `RemoteRunLog` are what `serve --redis` uses in place of the in-memory
`RunRegistry` and `RunLog`, with the same surface for the routes: a run is admitted across every
replica (`RunStore.admit`), recorded, and sent to the workers as a Celery task; following it reads its
Redis stream (`RedisEventLog.follow`, blocking in `XREAD`), so any replica can stream, resume and cancel
any run, and a replica that stops takes no run with it.

Unlike the in-memory log, the stream does not hold events back for the response that started the run:
it keeps the newest `Deployment.maxlen` events, which a reader that far behind sees as a gap.

The runs run on the workers, so a replica's observer (its metrics) only hears of what the replica sees:
the `Done` events and the end of the runs it started, as its response (or its wait for the JSON answer)
follows them. A run whose client left before its end is not counted as ended by any replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline_ex.distributed.celery_app import celery_app, enqueue
from pipeline_ex.distributed.deployment import Deployment
from pipeline_ex.distributed.event_log import newest_seq
from pipeline_ex.distributed.run_records import AdmissionRefused, RunRecord
from pipeline_ex.errors import RemoteRunError, RunCancelled
from pipeline_ex.events import Done, RunEvent
from pipeline_ex.gaps import Gap
from pipeline_ex.tracing import trace_carrier
from pipeline_ex.workflow.checkpoints import workflow_digest
from pipeline_ex.workflow.loader import LoadedWorkflow

if TYPE_CHECKING:
    from pipeline_ex.server.runs import RunObserver

__all__ = ["AdmissionRefused", "RemoteRunLog", "RemoteRunRegistry"]


@dataclass(frozen=True)
class StoredResult:
    """A finished run's results as its worker recorded them (`RunResult.to_json()`)."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The recorded results."""
        return self.data


class RemoteRunLog:
    """A run of the deployment, as one replica sees it: its record, and its events in Redis."""

    def __init__(
        self,
        registry: RemoteRunRegistry,
        record: RunRecord,
        last_seq: int = 0,
        *,
        stream_ended: bool = False,
        observer: RunObserver | None = None,
    ) -> None:
        self.registry = registry
        self.observer = observer
        """Told about the `Done` events this view follows and the run's end (once), if it sees it."""
        self.run_id = record.run_id
        self.last_seq = last_seq
        """The seq of the newest event in the stream when this view was made."""
        self.stream_ended = stream_ended
        """The run's stream had its end (its worker writes it after the record's outcome)."""
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.record = record

    @property
    def record(self) -> RunRecord:
        """The run's record, as last read."""
        return self._record

    @record.setter
    def record(self, record: RunRecord) -> None:
        self._record = record
        self._error = _error_of(record)  # one exception per outcome: callers compare it with `is`

    @property
    def finished(self) -> bool:
        """Whether the run has ended: its record has the outcome and its stream its end."""
        return self.record.finished and self.stream_ended

    @property
    def status(self) -> str:
        """`queued` or `running` until the run ends; then `ok`, `failed` or `cancelled`."""
        return "running" if self.record.status == "queued" else self.record.status

    @property
    def error(self) -> BaseException | None:
        """Why the run did not succeed, as its worker told it."""
        return self._error

    @property
    def reference(self) -> str | None:
        """The reference the run's failure was logged with on its worker."""
        return (self.record.error or {}).get("reference")

    @property
    def result(self) -> StoredResult | None:
        """The results of a run that succeeded."""
        return StoredResult(self.record.result) if self.record.result is not None else None

    @property
    def task(self) -> asyncio.Task[None]:
        """A task that ends when the run has ended (it follows the run's stream to its end)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._until_finished())
        return self._task

    async def _until_finished(self) -> None:
        observer = self.observer
        async for item in self.registry.events.follow(self.run_id, self.last_seq):
            if observer is not None and type(item) is Done:
                observer.step_done(self.record.workflow, item)
        self.stream_ended = True
        await self.refresh()
        self._ended()

    def _ended(self) -> None:
        """Tell the observer how the run ended (once; a view may follow the stream twice)."""
        observer, self.observer = self.observer, None
        if observer is not None and self.record.finished:
            observer.run_ended(self.record.workflow, self.record.status)

    async def refresh(self) -> None:
        """Read the run's record again."""
        record = await self.registry.store.get(self.run_id)
        if record is not None:
            self.record = record

    async def follow(self, after_seq: int = 0, *, primary: bool = False) -> AsyncIterator[RunEvent | Gap]:
        """Every event after `after_seq`, as the worker writes it; then the run's error, if it failed."""
        observer = self.observer
        async for item in self.registry.events.follow(self.run_id, after_seq):
            if observer is not None and type(item) is Done:
                observer.step_done(self.record.workflow, item)
            yield item
        self.stream_ended = True
        await self.refresh()
        self._ended()
        error = self.error
        if error is not None:
            raise error

    def cancel(self) -> None:
        """Ask the worker holding the run to cancel it (its cancelled events still reach the stream)."""
        if not self.finished:
            self.registry.request_cancel(self.run_id)

    def hold(self) -> None:
        """Nothing to hold: the stream keeps its newest events for every reader."""

    def release(self) -> None:
        """Nothing to release (see `hold`)."""


def _error_of(record: RunRecord) -> BaseException | None:
    if record.status == "cancelled":
        return RunCancelled(f"run {record.run_id} was cancelled")
    if record.status == "failed":
        payload = dict(record.error or {"type": "error", "message": "the run failed"})
        payload.pop("reference", None)
        return RemoteRunError(payload)
    return None


class RemoteRunRegistry:
    """The runs of a deployment, for one `serve` replica (see the module docstring)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.client = deployment.async_client()
        self.store = deployment.run_store(self.client)
        self.events = deployment.event_log()
        self.celery = celery_app(deployment)
        self._pending: set[asyncio.Task[None]] = set()

    async def check(self) -> None:
        """Make sure Redis answers (a server starts only when it does).

        :raises EventLogUnavailable: naming the URL (its password redacted).
        """
        await asyncio.to_thread(self.deployment.check_reachable)

    async def start(
        self,
        loaded: LoadedWorkflow,
        inputs: Mapping[str, Any],
        *,
        mock: bool,
        run_id: str,
        max_active: int,
        scrub: Callable[[str], str] | None = None,
        observer: RunObserver | None = None,
    ) -> RemoteRunLog:
        """Admit, record and enqueue a run (`observer` hears of what this view of it sees).

        :raises AdmissionRefused: when `max_active` runs are going across the deployment.
        """
        digest = workflow_digest(loaded)
        record = RunRecord(run_id, loaded.name, digest, dict(inputs), mock=mock, trace_context=trace_carrier())
        await self.store.admit(record, max_active)
        await asyncio.to_thread(enqueue, self.celery, run_id, self.deployment.queue)
        return RemoteRunLog(self, record, observer=observer)

    async def find(self, run_id: str) -> RemoteRunLog | None:
        """The run, if the deployment still keeps it."""
        record = await self.store.get(run_id)
        if record is None:
            return None
        last, ended = await newest_seq(self.client, self.events.key(run_id))
        return RemoteRunLog(self, record, last, stream_ended=ended)

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest runs of the deployment."""
        return [record.summary() for record in await self.store.recent(limit)]

    async def active(self) -> int:
        """Runs admitted and not finished, across the deployment."""
        return await self.store.active()

    def request_cancel(self, run_id: str) -> None:
        """Publish a cancel for the run (from sync code: a task does it)."""
        task = asyncio.ensure_future(self.store.request_cancel(run_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Let pending cancels go out and close the connections (runs go on on the workers)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.events.aclose()
        await self.client.aclose()
