"""A fast guard against per-chunk overhead regressions, judged relative to the floor of the same run.

The sync target is 1.5 µs per Delta over a haystack generator's direct callback. Absolute times mean
nothing on a shared machine, so the guard compares the overhead with the floor measured in this run:
it fails when the overhead exceeds three times the target, expressed as a fraction of the floor of the
reference run in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from haystack.dataclasses import ChatMessage

from pipeline_ex import llm
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator

CHUNKS = 20_000
REPEATS = 7
TARGET_US = 1.5
REFERENCE_FLOOR_US = 3.4
"""The floor, in µs per chunk, of the reference run the target was set against (docs/BENCHMARKS.md)."""
ALLOWED_FRACTION = 3 * TARGET_US / REFERENCE_FLOOR_US


@pytest.fixture
def bench_provider() -> Iterator[ScriptedChatGenerator]:
    generator = ScriptedChatGenerator([f"w{i} " for i in range(CHUNKS)], usage=None)

    def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(generator, "bench", "bench", owned=False)

    PROVIDERS["bench-guard"] = build
    yield generator
    del PROVIDERS["bench-guard"]


def _median(run: Callable[[], object]) -> float:
    samples = []
    for _ in range(REPEATS):
        gc.collect()
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@pytest.mark.live  # a generator built in-process, registered as a provider
def test_sync_overhead_stays_within_three_times_its_target(bench_provider: ScriptedChatGenerator) -> None:
    messages = [ChatMessage.from_user("bench")]

    def floor() -> None:
        bench_provider.run(messages, streaming_callback=lambda chunk: None)

    def invoke() -> None:
        llm.invoke(prompt="bench", provider="bench-guard", on_event="null")

    floor(), invoke()  # warm up both
    floor_s, invoke_s = _median(floor), _median(invoke)
    overhead_fraction = (invoke_s - floor_s) / floor_s
    print(
        f"floor {floor_s / CHUNKS * 1e6:.3f} µs/chunk, invoke {invoke_s / CHUNKS * 1e6:.3f} µs/chunk, "
        f"overhead {overhead_fraction:.2f} of the floor (allowed {ALLOWED_FRACTION:.2f})"
    )
    assert overhead_fraction <= ALLOWED_FRACTION
