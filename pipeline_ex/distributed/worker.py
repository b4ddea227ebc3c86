"""The worker side: one asyncio event loop per process running every run the process holds.

**Driving asyncio from Celery.** Celery has no asyncio tasks: a task is a plain function that a pool
calls. `pipeline-ex worker` uses Celery's `threads` pool, and every task thread hands its run to
`RunHost`, which owns one event loop running in its own thread: the task calls `RunHost.execute`,
which submits the run's coroutine to that loop (`asyncio.run_coroutine_threadsafe`) and blocks until it
ends. So `--concurrency N` is the number of runs one process holds at once, and all of them stream on
the one loop (as `serve` runs them in one process), while Celery keeps its own job: fetching, acking
late (the task returns after the run ended) and redelivering.

**Redelivery within seconds.** With Celery's Redis transport an unacknowledged task is given back only
when it has not been acknowledged for `visibility_timeout` seconds (one hour by default, so that long
tasks are not delivered twice). Here the visibility timeout is short (`Deployment.lease_seconds`, 5 s
by default) and a heartbeat thread keeps the runs that are still going from being given back: every
third of the lease it renews, for each run it holds, the delivery's timestamp in kombu's
`unacked_index` (the sorted set the transport's `restore_visible` sweep reads), the run's holder lease
and its admission. kombu's sweep runs every second (`unacked_restore_interval=1`,
`unacked_restore_throttle=1`). A worker that dies stops its heartbeats; within about one lease plus a
second its runs go back to the queue and another worker takes them. The trade-off: a worker that cannot
reach Redis for a whole lease (or is frozen that long) loses its runs to another worker, which takes a
run only once the first one's holder lease has lapsed; the first one finds out at its next heartbeat,
stops the run and writes nothing more for it, and only the holder can record a run's outcome
(`RunStore.finished` checks the token). The
heartbeat is a thread, not a task on the loop, so a loop busy with a long synchronous call (a local
model's prompt processing) does not make its runs look abandoned. The heartbeat relies on the layout of
kombu's Redis transport (a sorted set of delivery tags scored by delivery time), which the transport
documents through its `unacked_index_key` option.

**A redelivered run** continues from its checkpoint (`RedisCheckpoints`), which is saved only once the
events it accounts for are in the run's stream (`_AfterTheLog`): its finished steps are not run again,
the interrupted one starts as its next attempt, and its events number on after the last one its stream
holds. Readers see `StepStarted(attempt=2)` for the step and then its new events; the first
attempt's partial events stay in the log, before it.

**Cancellation.** `serve` publishes the run id on `<prefix>:cancel` (and sets the run's cancel key, for a
run no worker has started yet); every worker subscribes, and the one holding the run cancels it on its
loop, so each started LLM step delivers its `Done(cancelled)` to the log.

**Ordering.** A run's record gets its outcome (status, results or error) before its `RunFinished`
reaches the stream, so a reader that saw the end of the stream always finds the outcome.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from pipeline_ex.distributed.deployment import Deployment
from pipeline_ex.distributed.event_log import EventLogUnavailable, newest_seq
from pipeline_ex.distributed.run_records import RunRecord, renew_leases
from pipeline_ex.errors import PipelineError, RunCancelled
from pipeline_ex.events import Delta, RunFinished
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.server.public_events import PathScrubber, PublicEvents, new_reference
from pipeline_ex.sse import error_payload
from pipeline_ex.tracing import continued_from
from pipeline_ex.workflow.checkpoints import workflow_digest

logger = redacting_logger("pipeline_ex.worker")

Outcome = Literal["ok", "failed", "cancelled", "duplicate", "missing", "lost"]


class WorkflowMismatch(PipelineError):
    """The worker's copy of a workflow is not the one the run was started with (or it has none)."""


