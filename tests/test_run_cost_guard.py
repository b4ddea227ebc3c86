"""A fast guard against regressions of the fixed cost per run, judged relative to the floor of the same run.

The target is 100 µs of CPU per one-chunk run of `arun(loaded)` over the generator's own `run_async`.
Absolute times mean nothing on a shared machine, so the guard compares the overhead with the floor
measured here, the same way (200 runs at once on one loop): it fails when the overhead exceeds three
times the target, expressed as a fraction of the floor of the reference run (bench/run_cost.py).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time

import pytest
from bench_kit import import_bench

from pipeline_ex.llm.providers import PROVIDERS

run_cost = import_bench("run_cost")

RUNS = 200
REPEATS = 5
REFERENCE_FLOOR_US = 54.0
"""The floor, in µs of CPU per run, of the reference run the target was set against."""
ALLOWED_FRACTION = 3 * run_cost.TARGET_US / REFERENCE_FLOOR_US


@pytest.mark.live  # a generator built in-process, registered as a provider
def test_fixed_cost_per_run_stays_within_three_times_its_target() -> None:
    batches = run_cost.async_batches(RUNS)
    floor = batches[f"{run_cost.FLOOR}, {RUNS} at once"]
    runs = batches[f"arun(loaded), {RUNS} at once"]
    loop = asyncio.new_event_loop()
    samples: dict[str, list[float]] = {"floor": [], "arun": []}
    try:
        loop.run_until_complete(floor()), loop.run_until_complete(runs())  # warm up both
        for _ in range(REPEATS):
            for name, batch in (("floor", floor), ("arun", runs)):
                gc.collect()
                started = time.process_time()
                results = loop.run_until_complete(batch())
                samples[name].append((time.process_time() - started) / RUNS * 1e6)
                assert isinstance(results, list) and len(results) == RUNS
    finally:
        loop.close()
        del PROVIDERS[run_cost.PROVIDER]
    floor_us, arun_us = statistics.median(samples["floor"]), statistics.median(samples["arun"])
    overhead_fraction = (arun_us - floor_us) / floor_us
    print(
        f"floor {floor_us:.1f} µs/run, arun {arun_us:.1f} µs/run, overhead {overhead_fraction:.2f} of the floor "
        f"(allowed {ALLOWED_FRACTION:.2f})"
    )
    assert all(result.text == "hello" for result in results)
    assert overhead_fraction <= ALLOWED_FRACTION
