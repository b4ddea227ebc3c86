"""A fast guard against regressions of the Redis event log's client CPU per event, against a real redis-server.

The target is at most 5 µs of CPU per event for batched appends (bench/redis_log.py). Absolute times mean
nothing on a shared machine, so the guard compares with two floors measured in the same run, on the same
events: serializing each event alone (`model_dump_json`, which any log of JSON events pays), and
redis-py's `xadd`, one command per event (what batching saves). In the reference run the batched append
costs about 3 to 4 times its serialization and about a twentieth of one XADD per event; the margins below
are generous, so load on the machine does not make the guard fail.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
from collections.abc import Callable

import redis
from redis_kit import RedisServer

from pipeline_ex.distributed import RedisEventLog
from pipeline_ex.events import Delta, new_delta

EVENTS = 5000
XADD_EVENTS = 1000
REPEATS = 5
ALLOWED_OVER_SERIALIZING = 12.0
"""Batched appends may cost this many times the serialization of the same events (about 3 to 4 today)."""
ALLOWED_OF_ONE_XADD_EACH = 0.25
"""...and this fraction of one XADD per event (about 0.05 today)."""


def _deltas(run_id: str, count: int) -> list[Delta]:
    return [new_delta(f"token{n} ", "answer", run_id, n) for n in range(1, count + 1)]


def _cpu_us_per_event(work: Callable[[], object], events: int) -> float:
    samples = []
    for _ in range(REPEATS):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            work()
            samples.append((time.process_time() - started) / events * 1e6)
        finally:
            gc.enable()
    return statistics.median(samples)


def test_batched_appends_cost_a_small_multiple_of_serializing_and_a_fraction_of_one_xadd_each(
    redis_server: RedisServer,
) -> None:
    prefix = f"guard-{uuid.uuid4().hex[:8]}"
    log = RedisEventLog(redis_server.url, key_prefix=prefix, maxlen=EVENTS + 10)
    log.append(new_delta("warm", "answer", "warm", 1))  # connect and load the script outside the timing
    log.flush()
    client = redis.Redis.from_url(redis_server.url)
    client.ping()
    deltas = _deltas("run", EVENTS)
    runs = iter([(f"run-{n}", _deltas(f"run-{n}", EVENTS)) for n in range(REPEATS)])  # seqs start at 1 per run
    few = deltas[:XADD_EVENTS]

    def serialize() -> None:
        for delta in deltas:
            delta.model_dump_json()

    def append_batched() -> None:
        run_id, events = next(runs)
        for delta in events:
            log.append(delta)
        log.finish(run_id, "ok")

    def xadd_each() -> None:
        key = f"{prefix}:xadd:{uuid.uuid4().hex[:8]}"
        for delta in few:
            client.xadd(key, {"e": delta.model_dump_json()}, id=f"{delta.seq}-0")

    try:
        serialize_us = _cpu_us_per_event(serialize, EVENTS)
        batched_us = _cpu_us_per_event(append_batched, EVENTS)
        xadd_us = _cpu_us_per_event(xadd_each, XADD_EVENTS)
    finally:
        client.close()
        log.close()
    print(
        f"batched append {batched_us:.2f} µs/event, serializing {serialize_us:.2f}, one XADD each {xadd_us:.2f}: "
        f"{batched_us / serialize_us:.1f} times serializing (allowed {ALLOWED_OVER_SERIALIZING}), "
        f"{batched_us / xadd_us:.3f} of one XADD each (allowed {ALLOWED_OF_ONE_XADD_EACH})"
    )
    assert batched_us <= ALLOWED_OVER_SERIALIZING * serialize_us
    assert batched_us <= ALLOWED_OF_ONE_XADD_EACH * xadd_us
