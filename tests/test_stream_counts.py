"""bench/stream_counts.py: the counts section 10 stands on, instructions (callgrind) and live objects."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench_kit import import_bench

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None,
    reason="needs Debian's valgrind package (.ci/run installs it)",
)


@needs_valgrind
def test_the_collector_instructions_are_read_from_a_real_callgrind_run(tmp_path: Path) -> None:
    counts = import_bench("stream_counts")
    out = tmp_path / "callgrind.out"
    program = "import gc\nkept = [[i] for i in range(100_000)]\nfor _ in range(5): gc.collect()"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-S", "-c", program],
        check=True,
        capture_output=True,
    )
    total = int(counts._TOTAL.search(out.read_text()).group(1))
    collector = counts.collector_instructions(out)
    if collector is None:
        pytest.skip(f"{sys.executable} has no symbols for gc_collect_main, so callgrind cannot name it")
    # five full collections over 100,000 lists are real work, but not all the interpreter did
    assert 5_000_000 < collector < total


def test_without_valgrind_the_instructions_say_why_instead_of_a_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = import_bench("stream_counts")
    monkeypatch.setattr(counts.shutil, "which", lambda _: None)
    assert counts.instructions(10) == {"unavailable": "valgrind is not installed (Debian: apt-get install valgrind)"}


@pytest.mark.live  # a generator built in-process, registered as a provider
def test_runs_keep_more_objects_alive_the_more_machinery_streams_them() -> None:
    counts, streams = import_bench("stream_counts"), import_bench("many_streams")
    alive = counts.live_objects(runs=50)
    assert set(alive) == set(counts.PATHS)
    floor = alive[streams.FLOOR]
    assert floor > streams.CHUNKS  # the scripted generator holds its chunks while it streams
    # a StreamBridge and its handler are a few objects; a run's runner, engine and step are more; an
    # iterator adds its task and hand-off
    assert floor < alive[streams.LEAST_STEP] < alive[streams.ARUN] < alive[streams.ASTREAM]


def test_the_round_callgrind_counts_runs_from_the_command_line() -> None:
    counts, streams = import_bench("stream_counts"), import_bench("many_streams")
    for path in (None, streams.ARUN):  # the warm-up alone, and a round after it
        done = subprocess.run(
            [sys.executable, "-m", "bench.stream_counts", "--round", json.dumps([path, 3])],
            cwd=counts.ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
