"""The Celery side: the app both `serve` and the workers build, the run task, and starting a worker.

The task carries only the run id (`pipeline_ex.run`); what the run is (workflow, digest, inputs) is in
its record (`RunStore`), so a redelivered task finds the run's latest state. Tasks are acknowledged
late (`task_acks_late`: when the run has ended), and `task_reject_on_worker_lost` gives a task back
when the pool loses the thread or process running it. A task whose run could not reach Redis is given
back too (`Reject(requeue=True)`, after a lease's wait); a run's own failure is recorded as its outcome
and its task acknowledged. A prefetch of one task per pool slot keeps a
worker from taking runs it has no room for. How a worker that dies gets its runs redelivered within
seconds, and how the tasks drive asyncio, is told in `pipeline_ex.distributed.worker`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pipeline_ex.distributed.deployment import Deployment
from pipeline_ex.errors import ExtraNotInstalledError

RUN_TASK = "pipeline_ex.run"
DEFAULT_CONCURRENCY = 64
"""Runs one worker process holds at once (Celery threads waiting on the one event loop)."""


def celery_app(deployment: Deployment) -> Any:
    """The Celery app of a deployment: Redis broker, JSON tasks, late acks, a visibility timeout of one lease."""
    try:
        from celery import Celery
    except ImportError as error:
        raise ExtraNotInstalledError("running beyond one machine", "distributed", "celery") from error
    app = Celery("pipeline_ex", broker=deployment.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=deployment.queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": deployment.lease_seconds,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    return app


def enqueue(app: Any, run_id: str, queue: str) -> None:
    """Send a run's task (blocking: call it off the event loop)."""
    app.send_task(RUN_TASK, args=[run_id], queue=queue)


def run_worker(
    deployment: Deployment,
    workflows: str | os.PathLike[str],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    name: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (threads pool) whose tasks run on one `RunHost` event loop, until it is stopped.

    SIGTERM or a first Ctrl-C is Celery's warm shutdown: the worker takes no new runs and waits for the
    ones it holds. A second Ctrl-C (cold shutdown) leaves them to be redelivered to another worker.
    """
    from pipeline_ex.distributed.worker import RunHost

    host = RunHost(deployment, workflows, name=name, output_dir=output_dir)
    host.start()
    app = celery_app(deployment)

    from celery.exceptions import Reject

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run(task: Any, run_id: str) -> str:
        properties = getattr(task.request, "properties", None) or {}
        tag = properties.get("delivery_tag") or (task.request.delivery_info or {}).get("delivery_tag")
        try:
            return host.execute(run_id, tag)
        except Exception as error:  # Redis could not be reached: give the task back rather than lose the run
            time.sleep(deployment.lease_seconds)  # not at once: Redis may take a moment to come back
            raise Reject(f"run {run_id} could not be run: {error}", requeue=True) from error

    worker = app.Worker(
        pool="threads",
        concurrency=concurrency,
        loglevel=loglevel,
        hostname=f"{host.name.replace(':', '-')}@{socket.gethostname()}",
        queues=[deployment.queue],
        without_gossip=True,
        without_mingle=True,
    )
    try:
        worker.start()
    finally:
        host.stop()
