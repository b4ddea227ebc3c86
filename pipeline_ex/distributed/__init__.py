"""Running beyond one machine: runs' events, records and checkpoints in Redis, and Celery workers.

Needs the `distributed` extra (redis-py and Celery).

- `RedisEventLog` keeps each run's events in a Redis Stream, so any process can append to, follow and
  resume them.
- `RunStore` keeps what each run is and where it stands, admits runs across replicas, and carries
  cancellations; `RedisCheckpoints` keeps the runs' checkpoints.
- `RunHost` runs a worker process's runs on one event loop; `pipeline-ex worker` puts it under Celery
  (`celery_app`), and `serve --redis` enqueues runs and follows them (`RemoteRunRegistry`).
- `Deployment` holds the settings all of them share.
"""

from __future__ import annotations

from pipeline_ex.distributed.deployment import REDIS_URL_ENV, Deployment, DeploymentError
from pipeline_ex.distributed.event_log import (
    DEFAULT_KEY_PREFIX,
    EventLogError,
    EventLogUnavailable,
    NotAnEventLog,
    RedisEventLog,
    redact_url,
)
from pipeline_ex.distributed.redis_checkpoints import RedisCheckpoints
from pipeline_ex.distributed.run_records import AdmissionRefused, RunRecord, RunStore
from pipeline_ex.gaps import Gap

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "REDIS_URL_ENV",
    "AdmissionRefused",
    "Deployment",
    "DeploymentError",
    "EventLogError",
    "EventLogUnavailable",
    "Gap",
    "NotAnEventLog",
    "RedisCheckpoints",
    "RedisEventLog",
    "RunRecord",
    "RunStore",
    "redact_url",
]
