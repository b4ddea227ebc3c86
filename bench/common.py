"""Shared pieces of the benchmarks: timing, the in-process generators, and machine facts."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk

from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator


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


def register_provider(name: str, generator: Any) -> None:
    """Make `generator` available to steps as `provider: name` (the same instance every time)."""

    def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(generator, name, "bench", owned=False)

    PROVIDERS[name] = build


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, timed in rounds (one of each per round) so drift hits all alike."""
    for run in runs.values():
        run()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> dict[str, str]:
    """The facts a benchmark report records about where it ran."""
    versions = {}
    for package in ("pipeline-ex", "haystack-ai", "hayhooks", "pydantic", "openai", "llama-cpp-python", "starlette"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        **{f"{k} version": v for k, v in versions.items()},
    }
