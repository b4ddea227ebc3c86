"""The Redis Streams event log against a real redis-server (tests/redis_kit.py): order, resume, blocking
followers, trimming and gaps, expiry, batching and its errors."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis_kit import RedisServer

from pipeline_ex.distributed import EventLogError, EventLogUnavailable, Gap, NotAnEventLog, RedisEventLog
from pipeline_ex.events import Done, Response, RunEvent, RunFinished, StepFinished, StepStarted, new_delta


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def run_events(run_id: str, deltas: int = 5, status: str = "ok") -> list[RunEvent]:
    """A one-step run's events, seqs 1.. consecutive: StepStarted, Deltas, Done, StepFinished, RunFinished."""
    events: list[RunEvent] = [StepStarted(step="answer", run_id=run_id, seq=1, kind="llm")]
    events += [new_delta(f"t{n} ", "answer", run_id, n + 2) for n in range(deltas)]
    seq = len(events) + 1
    response = Response(text="".join(f"t{n} " for n in range(deltas)), provider="mock", finish_reason="stop")
    events.append(Done(response=response, step="answer", run_id=run_id, seq=seq, duration_ms=1.0))
    events.append(StepFinished(step="answer", run_id=run_id, seq=seq + 1, status="ok", duration_ms=1.0))
    events.append(RunFinished(run_id=run_id, seq=seq + 2, status=status))  # type: ignore[arg-type]
    return events


