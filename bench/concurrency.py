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


async def _one(flow: object, counter: list[int]) -> None:
    async for _ in astream(flow):  # type: ignore[arg-type]
        counter[0] += 1


async def _run(count: int) -> dict[str, float]:
    words = ", ".join(f"'w{i} '" for i in range(CHUNKS))
    flow = parse_workflow(
        f"- id: s\n  provider: mock\n  prompt: p\n  options: {{delay_ms: {DELAY_MS}}}\n  mock_response: [{words}]\n",
        "concurrency.yaml",
    )
    await asyncio.gather(*(_one(flow, [0]) for _ in range(10)))  # import haystack and warm up before timing
    lags: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - before - TICK) * 1000)

    gc.collect()
    rss_before = _rss_kb()
    peak = [rss_before]

    async def sample_rss() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb())
            await asyncio.sleep(0.05)

    counter = [0]
    watchers = [asyncio.ensure_future(monitor()), asyncio.ensure_future(sample_rss())]
    started = time.perf_counter()
    await asyncio.gather(*(_one(flow, counter) for _ in range(count)))
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*watchers)
    lags.sort()
    return {
        "runs": count,
        "seconds": elapsed,
        "events_per_s": counter[0] / elapsed,
        "events": counter[0],
        "lag_p50_ms": statistics.median(lags),
        "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "rss_per_run_kb": (peak[0] - rss_before) / count,
    }


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
