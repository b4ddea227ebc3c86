"""Per-chunk overhead of each way to stream a haystack chat generator, measured in one process.

Every path streams the same in-process generator, which emits CHUNKS chunks with no delay. The floor is
the generator's own `run(streaming_callback=noop)`. Results are medians of repeated runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from haystack import Pipeline
from haystack.dataclasses import ChatMessage

from bench.common import SyncOnlyChatGenerator, interleaved_medians, register_provider
from pipeline_ex import astream, llm, stream
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator
from pipeline_ex.workflow import parse_workflow

CHUNKS = 20_000
REPEATS = 7
FLOOR = "floor: generator.run(noop)"
TARGETS_US = {"invoke (sync)": 1.5, "ainvoke (native async)": 2.0, "ainvoke (hybrid)": 5.0}


def _noop(_: object) -> None:
    return None


async def _anoop(_: object) -> None:
    return None


def _workflow(provider: str) -> object:
    text = f"- id: bench\n  provider: {provider}\n  prompt: bench\n  stream_handler: 'null'\n"
    return parse_workflow(text, f"{provider}.yaml")


def paths(chunks: int) -> dict[str, Callable[[], object]]:
    """Each path to measure, as a function that streams all chunks once."""
    words = [f"w{i} " for i in range(chunks)]
    native = ScriptedChatGenerator(words, usage=None)
    sync_only = SyncOnlyChatGenerator(words)
    register_provider("bench-native", native)
    register_provider("bench-sync-only", sync_only)
    messages = [ChatMessage.from_user("bench")]
    native_flow = _workflow("bench-native")
    hybrid_flow = _workflow("bench-sync-only")

    def drain_stream() -> None:
        for _ in stream(native_flow):
            pass

    async def drain_astream() -> None:
        async for _ in astream(native_flow):
            pass

    result: dict[str, Callable[[], object]] = {
        FLOOR: lambda: native.run(messages, streaming_callback=_noop),
        "invoke (sync)": lambda: llm.invoke(prompt="bench", provider="bench-native", on_event="null"),
        "stream()": drain_stream,
        "floor: await generator.run_async(noop)": lambda: asyncio.run(native.run_async(messages, _anoop)),
        "ainvoke (native async)": lambda: asyncio.run(
            llm.ainvoke(prompt="bench", provider="bench-native", on_event="null")
        ),
        "astream()": lambda: asyncio.run(drain_astream()),
        "ainvoke (hybrid)": lambda: asyncio.run(
            llm.ainvoke(prompt="bench", provider="bench-sync-only", on_event="null")
        ),
        "astream() (hybrid)": lambda: asyncio.run(_drain(astream(hybrid_flow))),
    }
    result.update(_peers(native, sync_only, messages))
    return result


async def _drain(events: object) -> None:
    async for _ in events:  # type: ignore[attr-defined]
        pass


def _peers(native: object, sync_only: object, messages: list[ChatMessage]) -> dict[str, Callable[[], object]]:
    peers: dict[str, Callable[[], object]] = {}

    def pipeline(generator: object) -> Pipeline:
        pipe = Pipeline()
        pipe.add_component("llm", generator)
        return pipe

    native_pipe = pipeline(ScriptedChatGenerator(native._script(messages)[0], usage=None))  # type: ignore[attr-defined]
    hybrid_pipe = pipeline(SyncOnlyChatGenerator(native._script(messages)[0]))  # type: ignore[attr-defined]
    args = {"llm": {"messages": messages}}

    async def pipeline_stream() -> None:
        async for _ in native_pipe.stream(data=args):
            pass

    peers["haystack Pipeline.stream"] = lambda: asyncio.run(pipeline_stream())
    try:
        from hayhooks import async_streaming_generator, streaming_generator
    except ImportError:
        return peers

    def hayhooks_sync() -> None:
        for _ in streaming_generator(native_pipe, pipeline_run_args=args):
            pass

    async def hayhooks_async(pipe: Pipeline, allow_sync: bool) -> None:
        async for _ in async_streaming_generator(
            pipe, pipeline_run_args=args, allow_sync_streaming_callbacks=allow_sync
        ):
            pass

    peers["hayhooks streaming_generator"] = hayhooks_sync
    peers["hayhooks async_streaming_generator"] = lambda: asyncio.run(hayhooks_async(native_pipe, False))
    peers["hayhooks async_streaming_generator (hybrid)"] = lambda: asyncio.run(hayhooks_async(hybrid_pipe, True))
    return peers


def measure(chunks: int = CHUNKS, repeats: int = REPEATS, only: set[str] | None = None) -> dict[str, float]:
    """µs per chunk for each path (`only` limits which ones)."""
    selected = {name: run for name, run in paths(chunks).items() if only is None or name in only}
    return {name: seconds / chunks * 1e6 for name, seconds in interleaved_medians(selected, repeats).items()}


def main() -> None:
    """Print µs/chunk and overhead over the floor for every path."""
    results = measure()
    floor = results[FLOOR]
    print(f"{'path':<48} {'µs/chunk':>9} {'overhead µs':>12}")
    for name, value in results.items():
        print(f"{name:<48} {value:>9.3f} {value - floor:>12.3f}")


if __name__ == "__main__":
    main()
