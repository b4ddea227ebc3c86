"""Per-chunk overhead of the LLM step over calling a haystack chat generator directly.

All paths stream the same in-process generator (20,000 chunks, no delay). The floor is the generator's
own `run(streaming_callback=noop)`; each pipeline_ex path delivers every chunk as a `Delta` to a no-op
handler. Results are medians of repeated runs, all measured in one process.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk

from pipeline_ex import llm
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.testing.mock_generator import ScriptedChatGenerator

CHUNKS = 20_000
REPEATS = 7


@component
class SyncOnlyChatGenerator:
    """The scripted generator without `run_async`: what a legacy, sync-only component looks like."""

    def __init__(self, chunks: list[str]) -> None:
        self._inner = ScriptedChatGenerator(chunks, usage=None)

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Callable[[StreamingChunk], None] | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Stream the scripted chunks."""
        result: dict[str, list[ChatMessage]] = self._inner.run(messages, streaming_callback=streaming_callback)
        return result


def _noop(_: object) -> None:
    return None


def _median_us_per_chunk(run: Callable[[], object]) -> float:
    samples = []
    for _ in range(REPEATS):
        gc.collect()
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) / CHUNKS * 1e6)
    return statistics.median(samples)


def measure(chunks: int = CHUNKS) -> dict[str, float]:
    """Return µs/chunk for the floor and each path, keyed by path name."""
    words = [f"w{i} " for i in range(chunks)]
    native = ScriptedChatGenerator(words, usage=None)
    sync_only = SyncOnlyChatGenerator(words)
    messages = [ChatMessage.from_user("bench")]

    def provider(generator: Any, name: str) -> Callable[[str | None, Mapping[str, Any]], BuiltGenerator]:
        return lambda model, options: BuiltGenerator(generator, name, "bench", owned=False)

    PROVIDERS["bench-native"] = provider(native, "bench-native")
    PROVIDERS["bench-sync-only"] = provider(sync_only, "bench-sync-only")
    try:
        results = {
            "floor: generator.run(noop)": _median_us_per_chunk(lambda: native.run(messages, streaming_callback=_noop)),
            "invoke (sync)": _median_us_per_chunk(
                lambda: llm.invoke(prompt="bench", provider="bench-native", on_event="null")
            ),
            "floor: await generator.run_async(noop)": _median_us_per_chunk(
                lambda: asyncio.run(native.run_async(messages, streaming_callback=_anoop))
            ),
            "ainvoke (native async)": _median_us_per_chunk(
                lambda: asyncio.run(llm.ainvoke(prompt="bench", provider="bench-native", on_event="null"))
            ),
            "ainvoke (hybrid, sync-only generator)": _median_us_per_chunk(
                lambda: asyncio.run(llm.ainvoke(prompt="bench", provider="bench-sync-only", on_event="null"))
            ),
        }
    finally:
        del PROVIDERS["bench-native"], PROVIDERS["bench-sync-only"]
    return results


async def _anoop(_: object) -> None:
    return None


def main() -> None:
    """Print the table of µs/chunk and overhead over the sync floor."""
    results = measure()
    floor = results["floor: generator.run(noop)"]
    print(f"{'path':<42} {'µs/chunk':>9} {'overhead µs':>12}")
    for name, value in results.items():
        print(f"{name:<42} {value:>9.3f} {value - floor:>12.3f}")


if __name__ == "__main__":
    main()
