"""Overhead per event with many concurrent short streams over a generator that yields to the loop.

N concurrent runs each stream CHUNKS chunks from `YieldingChatGenerator`, an in-process haystack chat
generator that does `await asyncio.sleep(0)` before each chunk, as a network stream waits for its socket.
For each N, every path runs N streams at once on one event loop and its process CPU time is measured:

- the floor: the generator's own `run_async` with a no-op async callback;
- `arun` with a no-op handler;
- `astream`, consumed by `async for`;
- hayhooks' `async_streaming_generator` over a haystack `Pipeline` holding the same generator (this
  haystack has no `AsyncPipeline`).

Overhead per event = (path - floor) / events, where events are the streamed chunks. Medians of REPEATS
rounds, each round timing every path once.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from haystack import Pipeline, component
from haystack.dataclasses import ChatMessage, StreamingCallbackT, StreamingChunk

from bench.common import register_provider
from pipeline_ex import arun, astream
from pipeline_ex.workflow import parse_workflow
from pipeline_ex.workflow.loader import LoadedWorkflow

CHUNKS = 50
COUNTS = (10, 100, 1_000, 5_000)
REPEATS = 3
PROVIDER = "bench-yielding"
FLOOR = "floor: generator.run_async(noop)"
ARUN = "arun"
ASTREAM = "astream"
HAYHOOKS = "hayhooks async_streaming_generator"
TARGETS_US = {ARUN: 3.0, ASTREAM: 5.0}
PEER_RATIO = 10.0
"""How many times more overhead than ours hayhooks must show (the target)."""


@component
class YieldingChatGenerator:
    """A chat generator that yields to the event loop before each chunk, as one reading a socket does."""

    def __init__(self, chunks: int = CHUNKS) -> None:
        self.words = [f"w{i} " for i in range(chunks)]

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Stream the chunks synchronously (no loop to yield to)."""
        last = len(self.words) - 1
        for index, word in enumerate(self.words):
            if streaming_callback is not None:
                chunk = StreamingChunk(content=word, finish_reason="stop" if index == last else None)
                streaming_callback(chunk)
        return {"replies": [ChatMessage.from_assistant("".join(self.words))]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Stream the chunks, awaiting the loop once before each."""
        last = len(self.words) - 1
        for index, word in enumerate(self.words):
            await asyncio.sleep(0)
            if streaming_callback is not None:
                chunk = StreamingChunk(content=word, finish_reason="stop" if index == last else None)
                await streaming_callback(chunk)  # type: ignore[misc]
        return {"replies": [ChatMessage.from_assistant("".join(self.words))]}


async def _anoop(_: object) -> None:
    return None


def _noop(_: object) -> None:
    return None


def workflow() -> LoadedWorkflow:
    """A one-step workflow on the yielding generator, registered as a provider."""
    register_provider(PROVIDER, YieldingChatGenerator())
    text = f"- id: s\n  provider: {PROVIDER}\n  prompt: p\n  stream_handler: 'null'\n"
    return parse_workflow(text, "many_streams.yaml")


def paths(only: set[str] | None = None) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each path as a coroutine function that streams one run (`only` limits which ones)."""
    generator = YieldingChatGenerator()
    flow = workflow()
    messages = [ChatMessage.from_user("p")]

    async def floor() -> None:
        await generator.run_async(messages, streaming_callback=_anoop)

    async def run_arun() -> None:
        await arun(flow, on_event=_noop)

    async def run_astream() -> None:
        async for _ in astream(flow):
            pass

    result: dict[str, Callable[[], Awaitable[object]]] = {FLOOR: floor, ARUN: run_arun, ASTREAM: run_astream}
    hayhooks = _hayhooks(messages)
    if hayhooks is not None:
        result[HAYHOOKS] = hayhooks
    return {name: fn for name, fn in result.items() if only is None or name in only or name == FLOOR}


def _hayhooks(messages: list[ChatMessage]) -> Callable[[], Awaitable[object]] | None:
    """hayhooks' async streaming path over a Pipeline holding the generator (None without hayhooks)."""
    try:
        from hayhooks import async_streaming_generator  # type: ignore[import-untyped]
    except ImportError:
        return None
    pipe = Pipeline()
    pipe.add_component("llm", YieldingChatGenerator())
    args = {"llm": {"messages": messages}}

    async def run() -> None:
        async for _ in async_streaming_generator(pipe, pipeline_run_args=args):
            pass

    return run


async def _concurrently(run: Callable[[], Awaitable[object]], count: int) -> float:
    """CPU seconds spent running `count` streams of `run` at once."""
    gc.collect()
    started = time.process_time()
    await asyncio.gather(*(run() for _ in range(count)))
    return time.process_time() - started


async def _measure(counts: tuple[int, ...], repeats: int, only: set[str] | None) -> dict[int, dict[str, float]]:
    selected = paths(only)
    for run in selected.values():
        await _concurrently(run, 10)  # warm-up: imports, first-use caches
    results: dict[int, dict[str, float]] = {}
    for count in counts:
        samples: dict[str, list[float]] = {name: [] for name in selected}
        for _ in range(repeats):
            for name, run in selected.items():
                samples[name].append(await _concurrently(run, count))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        events = count * CHUNKS
        floor = medians[FLOOR]
        row = {f"{FLOOR} (µs/event)": floor / events * 1e6}
        row.update({name: (seconds - floor) / events * 1e6 for name, seconds in medians.items() if name != FLOOR})
        results[count] = row
    return results


def measure(
    counts: tuple[int, ...] = COUNTS, repeats: int = REPEATS, only: set[str] | None = None
) -> dict[int, dict[str, float]]:
    """Per N: the floor's CPU µs per event, and each path's overhead µs per event over it."""
    return asyncio.run(_measure(counts, repeats, only))


def main() -> None:
    """Print the overhead per event of each path at each number of concurrent streams."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.many_streams", description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    for count, row in measure(tuple(args.counts), args.repeats).items():
        print(f"{count:>6} streams: " + ", ".join(f"{name} {value:.2f}" for name, value in row.items()))


if __name__ == "__main__":
    main()
