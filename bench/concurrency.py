"""Many concurrent `astream` runs on the mock provider: event-loop lag, memory per run, throughput.

Each run streams CHUNKS chunks with DELAY_MS between them. While they run, a monitor task sleeps 10 ms
at a time and records how late it wakes up (the event-loop lag).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

from pipeline_ex import astream
from pipeline_ex.workflow import parse_workflow

CHUNKS = 50
DELAY_MS = 20
TICK = 0.010


def _rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4


async def _one(flow: object, counter: list[int], first_events: list[float] | None = None) -> None:
    first = True
    async for _ in astream(flow):  # type: ignore[arg-type]
        counter[0] += 1
        if first and first_events is not None:
            first_events.append(time.perf_counter())
            first = False


async def _run(count: int) -> dict[str, float]:
    words = ", ".join(f"'w{i} '" for i in range(CHUNKS))
    flow = parse_workflow(
        f"- id: s\n  provider: mock\n  prompt: p\n  options: {{delay_ms: {DELAY_MS}}}\n  mock_response: [{words}]\n",
        "concurrency.yaml",
    )
    await asyncio.gather(*(_one(flow, [0]) for _ in range(10)))  # import haystack and warm up before timing
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            lags.append((now, max(0.0, now - before - TICK) * 1000))

    gc.collect()
    rss_before = _rss_kb()
    peak = [rss_before]

    async def sample_rss() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb())
            await asyncio.sleep(0.05)

    counter = [0]
    first_events: list[float] = []
    watchers = [asyncio.ensure_future(monitor()), asyncio.ensure_future(sample_rss())]
    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(_one(flow, counter, first_events) for _ in range(count)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stop.set()
    await asyncio.gather(*watchers)
    all_started = max(first_events)  # after this every run is streaming: the start-up burst is over
    steady = sorted(lag for at, lag in lags if at > all_started) or [0.0]
    every = sorted(lag for _, lag in lags)
    return {
        "runs": count,
        "seconds": elapsed,
        "events_per_s": counter[0] / elapsed,
        "events": counter[0],
        "lag_p50_ms": statistics.median(every),
        "lag_p99_ms": _p99(every),
        "steady_lag_p99_ms": _p99(steady),
        "cpu_us_per_event": cpu / max(counter[0], 1) * 1e6,
        "rss_per_run_kb": (peak[0] - rss_before) / count,
    }


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def profile(count: int = 1_000, top: int = 12) -> list[tuple[str, float]]:
    """Where the CPU goes while `count` runs stream: (function, share of total time), largest first."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_run(count))
    profiler.disable()
    stats = pstats.Stats(profiler)
    groups: dict[str, float] = {}
    for (file, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        area = _area(file, name)
        if area is not None:
            groups[area] = groups.get(area, 0.0) + row[2]
    total = sum(groups.values())
    ranked = sorted(groups.items(), key=lambda item: item[1], reverse=True)[:top]
    return [(area, seconds / total) for area, seconds in ranked]


def _area(file: str, name: str) -> str | None:
    """Group a profiled function by who owns it (None: the loop waiting idle, or the benchmark's own set-up)."""
    if "poll" in name or "gc.collect" in name:
        return None
    if file == "~" and ("marshal" in name or "exec" in name or "__import__" in name):
        return "imports on first use"
    if "asyncio" in file or (file == "~" and ("_contextvars" in name or "heap" in name or "_asyncio" in name)):
        return "asyncio event loop, tasks, timers, queues"
    if "/haystack/" in file:
        return "haystack (StreamingChunk, ChatMessage, components)"
    if "mock_generator" in file:
        return "mock provider (ScriptedChatGenerator)"
    if "pipeline_ex/llm" in file or "pipeline_ex/streaming" in file or "pipeline_ex/events" in file:
        return "pipeline_ex step, bridge and dispatch"
    if "pipeline_ex/workflow" in file:
        return "pipeline_ex runner and iterator"
    if "bench/" in file:
        return "benchmark consumer and monitor"
    if "pydantic" in file:
        return "pydantic"
    if "importlib" in file or "<frozen" in file:
        return "imports on first use"
    return "other (builtins, dataclasses, typing)"


def measure(counts: tuple[int, ...] = (1_000, 10_000)) -> list[dict[str, float]]:
    """One result per concurrency level."""
    return [asyncio.run(_run(count)) for count in counts]


def main() -> None:
    """Print the lag, memory and throughput at each level."""
    for row in measure():
        print(
            f"{int(row['runs']):>6} runs: {row['seconds']:.2f} s, {row['events_per_s']:,.0f} events/s, "
            f"lag p50 {row['lag_p50_ms']:.1f} ms p99 {row['lag_p99_ms']:.1f} ms, {row['rss_per_run_kb']:.1f} KB/run"
        )


if __name__ == "__main__":
    main()
