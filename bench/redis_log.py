"""The Redis event log's client CPU cost per event: appending (batched, and one XADD per event) and following.

Measures process CPU time (`time.process_time`), not wall time: Redis's own work happens in its own
process. Starts a real redis-server (tests/redis_kit.py) on a free loopback port.

python -m bench.redis_log [--events N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import uuid
from collections.abc import Callable

import redis

from pipeline_ex.distributed import RedisEventLog
from pipeline_ex.events import Delta, RunFinished, new_delta
from tests.redis_kit import RedisServer

TARGET_US = 5.0


def _deltas(run_id: str, count: int) -> list[Delta]:
    return [new_delta(f"token{n} ", "answer", run_id, n) for n in range(1, count + 1)]


def _cpu_us_per_event(work: Callable[[], None], events: int) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        work()
        return (time.process_time() - started) / events * 1e6
    finally:
        gc.enable()


def append_batched(url: str, events: int) -> float:
    """µs of CPU per event for `append` with the default batching, `finish` included."""
    log = RedisEventLog(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}", maxlen=events + 10)
    log.append(new_delta("warm", "answer", "warm", 1))  # connect and load the script outside the timing
    log.flush()
    deltas = _deltas("run", events)

    def work() -> None:
        for delta in deltas:
            log.append(delta)
        log.finish("run", "ok")

    try:
        return _cpu_us_per_event(work, events)
    finally:
        log.close()


def append_one_xadd_each(url: str, events: int) -> float:
    """µs of CPU per event for redis-py's `xadd`, one round trip per event (what batching saves)."""
    client = redis.Redis.from_url(url)
    key = f"bench-{uuid.uuid4().hex[:8]}:run:run:events"
    client.ping()
    deltas = _deltas("run", events)

    def work() -> None:
        for delta in deltas:
            client.xadd(key, {"e": delta.model_dump_json()}, id=f"{delta.seq}-0", maxlen=events + 10, approximate=True)

    try:
        return _cpu_us_per_event(work, events)
    finally:
        client.close()


def follow(url: str, events: int) -> float:
    """µs of CPU per event for `follow` reading a written run (XREAD batches, JSON parsing)."""
    log = RedisEventLog(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}", maxlen=events + 10)
    for delta in _deltas("run", events):
        log.append(delta)
    log.append(RunFinished(run_id="run", seq=events + 1, status="ok"))

    async def read() -> tuple[int, float]:
        async for _ in log.follow("run", after_seq=events):  # connect outside the timing
            pass
        seen = 0
        started = time.process_time()
        async for _ in log.follow("run"):
            seen += 1
        cpu = time.process_time() - started
        await log.aclose()
        return seen, cpu

    gc.collect()
    gc.disable()
    try:
        seen, cpu = asyncio.run(read())
    finally:
        gc.enable()
        log.close()
    assert seen == events + 1
    return cpu / seen * 1e6


def measure(events: int = 20_000, runs: int = 5) -> dict[str, float]:
    """The median over `runs` of each cost, in µs of CPU per event."""
    server = RedisServer().start()
    try:
        batched = [append_batched(server.url, events) for _ in range(runs)]
        single = [append_one_xadd_each(server.url, min(events, 5000)) for _ in range(runs)]
        followed = [follow(server.url, events) for _ in range(runs)]
    finally:
        server.stop()
    return {
        "append, batched (µs/event)": statistics.median(batched),
        "append, one XADD per event (µs/event)": statistics.median(single),
        "follow (µs/event)": statistics.median(followed),
    }


def main() -> None:
    """Print the costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    results = measure(options.events, options.runs)
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:7.2f}")
    batched = results["append, batched (µs/event)"]
    print(f"target: batched append ≤ {TARGET_US} µs/event: {'met' if batched <= TARGET_US else 'NOT met'}")


if __name__ == "__main__":
    main()