def stats(connection: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (`INFO commandstats`)."""
    info: dict[str, Any] = connection.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in info.items()}


async def collect(items: AsyncIterator[RunEvent | Gap]) -> list[RunEvent | Gap]:
    return [item async for item in items]


async def wait_blocked(connection: redis.Redis, count: int) -> None:
    """Wait (up to 5 s) until `count` clients are blocked in XREAD."""
    deadline = time.monotonic() + 5
    while True:
        blocked = [c for c in connection.client_list() if c["cmd"] == "xread" and "b" in c["flags"]]
        if len(blocked) >= count:
            return
        assert time.monotonic() < deadline, f"{len(blocked)} of {count} followers blocked in XREAD"
        await asyncio.sleep(0.01)  # watching the server from outside: there is nothing to block on


# -- appending and following ------------------------------------------------------------------------------


async def test_append_and_follow_in_order(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    events = run_events("run-a", deltas=50)
    follower = asyncio.create_task(collect(log.follow("run-a")))
    for event in events:
        await log.aappend(event)
    assert await asyncio.wait_for(follower, 5) == events
    assert log.events("run-a") == events
    await log.aclose()
    log.close()


async def test_resume_from_every_seq_gets_the_rest_once_in_order(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, read_count=4)  # several reads per follow
    events = run_events("run-r", deltas=20)
    for event in events:
        log.append(event)
    for after in range(len(events) + 1):  # Last-Event-ID: run-r:<after>; 0 is the start
        rest = await asyncio.wait_for(collect(log.follow("run-r", after_seq=after)), 5)
        assert rest == events[after:], after
        assert log.events("run-r", after_seq=after) == events[after:]
    await log.aclose()
    log.close()


async def test_two_concurrent_followers(redis_server: RedisServer, prefix: str, client: redis.Redis) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, batch_size=8)
    writer = RedisEventLog(redis_server.url, key_prefix=prefix, batch_size=8)
    events = run_events("run-2", deltas=100)
    followers = [asyncio.create_task(collect(log.follow("run-2"))) for _ in range(2)]
    await wait_blocked(client, 2)
    for event in events:
        await writer.aappend(event)
        if event.seq % 10 == 0:
            await asyncio.sleep(0)  # let the followers read between batches
    first, second = await asyncio.wait_for(asyncio.gather(*followers), 5)
    assert first == events
    assert second == events
    await writer.aclose()
    await log.aclose()


async def test_follower_started_before_the_run_blocks_without_polling(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=10)  # only Done/RunFinished flush
    events = run_events("run-b", deltas=3)
    received: list[RunEvent | Gap] = []
    arrived = asyncio.Event()

    async def follow() -> None:
        async for item in log.follow("run-b"):
            received.append(item)
            arrived.set()

    client.config_resetstat()
    follower = asyncio.create_task(follow())
    await wait_blocked(client, 1)
    await asyncio.sleep(0.5)  # idle: a polling follower would issue commands now
    assert stats(client).get("xread", 0) == 1
    assert received == []

    writer = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=10)
    for event in events[:4]:  # StepStarted and the Deltas: buffered, nothing reaches the follower
        await writer.aappend(event)
    await asyncio.sleep(0.2)
    assert received == []
    await writer.aappend(events[4])  # the Done flushes the batch
    await asyncio.wait_for(arrived.wait(), 5)
    assert received == events[:5]
    for event in events[5:]:
        await writer.aappend(event)
    await asyncio.wait_for(follower, 5)
    assert received == events
    # one XREAD blocked while idle, one per batch written (plus the read that returned the first one)
    assert stats(client)["xread"] <= 4
    await writer.aclose()
    await log.aclose()


async def test_a_follower_waits_through_a_long_silence(redis_server: RedisServer, prefix: str) -> None:
    """A run may say nothing for longer than redis-py's default 5 s read timeout: the follower keeps waiting."""
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    writer = RedisEventLog(redis_server.url, key_prefix=prefix)
    events = run_events("run-quiet", deltas=1)
    follower = asyncio.create_task(collect(log.follow("run-quiet")))
    await asyncio.sleep(6.5)  # takes 6.5 s: longer than the timeout it guards against
    assert not follower.done(), follower
    for event in events:
        await writer.aappend(event)
    assert await asyncio.wait_for(follower, 5) == events
    await writer.aclose()
    await log.aclose()


async def test_max_delay_flushes_without_another_append(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=0.05)
    events = run_events("run-d", deltas=3)
    for event in events[:3]:
        await log.aappend(event)
    assert log.events("run-d") == []
    started = time.monotonic()
    follower = log.follow("run-d")
    assert await asyncio.wait_for(follower.__anext__(), 5) == events[0]
    assert time.monotonic() - started < 1
    assert log.events("run-d") == events[:3]
    await follower.aclose()
    await log.aclose()


def test_sync_appends_flush_at_done_and_on_flush(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=10)
    events = run_events("run-s", deltas=3)
    for event in events[:4]:
        log.append(event)
    assert log.events("run-s") == []
    log.append(events[4])  # Done
    assert log.events("run-s") == events[:5]
    log.append(events[5])
    log.flush()
    assert log.events("run-s") == events[:6]
    log.close()


# -- batching ---------------------------------------------------------------------------------------------


def test_batched_appends_take_far_fewer_round_trips(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, batch_size=100, max_delay=10)
    log.append(new_delta("warm", "answer", "run-warm", 1))  # loads the script once (NOSCRIPT, SCRIPT LOAD)
    log.flush()
    client.config_resetstat()
    deltas = [new_delta(f"t{n} ", "answer", "run-n", n) for n in range(1, 1001)]
    for delta in deltas:
        log.append(delta)
    log.flush()
    counted = stats(client)
    assert counted["xadd"] == 1000
    assert counted["evalsha"] == 10  # one script call (one round trip) per 100 events
    assert log.events("run-n") == deltas
    log.close()


def test_a_flush_covers_every_run_in_one_round_trip(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, batch_size=1000, max_delay=10)
    log.append(new_delta("warm", "answer", "run-warm", 1))
    log.flush()
    runs = [f"run-m{n}" for n in range(5)]
    for seq in range(1, 11):
        for run_id in runs:
            log.append(new_delta(f"t{seq}", "answer", run_id, seq))
    client.config_resetstat()
    log.flush()
    counted = stats(client)
    assert counted["xadd"] == 50
    assert counted["evalsha"] == 5  # one pipelined execute: one script call per run
    for run_id in runs:
        assert [event.seq for event in log.events(run_id)] == list(range(1, 11))  # type: ignore[union-attr]
    log.close()


def test_the_script_is_loaded_again_after_a_script_flush(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    events = run_events("run-f", deltas=2)
    log.append(events[0])
    log.flush()
    client.script_flush()  # as after a Redis restart
    for event in events[1:]:
        log.append(event)
    assert log.events("run-f") == events
    log.close()


# -- trimming and gaps ------------------------------------------------------------------------------------


async def test_maxlen_trims_and_a_resume_before_the_first_kept_event_gets_a_gap(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, maxlen=100, batch_size=50)
    deltas = [new_delta(f"t{n} ", "answer", "run-t", n) for n in range(1, 1001)]
    for delta in deltas:
        log.append(delta)
    log.finish("run-t", "ok")
    key = log.key("run-t")
    kept = client.xlen(key)
    assert 100 <= kept <= 300  # MAXLEN ~ trims whole stream nodes (100 entries each by default)
    first_kept = int(client.xrange(key, count=1)[0][0].split(b"-")[0])

    for after in (0, 17, first_kept - 2):
        items = await asyncio.wait_for(collect(log.follow("run-t", after_seq=after)), 5)
        assert items[0] == Gap(after + 1, first_kept - 1)
        assert items[0].count == first_kept - 1 - after  # type: ignore[union-attr]
        assert items[1:] == deltas[first_kept - 1 :]
        assert log.events("run-t", after_seq=after) == items
    for after in (first_kept - 1, first_kept + 10):  # nothing after these was trimmed
        items = await asyncio.wait_for(collect(log.follow("run-t", after_seq=after)), 5)
        assert items == deltas[after:]
    await log.aclose()
    log.close()


async def test_a_follower_that_falls_behind_gets_a_gap(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, maxlen=100, batch_size=50)
    reader = RedisEventLog(redis_server.url, key_prefix=prefix, read_count=5)
    log.append(new_delta("first", "answer", "run-l", 1))
    log.flush()
    follower = reader.follow("run-l")
    assert await asyncio.wait_for(follower.__anext__(), 5) == new_delta("first", "answer", "run-l", 1)
    deltas = [new_delta(f"t{n} ", "answer", "run-l", n) for n in range(2, 1002)]
    for delta in deltas:
        log.append(delta)
    log.finish("run-l", "ok")
    rest = await asyncio.wait_for(collect(follower), 5)
    gap = rest[0]
    assert isinstance(gap, Gap)
    assert gap.first_seq == 2
    assert rest[1:] == deltas[gap.last_seq - 1 :]
    await reader.aclose()
    log.close()


# -- finishing and expiry ---------------------------------------------------------------------------------


def test_a_finished_log_is_marked_and_expires(redis_server: RedisServer, prefix: str, client: redis.Redis) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, ttl_seconds=60, running_ttl_seconds=5000)
    events = run_events("run-x", deltas=2)
    for event in events[:-1]:
        log.append(event)
    log.flush()
    key = log.key("run-x")
    assert 60 < client.ttl(key) <= 5000  # still going: the running TTL
    log.append(events[-1])  # RunFinished
    assert 0 < client.ttl(key) <= 60
    top = client.xrevrange(key, count=1)[0]
    assert top == (f"{events[-1].seq}-1".encode(), {b"end": b"ok"})
    with pytest.raises(EventLogError, match="has finished"):
        log.append(new_delta("late", "answer", "run-x", 100))
        log.flush()
    other = RedisEventLog(redis_server.url, key_prefix=prefix)  # another process's writer
    with pytest.raises(EventLogError, match="has finished"):
        other.append(new_delta("late", "answer", "run-x", 100))
        other.flush()
    log.finish("run-x", "ok")  # finishing again does nothing
    assert log.events("run-x") == events
    other.close()

    short = RedisEventLog(redis_server.url, key_prefix=prefix, ttl_seconds=1)
    short.append(new_delta("x", "answer", "run-y", 1))
    short.finish("run-y", "cancelled")  # a run that ends without a RunFinished
    assert client.xrevrange(short.key("run-y"), count=1)[0] == (b"1-1", {b"end": b"cancelled"})
    assert 0 < client.ttl(short.key("run-y")) <= 1
    deadline = time.monotonic() + 5
    while client.exists(short.key("run-y")):
        assert time.monotonic() < deadline, "the finished log did not expire"
        time.sleep(0.05)  # waiting for the server's expiry cycle
    short.close()
    log.close()


async def test_a_follower_of_a_run_finished_without_run_finished_ends_at_the_marker(
    redis_server: RedisServer, prefix: str
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    events = run_events("run-c", deltas=2)[:-1]
    follower = asyncio.create_task(collect(log.follow("run-c")))
    for event in events:
        await log.aappend(event)
    await log.afinish("run-c", "cancelled")
    assert await asyncio.wait_for(follower, 5) == events
    # resuming after the last event ends at once too
    assert await asyncio.wait_for(collect(log.follow("run-c", after_seq=events[-1].seq)), 5) == []
    await log.aclose()


# -- errors -----------------------------------------------------------------------------------------------


def test_out_of_order_seqs_are_refused(redis_server: RedisServer, prefix: str) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    log.append(new_delta("a", "answer", "run-o", 5))
    with pytest.raises(EventLogError, match="seq 5 of run run-o is not above its last appended seq 5"):
        log.append(new_delta("b", "answer", "run-o", 5))
    log.flush()
    other = RedisEventLog(redis_server.url, key_prefix=prefix)
    other.append(new_delta("c", "answer", "run-o", 3))
    with pytest.raises(EventLogError, match=r"event seq 3 is not above the last seq 5 already in"):
        other.flush()
    assert log.events("run-o") == [new_delta("a", "answer", "run-o", 5)]
    other.close()
    log.close()


async def test_a_key_that_is_not_a_pipeline_ex_stream_is_an_error_naming_it(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix)
    key = log.key("run-w")
    client.set(key, "something else")
    with pytest.raises(NotAnEventLog, match=f"{key}.*not a pipeline-ex event log: it holds a string"):
        log.append(new_delta("a", "answer", "run-w", 1))
        log.flush()
    with pytest.raises(NotAnEventLog, match=f"{key}.*not a pipeline-ex event log"):
        log.events("run-w")
    with pytest.raises(NotAnEventLog, match=f"{key}.*not a pipeline-ex event log"):
        await collect(log.follow("run-w"))

    foreign = log.key("run-z")
    client.xadd(foreign, {"payload": "x"}, id="1-0")
    with pytest.raises(NotAnEventLog, match=f"{foreign}.*has a field payload"):
        log.append(new_delta("a", "answer", "run-z", 2))
        log.flush()
    with pytest.raises(NotAnEventLog, match=f"{foreign}.*entry 1-0 has neither an 'e' nor an 'end' field"):
        log.events("run-z")
    with pytest.raises(NotAnEventLog, match=f"{foreign}.*entry 1-0"):
        await collect(log.follow("run-z"))
    await log.aclose()
    log.close()


async def test_a_runs_flush_error_is_raised_to_that_run_not_to_the_run_whose_append_flushed(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    """One writer holds many runs (as a worker does): a batch that fails belongs to its own run."""
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=10)
    broken, fine = run_events("run-broken"), run_events("run-fine", deltas=2)
    client.set(log.key("run-broken"), "something else")
    await log.aappend(broken[0])
    await log.aappend(fine[0])
    for event in fine[1:4]:
        await log.aappend(event)  # ...fine's Done: flushes both runs, without raising broken's error
    assert log.events("run-fine") == fine[:4]
    with pytest.raises(NotAnEventLog, match=r"run-broken.*it holds a string"):
        await log.aappend(broken[1])  # the broken run's next append learns why its events were not written
    for event in fine[4:]:
        await log.aappend(event)
    assert log.events("run-fine") == fine
    await log.aappend(broken[1])  # the append that raised did not buffer its event
    with pytest.raises(NotAnEventLog, match="run-broken"):
        await log.aflush("run-broken")
    await log.aflush("run-fine")
    await log.aclose()


async def test_a_timed_flush_error_is_raised_to_its_own_run(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=0.02)
    finished = run_events("run-done", deltas=1)
    for event in finished:
        log.append(event)
    going = run_events("run-going")
    await log.aappend(going[0])
    await log.aappend(new_delta("late", "answer", "run-done", 100))  # its run finished: Redis refuses it
    deadline = time.monotonic() + 5
    while not log.events("run-going"):
        assert time.monotonic() < deadline, "the timer did not flush"
        await asyncio.sleep(0.01)  # the max_delay timer flushes both runs
    await log.aappend(going[1])  # the other run's failure is not raised here
    with pytest.raises(EventLogError, match=r"run-done.*has finished"):
        await log.aappend(new_delta("later", "answer", "run-done", 101))
    await log.aflush()
    assert log.events("run-going") == going[:2]
    await log.aclose()
    log.close()


def test_sync_flush_raises_the_given_runs_error_or_without_one_any_runs(
    redis_server: RedisServer, prefix: str, client: redis.Redis
) -> None:
    log = RedisEventLog(redis_server.url, key_prefix=prefix, max_delay=10)
    client.set(log.key("run-b"), "x")
    log.append(new_delta("a", "answer", "run-a", 1))
    log.append(new_delta("b", "answer", "run-b", 1))
    log.flush("run-a")
    assert log.events("run-a") == [new_delta("a", "answer", "run-a", 1)]
    with pytest.raises(NotAnEventLog, match="run-b"):
        log.flush()
    log.flush()  # raised once: nothing is left to raise
    log.append(new_delta("b", "answer", "run-b", 2))
    log.forget("run-b")  # a writer done with a run drops its buffered events
    log.flush()
    assert client.get(log.key("run-b")) == b"x"
    log.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_redis_names_the_url_without_its_password_and_the_fix() -> None:
    port = free_port()
    log = RedisEventLog(f"redis://:s3cret-pass@127.0.0.1:{port}/0")
    expected = rf"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1:{port}/0 .*fix: start a Redis server there"
    with pytest.raises(EventLogUnavailable, match=expected) as raised:
        log.append(run_events("run-u")[0])
        log.flush()
    assert "s3cret" not in str(raised.value)
    with pytest.raises(EventLogUnavailable, match=expected):
        await log.aappend(run_events("run-u", deltas=0)[1])  # a Done: flushed at once
    with pytest.raises(EventLogUnavailable, match=expected):
        log.events("run-u")
    with pytest.raises(EventLogUnavailable, match=expected):
        await collect(log.follow("run-u"))
