"""A `for_each` over 1,000 items on the mock provider: events per second, fanned out and one at a time.

The body is one LLM step streaming CHUNKS chunks. `max_parallel: 100` runs a hundred items at once;
`max_parallel: 1` is the plain sequential run of the same items. Without a delay between chunks the work
is all CPU (what the engine costs per event); with DELAY_MS between chunks, as a network stream has, the
fan-out overlaps the waits.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from pipeline_ex import StreamingRecorder, arun
from pipeline_ex.workflow import parse_workflow

ITEMS = 1_000
CHUNKS = 10
DELAY_MS = 5
REPEATS = 3


def _workflow(max_parallel: int, delay_ms: float) -> object:
    words = ", ".join(f"'w{i} '" for i in range(CHUNKS))
    step = (
        f'{{id: draft, provider: mock, prompt: "item {{{{ item }}}}", mock_response: [{words}], '
        f"options: {{delay_ms: {delay_ms}}}}}"
    )
    return parse_workflow(
        f"""
workflow:
  name: fan_out
  inputs: {{items: {{type: list}}}}
  steps:
    - id: each
      for_each: "{{{{ inputs.items }}}}"
      max_parallel: {max_parallel}
      steps:
        - {step}
""",
        "fan_out.yaml",
    )


async def _once(max_parallel: int, delay_ms: float, items: int) -> dict[str, float]:
    recorder = StreamingRecorder()
    flow = _workflow(max_parallel, delay_ms)
    started = time.perf_counter()
    cpu = time.process_time()
    await arun(flow, {"items": list(range(items))}, on_event=recorder)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    assert len(recorder.dones) == items, len(recorder.dones)
    return {
        "seconds": elapsed,
        "events_per_s": len(recorder.events) / elapsed,
        "cpu_us_per_event": cpu / len(recorder.events) * 1e6,
    }


def measure(items: int = ITEMS, repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """Medians of `repeats` runs of each configuration, interleaved."""
    configs = {
        "max_parallel 100, no delay": (100, 0.0),
        "max_parallel 1 (sequential), no delay": (1, 0.0),
        f"max_parallel 100, {DELAY_MS} ms between chunks": (100, DELAY_MS),
    }
    sequential_delay = (1, DELAY_MS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    slow_items = max(items // 20, 10)  # the sequential run with delays takes items x chunks x delay: a sample
    runs[f"max_parallel 1 (sequential), {DELAY_MS} ms between chunks ({slow_items} items)"] = []
    asyncio.run(_once(10, 0.0, 50))  # warm up (imports, caches)
    for _ in range(repeats):
        for name, (width, delay) in configs.items():
            runs[name].append(asyncio.run(_once(width, delay, items)))
        key = f"max_parallel 1 (sequential), {DELAY_MS} ms between chunks ({slow_items} items)"
        runs[key].append(asyncio.run(_once(*sequential_delay, slow_items)))
    return {
        name: {metric: statistics.median(r[metric] for r in results) for metric in results[0]}
        for name, results in runs.items()
    }


def main() -> None:
    """Print the measurements."""
    for name, values in measure().items():
        print(
            f"{name}: {values['events_per_s']:,.0f} events/s, {values['seconds']:.2f} s, "
            f"{values['cpu_us_per_event']:.1f} µs CPU per event"
        )


if __name__ == "__main__":
    main()
