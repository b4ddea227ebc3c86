"""`Gap`: the events a reader of a run's log missed because the log no longer keeps them.

Both logs report one, the in-memory log of `pipeline-ex serve` (`server.runs`) and the Redis Streams log
(`distributed.event_log`), and the SSE layer turns it into a `gap` frame.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """Events `first_seq..last_seq` were dropped from the log before this reader read them.

    A run's seqs are consecutive, so `count` is how many events the reader missed.
    """

    first_seq: int
    last_seq: int

    @property
    def count(self) -> int:
        """How many seqs the gap spans."""
        return self.last_seq - self.first_seq + 1
