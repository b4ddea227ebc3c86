"""Running beyond one process: the pieces that keep a run's state in Redis instead of in memory.

Needs the `distributed` extra (redis-py). `RedisEventLog` keeps each run's events in a Redis Stream, so
any process can append to, follow and resume a run's events.
"""

from __future__ import annotations

from pipeline_ex.distributed.event_log import (
    DEFAULT_KEY_PREFIX,
    EventLogError,
    EventLogUnavailable,
    NotAnEventLog,
    RedisEventLog,
    redact_url,
)
from pipeline_ex.gaps import Gap

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "EventLogError",
    "EventLogUnavailable",
    "Gap",
    "NotAnEventLog",
    "RedisEventLog",
    "redact_url",
]
