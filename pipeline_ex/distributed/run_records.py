"""The runs of a deployment in Redis: what each run is, where it stands, who holds it, and admission.

Every `serve` replica and every worker reads and writes the same keys (`<prefix>` is the key prefix):

- `<prefix>:run:<run_id>`, a hash: the workflow's name and digest, the inputs (JSON), whether it runs on
  the mock provider, its status (`queued`, `running`, `ok`, `failed`, `cancelled`), the worker holding it
  and its attempt, and once it ended its results (`RunResult.to_json()`) or the error clients are shown.
  It expires with the run's event log.
- `<prefix>:runs`, a sorted set of run ids by creation time (what `GET /runs` lists).
- `<prefix>:active`, a sorted set of the runs admitted and not finished, scored by when their admission
  lapses: a queued run's lasts `queued_seconds`, a running run's is renewed by its worker's heartbeat. A
  new run is admitted by a script that drops lapsed entries and counts the rest against the limit,
  atomically, so `--max-concurrent-runs` holds across replicas.
- `<prefix>:run:<run_id>:owner`, the token of the worker running the run, with a lease its heartbeat
  renews: a second delivery of the same run waits for it to lapse (the holder died) or for the run to end.
- `<prefix>:run:<run_id>:cancel`, set when a cancel was asked for, and a message on the channel
  `<prefix>:cancel`, which the worker holding the run receives at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline_ex.distributed.event_log import DEFAULT_KEY_PREFIX
from pipeline_ex.errors import PipelineError

RecordStatus = Literal["queued", "running", "ok", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"ok", "failed", "cancelled"})
DEFAULT_QUEUED_SECONDS = 3600
DEFAULT_LEASE_SECONDS = 5.0

_ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[5])))
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
return 1
"""
_RENEW = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local lost = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2 * i - 1] then
    redis.call('PEXPIRE', KEYS[i], math.floor(lease * 1000))
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[2 * i])
  else
    table.insert(lost, ARGV[2 * i])
  end
end
return lost
"""
_FINISH = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class AdmissionRefused(PipelineError):
    """The deployment already has as many runs going as it admits."""


@dataclass
class RunRecord:
    """One run of a deployment, as `RunStore` keeps it."""

    run_id: str
    workflow: str
    digest: str
    inputs: dict[str, Any]
    mock: bool = False
    status: RecordStatus = "queued"
    created: float = field(default_factory=time.time)
    worker: str = ""
    attempt: int = 0
    """How many times a worker has started the run."""
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    """What clients are told about its failure (redacted, with the reference it was logged with)."""
    usage: dict[str, Any] | None = None
    """The tokens of all its LLM step instances (its `RunFinished.usage`), once it ended."""
    trace_context: dict[str, str] = field(default_factory=dict)
    """The W3C trace context of the span that submitted it (`tracing.trace_carrier`), which every attempt's
    run span continues; empty when the submitter was not traced."""

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self.status in FINISHED

    def fields(self) -> dict[str, str]:
        """The hash fields that store it."""
        values = {
            "workflow": self.workflow,
            "digest": self.digest,
            "inputs": json.dumps(self.inputs, ensure_ascii=False),
            "mock": "1" if self.mock else "0",
            "status": self.status,
            "created": repr(self.created),
            "worker": self.worker,
            "attempt": str(self.attempt),
        }
        if self.result is not None:
            values["result"] = json.dumps(self.result, ensure_ascii=False)
        if self.error is not None:
            values["error"] = json.dumps(self.error, ensure_ascii=False)
        if self.usage is not None:
            values["usage"] = json.dumps(self.usage)
        if self.trace_context:
            values["trace"] = json.dumps(self.trace_context)
        return values

    @classmethod
    def from_fields(cls, run_id: str, raw: dict[bytes, bytes]) -> RunRecord:
        """Read the hash fields `fields()` wrote."""
        text = {key.decode(): value.decode() for key, value in raw.items()}
        return cls(
            run_id=run_id,
            workflow=text["workflow"],
            digest=text["digest"],
            inputs=json.loads(text["inputs"]),
            mock=text.get("mock") == "1",
            status=text["status"],  # type: ignore[arg-type]
            created=float(text["created"]),
            worker=text.get("worker", ""),
            attempt=int(text.get("attempt", "0")),
            result=json.loads(text["result"]) if "result" in text else None,
            error=json.loads(text["error"]) if "error" in text else None,
            usage=json.loads(text["usage"]) if "usage" in text else None,
            trace_context=json.loads(text["trace"]) if "trace" in text else {},
        )

    def summary(self) -> dict[str, Any]:
        """What `GET /runs` lists about it."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "created": self.created,
            "attempt": self.attempt,
        }


