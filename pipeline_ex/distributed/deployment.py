"""The settings every process of a deployment shares: where Redis is, key names, expiry, leases and queue.

`serve --redis URL` and `pipeline-ex worker --redis URL` (or `PIPELINE_REDIS_URL`) build one
`Deployment` each; they must agree on the URL and the key prefix. One Redis holds both Celery's queue
(kombu's keys) and pipeline_ex's own keys (`<prefix>:...`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline_ex.distributed.event_log import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_MAXLEN,
    DEFAULT_RUNNING_TTL_SECONDS,
    DEFAULT_TTL_SECONDS,
    EventLogUnavailable,
    RedisEventLog,
)
from pipeline_ex.distributed.redis_checkpoints import RedisCheckpoints
from pipeline_ex.distributed.run_records import DEFAULT_LEASE_SECONDS, RunStore
from pipeline_ex.errors import ExtraNotInstalledError, PipelineError

REDIS_URL_ENV = "PIPELINE_REDIS_URL"
"""The Redis URL `serve` and `worker` use when `--redis` is not given (`batch` fans out only with `--redis`)."""
DEFAULT_QUEUE = "pipeline-ex"


class DeploymentError(PipelineError):
    """Settings of a deployment that cannot work (no Redis URL, a lease too short...)."""


@dataclass(frozen=True)
class Deployment:
    """Where a deployment keeps its runs, and how long.

    :param redis_url: the Redis of the deployment (Celery's broker and the runs' state).
    :param key_prefix: the prefix of pipeline_ex's keys.
    :param ttl_seconds: how long a finished run's events, record and checkpoint are kept.
    :param running_ttl_seconds: how long they are kept after their last write while the run is going.
    :param maxlen: events kept per run (older ones are reported as a gap).
    :param lease_seconds: how long a run's worker may go without a heartbeat before the run is given to
        another worker (Celery's `visibility_timeout`, and the holder lease). Heartbeats come every third
        of it.
    :param queue: the Celery queue runs are sent to.
    """

    redis_url: str
    key_prefix: str = DEFAULT_KEY_PREFIX
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    running_ttl_seconds: int = DEFAULT_RUNNING_TTL_SECONDS
    maxlen: int = DEFAULT_MAXLEN
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    queue: str = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        if not self.redis_url:
            raise DeploymentError(f"no Redis URL: pass --redis redis://HOST:PORT/DB or set {REDIS_URL_ENV}")
        if self.lease_seconds < 1:
            raise DeploymentError(f"the lease must be at least 1 second, got {self.lease_seconds}")

    @classmethod
    def from_env(cls, url: str | None = None, **settings: Any) -> Deployment:
        """A deployment on `url`, or on `PIPELINE_REDIS_URL` when `url` is None."""
        return cls(url or os.environ.get(REDIS_URL_ENV, ""), **settings)

    def event_log(self) -> RedisEventLog:
        """The runs' event log."""
        return RedisEventLog(
            self.redis_url,
            key_prefix=self.key_prefix,
            maxlen=self.maxlen,
            ttl_seconds=self.ttl_seconds,
            running_ttl_seconds=self.running_ttl_seconds,
        )

    def async_client(self) -> Any:
        """A new `redis.asyncio.Redis` on the deployment's Redis."""
        try:
            import redis.asyncio as aioredis
        except ImportError as error:
            raise ExtraNotInstalledError("running beyond one machine", "distributed", "redis") from error
        # No read timeout: the workers' cancel listener waits on its subscription for as long as it takes.
        return aioredis.Redis.from_url(
            self.redis_url, socket_connect_timeout=5, socket_timeout=None, socket_keepalive=True
        )

    def sync_client(self) -> Any:
        """A new `redis.Redis` on the deployment's Redis."""
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=5)

    def check_reachable(self) -> None:
        """Make sure Redis answers, from outside an event loop.

        :raises EventLogUnavailable: naming the URL (its password redacted).
        """
        client = self.sync_client()
        try:
            client.ping()
        except Exception as error:
            raise EventLogUnavailable(self.redis_url, error) from None
        finally:
            client.close()

    def run_store(self, client: Any) -> RunStore:
        """The run records, through `client`."""
        return RunStore(
            client,
            key_prefix=self.key_prefix,
            ttl_seconds=self.ttl_seconds,
            running_ttl_seconds=self.running_ttl_seconds,
        )

    def checkpoints(self, client: Any) -> RedisCheckpoints:
        """The runs' checkpoints, through `client`."""
        return RedisCheckpoints(client, key_prefix=self.key_prefix, ttl_seconds=self.running_ttl_seconds)
