"""`pipeline-ex batch --redis`: each row becomes a run of the deployment, run by whichever worker takes it.

`remote_row_runner` is the batch's `RowRunner` for a deployment: it records and enqueues the row's run as
`serve --redis` does (the batch's `--concurrency` bounds how many are queued at once; they count against
the admission limit the servers apply, `--max-concurrent-runs`), follows the run's
Redis Stream to its end, and reads the outcome from the run's record. A row whose coroutine is cancelled
(the batch was stopped) has its run cancelled on its worker too, so nothing goes on running unseen.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline_ex.batch import RowOutcome, RowRunner, row_error
from pipeline_ex.context import new_run_id
from pipeline_ex.distributed.celery_app import celery_app, enqueue
from pipeline_ex.distributed.deployment import Deployment
from pipeline_ex.distributed.run_records import RunRecord
from pipeline_ex.tracing import trace_carrier
from pipeline_ex.workflow.checkpoints import workflow_digest
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.runner import InputError, resolve_inputs

UNBOUNDED = 1 << 30
"""The batch bounds its own runs (`--concurrency`): the deployment's admission limit is the servers'."""


def remote_row_runner(
    deployment: Deployment, loaded: LoadedWorkflow, *, mock: bool = False, rows_file: str = ""
) -> tuple[RowRunner, Any]:
    """A `RowRunner` that runs each row on the deployment's workers, and a coroutine function closing it."""
    client = deployment.async_client()
    store = deployment.run_store(client)
    log = deployment.event_log()
    app = celery_app(deployment)
    digest = workflow_digest(loaded)

    async def run_row(row: int, inputs: dict[str, Any]) -> RowOutcome:
        try:
            resolved = resolve_inputs(loaded, inputs)  # bad inputs fail here, as a local run's would
        except InputError as problem:
            return RowOutcome("failed", error=row_error(problem, step=None, where=f"{rows_file}:{row}"))
        run_id = new_run_id()
        try:
            admitted = RunRecord(run_id, loaded.name, digest, resolved, mock=mock, trace_context=trace_carrier())
            await store.admit(admitted, UNBOUNDED)
            await asyncio.to_thread(enqueue, app, run_id, deployment.queue)
            async for _ in log.follow(run_id):
                pass
        except asyncio.CancelledError:
            await asyncio.shield(store.request_cancel(run_id))  # a worker that starts it later cancels it too
            raise
        record = await store.get(run_id)
        if record is None or not record.finished:
            message = f"run {run_id} ended without an outcome in Redis (it expired?)"
            return RowOutcome("failed", run_id=run_id, error={"type": "error", "message": message})
        result = record.result or {}
        usage = record.usage
        if record.status != "ok":
            failure = dict(record.error or {"type": record.status, "message": f"the run was {record.status}"})
            failure.pop("run_id", None)
            if failure.get("type") == "internal" and "reference" in failure:
                failure["message"] = f"{failure['message']} (reference {failure['reference']})"
            return RowOutcome("failed", run_id=run_id, error=failure, usage=usage)
        return RowOutcome("ok", run_id=run_id, steps=steps_of(loaded, result), usage=usage)

    async def close() -> None:
        await log.aclose()
        await client.aclose()

    return run_row, close


def steps_of(loaded: LoadedWorkflow, result: dict[str, Any]) -> dict[str, Any]:
    """Each top-level step's text from a run's recorded results (`RunResult.to_json()`), in workflow order.

    An LLM step gives its text, a python step its value and a skipped step null; a group gives its
    recorded summary (`RunResult.to_json()`'s), not the local batch's list of texts, and the children of a
    `parallel` group are listed under their own ids.
    """
    steps: dict[str, Any] = {}
    recorded, values = result.get("steps", {}), result.get("values", {})
    for item in loaded.steps:
        for step_id in (item.id, *(child.id for child in item.children if item.kind == "parallel")):
            if step_id in recorded:
                value = recorded[step_id]
                if isinstance(value, dict) and value.get("status") == "skipped":
                    steps[step_id] = None
                else:
                    steps[step_id] = value.get("text", value) if isinstance(value, dict) else value
            elif step_id in values:
                steps[step_id] = values[step_id]
    return steps
