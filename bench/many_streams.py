"""Overhead per event with many concurrent short streams over a generator that yields to the loop.

N concurrent runs each stream CHUNKS chunks from `ScriptedChatGenerator(yield_to_loop=True)`, an
in-process haystack chat generator that does `await asyncio.sleep(0)` before each chunk, as a network
stream waits for its socket. For each N, every path runs N streams at once on one event loop and its
process CPU time is measured:

- the floor: the generator's own `run_async` with a no-op async callback;
- `arun` with a no-op handler;
- `astream`, consumed by `async for`;
- the least step: the generator's callback is a `StreamBridge` that makes one `Delta` per chunk for one
  no-op handler, then one `Done`, with no runner, engine or step supervisor around it; what any run that
  streams typed events to a handler must do at the least;
- a bare hand-off: the generator in a task of its own, each chunk handed to a consumer task through a
  deque and one future, which is the least any iterator over a running stream costs (one task wake-up
  per event);
- hayhooks' `async_streaming_generator` over a haystack `Pipeline` holding the same generator (this
  haystack has no `AsyncPipeline`).

Overhead per event = (path - floor) / events, where events are the streamed chunks. Each round times
the floor, then every path once; a path's overhead is the median over REPEATS rounds of its time minus the
floor's of the same round, so that a slower or faster stretch of a shared machine moves both alike.
`measure(gc_tuned=True)` runs the same with the collector settings `pipeline-ex serve` uses
(`pipeline_ex.server.gc_tuning`), and restores the defaults after.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from haystack import Pipeline
from haystack.dataclasses import ChatMessage

from bench.common import register_provider
from pipeline_ex import arun, astream
from pipeline_ex.llm.bridge import StreamBridge
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator
from pipeline_ex.server.gc_tuning import restore, tune_for_many_streams
from pipeline_ex.streaming.dispatch import BoundHandler, Dispatcher
from pipeline_ex.workflow import parse_workflow
from pipeline_ex.workflow.loader import LoadedWorkflow

CHUNKS = 50
COUNTS = (100, 1_000, 5_000)
TUNED_COUNTS = (1_000, 5_000)
REPEATS = 5
PROVIDER = "bench-yielding"
FLOOR = "floor: generator.run_async(noop)"
ARUN = "arun"
ASTREAM = "astream"
HANDOFF = "bare task hand-off"
LEAST_STEP = "least step: StreamBridge alone"
HAYHOOKS = "hayhooks async_streaming_generator"
COLLECTOR = "collector during "
"""Prefix of the row entries with the garbage collector's CPU µs per event while a path ran (in its total)."""
TARGETS_US = {ARUN: 3.0, ASTREAM: 5.0}
PEER_RATIO = 10.0
"""How many times more overhead than ours hayhooks must show (the target)."""


def yielding_generator(chunks: int = CHUNKS) -> ScriptedChatGenerator:
    """The generator every path streams: `chunks` words, yielding to the loop before each, no usage."""
    return ScriptedChatGenerator([f"w{i} " for i in range(chunks)], usage=None, yield_to_loop=True)


async def _anoop(_: object) -> None:
    return None


def _noop(_: object) -> None:
    return None


def workflow() -> LoadedWorkflow:
    """A one-step workflow on the yielding generator, registered as a provider."""
    register_provider(PROVIDER, yielding_generator())
    text = f"- id: s\n  provider: {PROVIDER}\n  prompt: p\n  stream_handler: 'null'\n"
    return parse_workflow(text, "many_streams.yaml")


