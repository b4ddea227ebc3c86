"""`python -m bench` runs each benchmark in a process of its own (bench/fresh_process.py)."""

from __future__ import annotations

import os

import pytest
from bench_kit import import_bench


def test_a_benchmark_runs_in_another_process_and_its_figures_come_back() -> None:
    fresh, run_cost = import_bench("fresh_process"), import_bench("run_cost")
    figures = fresh.measure_apart("bench.run_cost", 20, 1, 5)
    assert (
        figures["overhead, at once"] == figures["arun(loaded), 20 at once"] - figures[f"{run_cost.FLOOR}, 20 at once"]
    )
    assert all(isinstance(value, float) and value > 0 for key, value in figures.items() if "overhead" not in key)


def test_the_benchmark_process_is_not_this_one() -> None:
    fresh = import_bench("fresh_process")
    assert fresh.measure_apart("os", function="getpid") != os.getpid()


def test_a_failing_benchmark_names_itself_and_shows_its_error() -> None:
    fresh = import_bench("fresh_process")
    with pytest.raises(fresh.BenchmarkFailed, match=r"(?s)bench\.nowhere\.measure exited with 1:.*No module named"):
        fresh.measure_apart("bench.nowhere")
