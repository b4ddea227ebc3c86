"""The fixed cost of one run: a one-chunk workflow through `arun(loaded)`, minus the generator's own call.

A server runs many short streams, so what a run costs before and after its chunks matters as much as
the per-chunk cost. The workflow is loaded once (`parse_workflow`) and run many times on one running
loop: all at once (`asyncio.gather`) and one after another. The floor is the same in-process generator's
own `run_async` with a no-op callback, measured in the same process and the same way, so what is left
is the cost of pipeline_ex: the run's context, its step, the step's handlers, bridge and Done.

Also measured: a whole `run()` call (which makes an event loop of its own per call), beside
`asyncio.run` of an empty coroutine (what a fresh loop costs by itself), and a run on the `mock`
provider (which builds its generator per run). Figures are µs of process CPU time per run (medians).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from haystack.dataclasses import ChatMessage

from bench.common import register_provider
from pipeline_ex import arun, run
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator
from pipeline_ex.workflow import LoadedWorkflow, parse_workflow

RUNS = 200
REPEATS = 9
SYNC_RUNS = 50
TARGET_US = 100.0
PROVIDER = "bench-run-cost"
FLOOR = "floor: generator.run_async(noop)"


def one_chunk_workflow(provider: str = PROVIDER) -> LoadedWorkflow:
    """A workflow of one LLM step on `provider`, streaming to the `null` handler."""
    text = f"- id: answer\n  provider: {provider}\n  prompt: hello\n  stream_handler: 'null'\n"
    return parse_workflow(text, "run_cost.yaml")


def generator() -> ScriptedChatGenerator:
    """The in-process generator: one chunk, no usage, registered as the benchmark's provider."""
    built = ScriptedChatGenerator(["hello"], usage=None)
    register_provider(PROVIDER, built)
    return built


def _cpu_per_run(loop: asyncio.AbstractEventLoop, batch: Callable[[], Awaitable[object]], runs: int) -> float:
    gc.collect()
    started = time.process_time()
    loop.run_until_complete(batch())
    return (time.process_time() - started) / runs * 1e6


def async_batches(runs: int) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each way to run `runs` one-chunk runs on a running loop, as a coroutine function."""
    scripted = generator()
    loaded = one_chunk_workflow()
    mock_loaded = one_chunk_workflow("mock")
    messages = [ChatMessage.from_user("hello")]

    async def noop(_: object) -> None:
        return None

    async def floor_together() -> object:
        return await asyncio.gather(*(scripted.run_async(messages, noop) for _ in range(runs)))

    async def floor_in_turn() -> None:
        for _ in range(runs):
            await scripted.run_async(messages, noop)

    async def together(workflow: LoadedWorkflow) -> object:
        return await asyncio.gather(*(arun(workflow) for _ in range(runs)))

    async def in_turn(workflow: LoadedWorkflow) -> None:
        for _ in range(runs):
            await arun(workflow)

    return {
        f"{FLOOR}, {runs} at once": floor_together,
        f"{FLOOR}, one after another": floor_in_turn,
        f"arun(loaded), {runs} at once": lambda: together(loaded),
        "arun(loaded), one after another": lambda: in_turn(loaded),
        f"arun(loaded) on the mock provider, {runs} at once": lambda: together(mock_loaded),
    }


def measure_async(runs: int = RUNS, repeats: int = REPEATS) -> dict[str, float]:
    """µs of CPU per run of each async path, the median of `repeats` interleaved rounds."""
    batches = async_batches(runs)
    loop = asyncio.new_event_loop()
    try:
        for batch in batches.values():
            loop.run_until_complete(batch())  # warm-up: imports, caches, compiled templates
        samples: dict[str, list[float]] = {name: [] for name in batches}
        for _ in range(repeats):
            for name, batch in batches.items():
                samples[name].append(_cpu_per_run(loop, batch, runs))
    finally:
        loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def measure_sync(runs: int = SYNC_RUNS, repeats: int = REPEATS) -> dict[str, float]:
    """µs of CPU and of wall time per `run()` call, and per `asyncio.run` of an empty coroutine."""
    generator()
    loaded = one_chunk_workflow()

    async def nothing() -> None:
        return None

    calls: dict[str, Callable[[], Any]] = {
        "run(loaded)": lambda: run(loaded),
        "asyncio.run(empty coroutine)": lambda: asyncio.run(nothing()),
    }
    samples: dict[str, list[float]] = {}
    for name, call in calls.items():
        call()
        for _ in range(repeats):
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(runs):
                call()
            samples.setdefault(f"{name} CPU", []).append((time.process_time() - cpu) / runs * 1e6)
            samples.setdefault(f"{name} wall", []).append((time.perf_counter() - wall) / runs * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(runs: int = RUNS, repeats: int = REPEATS, sync_runs: int = SYNC_RUNS) -> dict[str, float]:
    """Every figure of this benchmark (µs per run), plus the overheads over the floor."""
    results = measure_async(runs, repeats)
    results.update(measure_sync(sync_runs, repeats))
    results["overhead, at once"] = results[f"arun(loaded), {runs} at once"] - results[f"{FLOOR}, {runs} at once"]
    results["overhead, one after another"] = (
        results["arun(loaded), one after another"] - results[f"{FLOOR}, one after another"]
    )
    return results


def main() -> None:
    """Print µs of CPU per run for every path and the fixed cost over the floor."""
    results = measure()
    for name, value in results.items():
        print(f"{name:<58} {value:>9.1f} µs")
    print(f"target: fixed cost per run ≤ {TARGET_US:g} µs")


if __name__ == "__main__":
    main()