def paths(only: set[str] | None = None) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each path as a coroutine function that streams one run (`only` limits which ones; the floor stays)."""
    generator = yielding_generator()
    flow = workflow()
    messages = [ChatMessage.from_user("p")]

    async def floor() -> None:
        await generator.run_async(messages, streaming_callback=_anoop)

    async def run_arun() -> None:
        await arun(flow, on_event=_noop)

    async def run_astream() -> None:
        async for _ in astream(flow):
            pass

    async def least_step() -> None:
        await _least_step(generator, messages)

    async def handoff() -> None:
        await _bare_handoff(generator, messages)

    result: dict[str, Callable[[], Awaitable[object]]] = {
        FLOOR: floor,
        ARUN: run_arun,
        ASTREAM: run_astream,
        LEAST_STEP: least_step,
        HANDOFF: handoff,
    }
    hayhooks = _hayhooks(messages)
    if hayhooks is not None:
        result[HAYHOOKS] = hayhooks
    return {name: fn for name, fn in result.items() if only is None or name in only or name == FLOOR}


_NOOP_HANDLER = BoundHandler("noop", _noop, is_async=False)


async def _least_step(generator: ScriptedChatGenerator, messages: list[ChatMessage]) -> None:
    """Stream through a `StreamBridge` to one no-op handler and close with a `Done`, and nothing else."""
    seq = itertools.count(1)
    bridge = StreamBridge(
        step="s",
        run_id="r",
        next_seq=seq.__next__,
        provider=PROVIDER,
        model=None,
        dispatcher=Dispatcher([_NOOP_HANDLER]),
    )
    await generator.run_async(messages, streaming_callback=bridge.on_chunk_async)
    bridge.dispatcher.emit(bridge.build_done(finish_reason="stop", usage=None, meta={}))


async def _bare_handoff(generator: ScriptedChatGenerator, messages: list[ChatMessage]) -> None:
    """Stream in a task of its own and hand each chunk to this task: what an iterator costs at the least."""
    ready: deque[Any] = deque()
    waiter: list[asyncio.Future[None] | None] = [None]
    end = object()

    def put(item: Any) -> None:
        ready.append(item)
        future = waiter[0]
        if future is not None and not future.done():
            future.set_result(None)

    async def produce(chunk: Any) -> None:
        put(chunk)

    task = asyncio.get_running_loop().create_task(generator.run_async(messages, streaming_callback=produce))
    task.add_done_callback(lambda _: put(end))
    while True:
        while not ready:
            future = waiter[0] = asyncio.get_running_loop().create_future()
            await future
            waiter[0] = None
        if ready.popleft() is end:
            break
    await task


def _hayhooks(messages: list[ChatMessage]) -> Callable[[], Awaitable[object]] | None:
    """hayhooks' async streaming path over a Pipeline holding the generator (None without hayhooks)."""
    try:
        from hayhooks import async_streaming_generator  # type: ignore[import-untyped]
    except ImportError:
        return None
    pipe = Pipeline()
    pipe.add_component("llm", yielding_generator())
    args = {"llm": {"messages": messages}}

    async def run() -> None:
        async for _ in async_streaming_generator(pipe, pipeline_run_args=args):
            pass

    return run


class _CollectorClock:
    """CPU seconds the garbage collector spent, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started


async def _concurrently(run: Callable[[], Awaitable[object]], count: int) -> tuple[float, float]:
    """CPU seconds spent running `count` streams of `run` at once, and how many of them the collector took."""
    gc.collect()
    clock = _CollectorClock()
    gc.callbacks.append(clock)
    try:
        started = time.process_time()
        await asyncio.gather(*(run() for _ in range(count)))
        return time.process_time() - started, clock.seconds
    finally:
        gc.callbacks.remove(clock)


async def _measure(counts: tuple[int, ...], repeats: int, only: set[str] | None) -> dict[int, dict[str, float]]:
    selected = paths(only)
    for run in selected.values():
        await _concurrently(run, 10)  # warm-up: imports, first-use caches
    results: dict[int, dict[str, float]] = {}
    for count in counts:
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in selected}
        for _ in range(repeats):
            for name, run in selected.items():
                samples[name].append(await _concurrently(run, count))
        events = count * CHUNKS
        floors = [cpu for cpu, _ in samples[FLOOR]]
        row = {FLOOR: statistics.median(floors) / events * 1e6}
        row.update(
            {
                # each round's overhead against the floor of the same round, which ran just before it
                name: statistics.median(cpu - floor for (cpu, _), floor in zip(values, floors, strict=True))
                / events
                * 1e6
                for name, values in samples.items()
                if name != FLOOR
            }
        )
        row.update(
            {
                f"{COLLECTOR}{name}": statistics.median(collector for _, collector in values) / events * 1e6
                for name, values in samples.items()
            }
        )
        results[count] = row
    return results


def measure(
    counts: tuple[int, ...] = COUNTS,
    repeats: int = REPEATS,
    only: set[str] | None = None,
    *,
    gc_tuned: bool = False,
) -> dict[int, dict[str, float]]:
    """Per N: the floor's CPU µs per event (under FLOOR), each path's overhead µs per event over it, and the
    collector's CPU µs per event during each path (under COLLECTOR + its name).

    :param gc_tuned: measure with the collector settings of `pipeline-ex serve`, restored afterwards.
    """
    previous = tune_for_many_streams() if gc_tuned else None
    try:
        return asyncio.run(_measure(counts, repeats, only))
    finally:
        if previous is not None:
            restore(previous)


def main() -> None:
    """Print the overhead per event of each path at each number of concurrent streams."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.many_streams", description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--gc-tuned", action="store_true", help="with pipeline-ex serve's collector settings")
    args = parser.parse_args()
    for count, row in measure(tuple(args.counts), args.repeats, gc_tuned=args.gc_tuned).items():
        print(f"{count:>6} streams:")
        for name, value in row.items():
            print(f"    {name:<50} {value:7.2f} µs/event")


if __name__ == "__main__":
    main()
