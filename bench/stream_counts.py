"""Counts, not times, of many concurrent streams: instructions per event and objects each run keeps alive.

Section 10's CPU times are differences of figures near 10 µs per event, which a shared machine moves by
a few µs from one round to the next. The two counts here do not move:

- **Instructions per event**, counted by valgrind's callgrind. Each path of `bench.many_streams` runs one
  round of COUNT streams in a fresh interpreter under callgrind, after the same warm-up; one more run
  does the warm-up alone, and its count is subtracted from each. PYTHONHASHSEED is fixed, so every run
  hashes alike. The collector's part is the inclusive count of CPython's `gc_collect_main` (read with
  `callgrind_annotate`; absent when the interpreter has no symbols). Instructions leave out the time the
  CPU waits on memory, so a path's count is a lower bound of its CPU time.
- **Objects each run keeps alive while it streams**: the garbage collector's tracked objects, counted
  halfway through LIVE_RUNS runs at once, over the count before they started. These are what the
  collector's full collections walk while the runs stream.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import many_streams

ROOT = Path(__file__).resolve().parent.parent
COUNT = 1_000
LIVE_RUNS = 200
PATHS = (many_streams.FLOOR, many_streams.LEAST_STEP, many_streams.ARUN, many_streams.ASTREAM)
WARM_UP = "warm-up alone"
_COLLECTOR = re.compile(r"^\s*([\d,]+)\s.*:gc_collect_main\b", re.MULTILINE)
_TOTAL = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


async def _warmed_up_paths() -> dict[str, Any]:
    """The counted paths, each run 10 times first (imports, first-use caches), as every count starts."""
    selected = many_streams.paths(set(PATHS))
    for run in selected.values():
        await asyncio.gather(*(run() for _ in range(10)))
    return selected


async def _round(path: str | None, count: int) -> None:
    """The warm-up every counted run shares, then one round of `count` streams of `path` (none: warm-up only)."""
    selected = await _warmed_up_paths()
    gc.collect()  # in the warm-up's own count too, so that the floor's figure leaves it out
    if path is not None:
        await asyncio.gather(*(selected[path]() for _ in range(count)))


def _callgrind(path: str | None, count: int, scratch: Path) -> tuple[int, int | None]:
    """The instructions a fresh interpreter executes for `_round(path, count)`, and the collector's part."""
    out = scratch / f"callgrind.{PATHS.index(path) if path in PATHS else 'warm-up'}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.stream_counts",
        "--round",
        json.dumps([path, count]),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise RuntimeError(f"callgrind of {path or WARM_UP!r} exited with {done.returncode}:\n{tail}")
    total = _TOTAL.search(out.read_text(errors="replace"))
    if total is None:
        raise RuntimeError(f"{out} has no 'summary:' or 'totals:' line; is it a callgrind output file?")
    return int(total.group(1)), collector_instructions(out)


def collector_instructions(callgrind_file: Path) -> int | None:
    """The instructions inside CPython's `gc_collect_main` in a callgrind output file (None without symbols)."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(callgrind_file)], capture_output=True, text=True, check=True
    ).stdout
    counts = [int(found.replace(",", "")) for found in _COLLECTOR.findall(annotated)]
    return max(counts) if counts else None


def instructions(count: int = COUNT) -> dict[str, Any]:
    """Per path: instructions per event over the warm-up (the floor's own), or over the floor (the others).

    Each entry also has the collector's instructions per event (the floor's own, or the path's over the
    floor's), or None where the interpreter has no symbols. Without valgrind: {"unavailable": why}.
    """
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        return {"unavailable": "valgrind is not installed (Debian: apt-get install valgrind)"}
    events = count * many_streams.CHUNKS
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as scratch, ThreadPoolExecutor(2) as pool:
        jobs = {path: pool.submit(_callgrind, path, count, Path(scratch)) for path in (None, *PATHS)}
        counted = {path: job.result() for path, job in jobs.items()}
    base_total, base_collector = counted[None]
    floor_total, floor_collector = counted[many_streams.FLOOR]
    result: dict[str, Any] = {"streams": count, "events": events}
    for path in PATHS:
        total, collector = counted[path]
        own = path == many_streams.FLOOR
        result[path] = {
            "instructions": (total - (base_total if own else floor_total)) / events,
            "collector": None
            if collector is None or base_collector is None or floor_collector is None
            else (collector - (base_collector if own else floor_collector)) / events,
        }
    return result


async def _live_objects(runs: int) -> dict[str, float]:
    selected = await _warmed_up_paths()
    alive: dict[str, float] = {}
    for name, run in selected.items():
        gc.collect()
        before = len(gc.get_objects())
        streaming = [asyncio.ensure_future(run()) for _ in range(runs)]
        for _ in range(many_streams.CHUNKS // 2):  # each chunk is one loop turn: halfway through the streams
            await asyncio.sleep(0)
        if any(task.done() for task in streaming):
            raise RuntimeError(f"{name} finished a stream before its middle; the count would miss its objects")
        gc.collect()
        alive[name] = (len(gc.get_objects()) - before) / runs
        await asyncio.gather(*streaming)
    return alive


def live_objects(runs: int = LIVE_RUNS) -> dict[str, float]:
    """Per path: the collector's tracked objects each run keeps alive halfway through its stream."""
    return asyncio.run(_live_objects(runs))


def measure(count: int = COUNT, runs: int = LIVE_RUNS) -> dict[str, Any]:
    """Both counts: {"instructions": `instructions(count)`, "live objects": `live_objects(runs)`}."""
    return {"instructions": instructions(count), "live objects": live_objects(runs)}


def main() -> None:
    """Print both counts, or (with --round) run one counted round: what each callgrind run executes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.stream_counts", description=__doc__)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--round", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round is not None:
        path, count = json.loads(args.round)
        asyncio.run(_round(path, count))
        return
    print(json.dumps(measure(args.count), indent=1))


if __name__ == "__main__":
    main()