class RunHost:
    """Runs a worker process's runs on one event loop in a background thread (see the module docstring).

    :param workflows: the folder of workflow files (the same as `serve`'s).
    :param name: the worker's name in run records and logs.
    :param kombu_unacked_index: the key of kombu's sorted set of unacknowledged deliveries.
    """

    def __init__(
        self,
        deployment: Deployment,
        workflows: str | os.PathLike[str],
        *,
        name: str | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        kombu_unacked_index: str = "unacked_index",
    ) -> None:
        self.deployment = deployment
        self.folder = Path(workflows)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.output_dir = output_dir
        self.unacked_index = kombu_unacked_index
        self.token = uuid.uuid4().hex
        self.scrub = PathScrubber(self.folder)
        self._catalogs: dict[bool, Any] = {}
        self._held: dict[str, str | None] = {}
        """Run id -> the delivery tag of the task that runs it (for the heartbeat)."""
        self._running: dict[str, Any] = {}
        """Run id -> its `EventStream`, while it runs."""
        self._cancel_asked: set[str] = set()
        self._lost: set[str] = set()
        """Runs another worker took over (this one's heartbeat lapsed): nothing more is written for them."""
        self._appended: dict[str, int] = {}
        """Run id -> the seq of its last event handed to the log."""
        self._waiting: dict[str, tuple[int, asyncio.Future[None]]] = {}
        """Run id -> the seq a checkpoint waits to see handed to the log, and the future that wakes it."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- life ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the workflows, start the loop thread (with its cancel listener) and the heartbeat thread.

        :raises PipelineError: when the workflows folder has no workflow or Redis cannot be reached.
        """
        from pipeline_ex.server.catalog import WorkflowCatalog

        self._catalogs[False] = WorkflowCatalog.from_folder(self.folder, mock=False)
        self._catalogs[True] = WorkflowCatalog.from_folder(self.folder, mock=True)
        if not self._catalogs[True].workflows:
            raise PipelineError(f"no workflow could be loaded from {self.folder}; 'pipeline-ex validate' says why")
        self._thread = threading.Thread(target=self._run_loop, name="pipeline-ex-runs", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error
        threading.Thread(target=self._heartbeat, name="pipeline-ex-heartbeat", daemon=True).start()

    def _run_loop(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self.client = self.deployment.async_client()
            self.store = self.deployment.run_store(self.client)
            self.checkpoints = self.deployment.checkpoints(self.client)
            self.log = self.deployment.event_log()
            loop.run_until_complete(self.client.ping())
            self._listener = loop.create_task(self._listen_for_cancels())
        except BaseException as error:
            self._startup_error = EventLogUnavailable(self.deployment.redis_url, error)
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def stop(self) -> None:
        """Stop the heartbeat and the loop (runs still going are left for redelivery)."""
        self._stop.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _heartbeat(self) -> None:
        client = self.deployment.sync_client()
        lease = self.deployment.lease_seconds
        while not self._stop.wait(lease / 3):
            held = dict(self._held)  # a copy: the loop thread adds and removes runs meanwhile
            if not held:
                continue
            try:
                lost = renew_leases(client, self.deployment.key_prefix, dict.fromkeys(held, self.token), lease)
                tags = {tag: time.time() for run_id, tag in held.items() if tag and run_id not in lost}
                if tags:
                    client.zadd(self.unacked_index, tags, xx=True)
            except Exception as error:  # Redis unreachable for a moment: the next beat tries again
                logger.warning("worker %s: heartbeat failed: %s", self.name, error)
                continue
            for run_id in lost:
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._lose, run_id)

    def _lose(self, run_id: str) -> None:
        """Another worker took the run over (this one went a whole lease without a heartbeat): stop writing it."""
        if run_id not in self._held or run_id in self._lost:
            return
        logger.warning("worker %s: run %s was taken over by another worker; stopping it here", self.name, run_id)
        self._lost.add(run_id)
        self._wake(run_id)
        events = self._running.get(run_id)
        if events is not None:
            events.cancel()

    # -- runs ---------------------------------------------------------------------------------------------

    def execute(self, run_id: str, delivery_tag: str | None = None) -> Outcome:
        """Run `run_id` on the loop and wait for it to end (called from a Celery task's thread)."""
        assert self._loop is not None, "start() the host first"
        future: Future[Outcome] = asyncio.run_coroutine_threadsafe(self.run(run_id, delivery_tag), self._loop)
        return future.result()

    async def run(self, run_id: str, delivery_tag: str | None = None) -> Outcome:
        """Run (or continue) one run and record how it ended; a delivery of a run that ended is dropped."""
        store = self.store
        lease = self.deployment.lease_seconds
        while not await store.claim(run_id, self.token, lease):
            record = await store.get(run_id)
            if record is None or record.finished:
                return "missing" if record is None else "duplicate"
            await asyncio.sleep(lease / 3)  # another worker holds it: wait for its end, or its lease to lapse
        record = await store.get(run_id)  # read once held: the run may have ended before the claim
        if record is None or record.finished:
            await store.release(run_id, self.token)
            if record is None:
                logger.warning("worker %s: run %s has no record (it expired); dropping its task", self.name, run_id)
            return "missing" if record is None else "duplicate"
        self._held[run_id] = delivery_tag
        try:
            return await self._run(record)
        finally:
            self._held.pop(run_id, None)
            self._running.pop(run_id, None)
            self.log.forget(run_id)
            self._cancel_asked.discard(run_id)
            self._lost.discard(run_id)

    async def _run(self, record: RunRecord) -> Outcome:
        from pipeline_ex.workflow.iterate import astream

        run_id = record.run_id
        attempt = await self.store.started(run_id, self.name)
        logger.info("worker %s: run %s of %r, attempt %d", self.name, run_id, record.workflow, attempt)
        redactor = PublicEvents(run_id, self.scrub.text, record.workflow)
        finished_event: RunFinished | None = None
        events = None
        self._appended[run_id], _ = await newest_seq(self.client, self.log.key(run_id))  # an earlier attempt's
        try:
            loaded = self._workflow(record)
            events = astream(
                loaded,
                record.inputs,
                mock=record.mock,
                run_id=run_id,
                lifecycle=True,
                output_dir=self.output_dir,
                checkpoints=_AfterTheLog(self.checkpoints, self),
                resume=True,
            )
            self._running[run_id] = events
            if await self.store.cancel_requested(run_id):
                self._cancel_asked.add(run_id)
            # the run's task, made by the first iteration, continues the submitter's trace (when it had one)
            with continued_from(record.trace_context):
                async for event in events:
                    if run_id in self._lost:
                        continue  # another worker writes this run now
                    if run_id in self._cancel_asked and not events.cancelled:
                        events.cancel()
                    if type(event) is RunFinished:
                        finished_event = redactor.public(event)  # type: ignore[assignment]
                        continue  # written after the record has the outcome
                    await self.log.aappend(event if type(event) is Delta else redactor.public(event))
                    self._appended[run_id] = event.seq
                    waiting = self._waiting.get(run_id)
                    if waiting is not None and event.seq >= waiting[0]:
                        self._wake(run_id)
            if run_id in self._lost:
                return "lost"
            if events.result is None:
                raise RunCancelled(f"run {run_id} was cancelled")
        except (RunCancelled, asyncio.CancelledError) as stopped:
            if run_id in self._lost:
                return "lost"
            await self._end(record, "cancelled", finished_event, error={"type": "cancelled", "message": str(stopped)})
            return "cancelled"
        except Exception as error:
            if run_id in self._lost:
                return "lost"
            if _unreachable(error):
                raise  # Redis went away: the task is given back, and the run continues when it is back
            reference = redactor.reference or new_reference()
            self._log_failure(record, error, reference)
            payload = self.scrub.payload(error_payload(error))  # the server adds the reference to the message
            await self._end(record, "failed", finished_event, error={**payload, "reference": reference})
            return "failed"
        finally:
            self._appended.pop(run_id, None)
            if events is not None:
                await events.aclose()
        await self._end(record, "ok", finished_event, result=events.result.to_json())
        return "ok"

    async def flushed_through(self, run_id: str, seq: int) -> None:
        """Wait until the run's events up to `seq` are in its stream (before a checkpoint says they happened)."""
        appended = self._appended.get(run_id)
        if appended is None:
            return  # not a run this host is running
        if appended < seq and run_id not in self._lost:
            woken = asyncio.get_running_loop().create_future()
            self._waiting[run_id] = (seq, woken)
            try:
                await woken
            finally:
                self._waiting.pop(run_id, None)
        await self.log.aflush(run_id)

    def _wake(self, run_id: str) -> None:
        """Wake the checkpoint waiting on the run's events (they reached its seq, or the run was lost)."""
        waiting = self._waiting.pop(run_id, None)
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result(None)

    async def _end(
        self,
        record: RunRecord,
        status: Literal["ok", "failed", "cancelled"],
        finished_event: RunFinished | None,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Record the outcome, then end the run's stream (with its `RunFinished`, when it had one).

        Nothing is written when another worker holds the run by then.
        """
        usage = finished_event.usage.model_dump() if finished_event is not None and finished_event.usage else None
        held = await self.store.finished(
            record.run_id, status, token=self.token, result=result, error=error, usage=usage
        )
        if not held:
            logger.warning("worker %s: run %s was taken over before it ended here", self.name, record.run_id)
            return
        if finished_event is not None:
            await self.log.aappend(finished_event)
        else:
            await self.log.afinish(record.run_id, status)
        await self.log.aflush(record.run_id)

    def _workflow(self, record: RunRecord) -> Any:
        loaded = self._catalogs[record.mock].workflows.get(record.workflow)
        if loaded is None:
            raise WorkflowMismatch(
                f"worker {self.name} has no workflow {record.workflow!r} in {self.folder}; run every worker from "
                "the same project folder as the servers"
            )
        if workflow_digest(loaded) != record.digest:
            raise WorkflowMismatch(
                f"worker {self.name}'s copy of workflow {record.workflow!r} differs from the one the run was started "
                "with; deploy the same workflow files to every server and worker"
            )
        return loaded

    def _log_failure(self, record: RunRecord, error: BaseException, reference: str) -> None:
        extra = {"reference": reference, "run_id": record.run_id, "workflow": record.workflow}
        if isinstance(error, PipelineError):
            logger.warning("run %s failed (reference %s): %s", record.run_id, reference, error, extra=extra)
        else:
            logger.error(
                "run %s failed unexpectedly (reference %s)", record.run_id, reference, exc_info=error, extra=extra
            )

    async def _listen_for_cancels(self) -> None:
        """Cancel the runs this process holds as their cancel messages arrive (reconnecting after errors)."""
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.store.cancel_channel)
                for run_id in list(self._held):  # cancels asked for while the listener was away
                    if await self.store.cancel_requested(run_id):
                        self._cancel(run_id)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    self._cancel(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("worker %s: cancel listener lost Redis (%s); reconnecting", self.name, error)
                await asyncio.sleep(0.5)

    def _cancel(self, run_id: str) -> None:
        """Cancel a run this process holds (one it does not hold is another worker's)."""
        if run_id not in self._held:
            return
        self._cancel_asked.add(run_id)
        events = self._running.get(run_id)
        if events is not None and not events.cancelled:
            logger.info("worker %s: cancelling run %s", self.name, run_id)
            events.cancel()


class _AfterTheLog:
    """A run's checkpoints, saved only once the events they account for are in the run's stream.

    The run hands its events to the worker through a queue; without this, a checkpoint could say a step
    finished while its `Done` was still on its way, and a worker that died then would leave readers
    without it.
    """

    def __init__(self, store: Any, host: RunHost) -> None:
        self.store = store
        self.host = host

    async def load(self, run_id: str) -> Any:
        """The run's checkpoint."""
        return await self.store.load(run_id)

    async def save(self, checkpoint: Any) -> None:
        """Save a running run's checkpoint after its events up to the checkpoint's `last_seq` are written."""
        if checkpoint.status == "running":
            await self.host.flushed_through(checkpoint.run_id, checkpoint.last_seq)
        await self.store.save(checkpoint)

    async def discard(self, run_id: str) -> None:
        """Nothing: the run's record drops its checkpoint along with recording its outcome."""


def _unreachable(error: BaseException) -> bool:
    """Whether an error says Redis could not be reached (rather than that the run failed)."""
    import redis

    return isinstance(error, EventLogUnavailable | redis.ConnectionError | redis.TimeoutError)