class RunStore:
    """The run records of a deployment (see the module docstring), through an async redis-py client.

    :param client: a `redis.asyncio.Redis`.
    :param ttl_seconds: how long a finished run's record is kept (its event log's TTL).
    :param running_ttl_seconds: how long a record is kept while its run is going.
    :param queued_seconds: how long a queued run counts as admitted before a worker starts it.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl_seconds: int,
        running_ttl_seconds: int,
        queued_seconds: int = DEFAULT_QUEUED_SECONDS,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.ttl_seconds = ttl_seconds
        self.running_ttl_seconds = running_ttl_seconds
        self.queued_seconds = queued_seconds
        self.cancel_channel = f"{key_prefix}:cancel"
        self.active_key = f"{key_prefix}:active"
        self.runs_key = f"{key_prefix}:runs"

    def key(self, run_id: str) -> str:
        """The hash of a run."""
        return f"{self.prefix}:run:{run_id}"

    def owner_key(self, run_id: str) -> str:
        """The key holding the token of the worker that runs it."""
        return f"{self.prefix}:run:{run_id}:owner"

    def cancel_key(self, run_id: str) -> str:
        """The key set when the run's cancellation was asked for."""
        return f"{self.prefix}:run:{run_id}:cancel"

    async def admit(self, record: RunRecord, max_active: int) -> None:
        """Store a new run, counting it against `max_active` runs going across the deployment.

        :raises AdmissionRefused: when `max_active` runs are already admitted.
        """
        flat = [item for pair in record.fields().items() for item in pair]
        admitted = await self.client.eval(
            _ADMIT,
            3,
            self.active_key,
            self.key(record.run_id),
            self.runs_key,
            time.time(),
            max_active,
            self.queued_seconds,
            record.run_id,
            json.dumps(flat),
            self.running_ttl_seconds,
        )
        if not admitted:
            raise AdmissionRefused(f"the deployment is already running {max_active} runs")

    async def get(self, run_id: str) -> RunRecord | None:
        """The run's record, or None once it expired (or never was)."""
        raw = await self.client.hgetall(self.key(run_id))
        return RunRecord.from_fields(run_id, raw) if raw else None

    async def recent(self, limit: int = 100) -> list[RunRecord]:
        """The newest runs first, at most `limit`; ids whose records expired are dropped from the listing."""
        ids = [raw.decode() for raw in await self.client.zrevrange(self.runs_key, 0, limit - 1)]
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.key(run_id))
            found = await pipe.execute()
        gone = [run_id for run_id, raw in zip(ids, found, strict=True) if not raw]
        if gone:
            await self.client.zrem(self.runs_key, *gone)
        return [RunRecord.from_fields(run_id, raw) for run_id, raw in zip(ids, found, strict=True) if raw]

    async def active(self) -> int:
        """How many runs are admitted and not finished."""
        await self.client.zremrangebyscore(self.active_key, "-inf", time.time())
        return int(await self.client.zcard(self.active_key))

    async def claim(self, run_id: str, token: str, lease_seconds: float) -> bool:
        """Become the run's holder, unless another worker holds it with a lease that has not lapsed."""
        return bool(await self.client.set(self.owner_key(run_id), token, nx=True, px=int(lease_seconds * 1000)))

    async def holder(self, run_id: str) -> str | None:
        """The token of the worker holding the run, if its lease has not lapsed."""
        raw = await self.client.get(self.owner_key(run_id))
        return raw.decode() if raw is not None else None

    async def release(self, run_id: str, token: str) -> None:
        """Let go of a run this worker holds (and no other's)."""
        await self.client.eval(_RELEASE, 1, self.owner_key(run_id), token)

    def checkpoint_key(self, run_id: str) -> str:
        """The key of the run's checkpoint (`RedisCheckpoints`), dropped when the run's outcome is recorded."""
        return f"{self.prefix}:run:{run_id}:checkpoint"

    async def started(self, run_id: str, worker: str) -> int:
        """Mark the run running on `worker`; returns its attempt number."""
        key = self.key(run_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempt", 1)
            pipe.hset(key, mapping={"status": "running", "worker": worker})
            pipe.expire(key, self.running_ttl_seconds)
            attempt, *_ = await pipe.execute()
        return int(attempt)

    async def finished(
        self,
        run_id: str,
        status: Literal["ok", "failed", "cancelled"],
        *,
        token: str,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> bool:
        """Record how the run ended, drop its checkpoint, and release its admission and its holder, atomically.

        :param token: the worker's; nothing is written (False) when another worker holds the run by now.
        """
        update: dict[str, str] = {"status": status}
        if result is not None:
            update["result"] = json.dumps(result, ensure_ascii=False)
        if error is not None:
            update["error"] = json.dumps(error, ensure_ascii=False)
        if usage is not None:
            update["usage"] = json.dumps(usage)
        flat = [item for pair in update.items() for item in pair]
        keys = (self.key(run_id), self.owner_key(run_id), self.active_key)
        done = await self.client.eval(
            _FINISH,
            5,
            *keys,
            self.cancel_key(run_id),
            self.checkpoint_key(run_id),
            token,
            json.dumps(flat),
            self.ttl_seconds,
            run_id,
        )
        return bool(done)

    async def request_cancel(self, run_id: str) -> None:
        """Ask the worker holding the run (or the one that will start it) to cancel it."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.cancel_key(run_id), b"1", ex=self.running_ttl_seconds)
            pipe.publish(self.cancel_channel, run_id)
            await pipe.execute()

    async def cancel_requested(self, run_id: str) -> bool:
        """Whether a cancel of the run was asked for."""
        return bool(await self.client.exists(self.cancel_key(run_id)))


def renew_leases(client: Any, prefix: str, held: dict[str, str], lease_seconds: float) -> set[str]:
    """Renew the holder lease and the admission of every run in `held` (run id -> holder token).

    Called by the worker's heartbeat thread with a sync redis-py client, so a busy event loop does not
    make its runs look abandoned. Returns the runs whose lease lapsed or was taken over by another worker
    (they are left alone: the caller stops them).
    """
    if not held:
        return set()
    keys = [f"{prefix}:active", *(f"{prefix}:run:{run_id}:owner" for run_id in held)]
    args: list[Any] = [time.time(), lease_seconds]
    for run_id, token in held.items():
        args += [token, run_id]
    lost = client.eval(_RENEW, len(keys), *keys, *args)
    return {raw.decode() if isinstance(raw, bytes) else raw for raw in lost or []}
