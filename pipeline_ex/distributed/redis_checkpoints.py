"""Checkpoints in Redis, so the worker a run is redelivered to continues where the last one stopped.

The checkpoint of a run is one JSON string at `<prefix>:run:<run_id>:checkpoint` (the format
`pipeline_ex.workflow.checkpoints.Checkpoint` defines), kept as long as the run's record. A loaded
checkpoint continues the numbering after the last event in the run's stream, which may be later than the
checkpoint's own `last_seq`: the worker that died had delivered the interrupted step's first events.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline_ex.distributed.event_log import DEFAULT_KEY_PREFIX, newest_seq
from pipeline_ex.workflow.checkpoints import Checkpoint, ResumeError


class RedisCheckpoints:
    """A `CheckpointStore` in Redis (async redis-py client).

    :param ttl_seconds: how long a checkpoint is kept after its last save.
    """

    def __init__(self, client: Any, *, key_prefix: str = DEFAULT_KEY_PREFIX, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ttl_seconds = ttl_seconds

    def key(self, run_id: str) -> str:
        """The key of a run's checkpoint."""
        return f"{self.prefix}:run:{run_id}:checkpoint"

    async def load(self, run_id: str) -> Checkpoint | None:
        """The run's checkpoint, numbering on after the last event its stream holds.

        :raises ResumeError: for a value that is not a checkpoint.
        """
        raw = await self.client.get(self.key(run_id))
        if raw is None:
            return None
        try:
            checkpoint = Checkpoint.from_json(json.loads(raw))
        except (ValueError, TypeError, KeyError, ResumeError) as error:
            raise ResumeError(f"the checkpoint of run {run_id} in Redis cannot be read: {error}") from None
        written, _ = await newest_seq(self.client, f"{self.prefix}:run:{run_id}:events")
        checkpoint.last_seq = max(checkpoint.last_seq, written)
        return checkpoint

    async def save(self, checkpoint: Checkpoint) -> None:
        """Replace the run's checkpoint."""
        text = json.dumps(checkpoint.to_json(), ensure_ascii=False)
        await self.client.set(self.key(checkpoint.run_id), text, ex=self.ttl_seconds)

    async def discard(self, run_id: str) -> None:
        """Forget the run's checkpoint (workers leave this to `RunStore.finished`, which does it atomically)."""
        await self.client.delete(self.key(run_id))
