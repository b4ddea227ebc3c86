"""docs/BENCHMARKS.md is the report of the raw figures beside it (docs/benchmarks.json), from one run."""

from __future__ import annotations

from pathlib import Path

from bench_kit import import_bench

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_published_report_is_what_its_raw_figures_render_to() -> None:
    bench = import_bench("__main__")
    results = bench.load(DOCS / "benchmarks.json")
    assert (DOCS / "BENCHMARKS.md").read_text() == bench.report(results), (
        "docs/BENCHMARKS.md differs from the report of docs/benchmarks.json: "
        "run `python -m bench --from-json docs/benchmarks.json` (or `python -m bench`) and commit both"
    )


def test_a_report_names_every_target_it_measures() -> None:
    bench = import_bench("__main__")
    text = (DOCS / "BENCHMARKS.md").read_text()
    for target, goal in bench.TARGETS.items():
        assert goal in text, f"the target {target!r} ({goal}) is not in docs/BENCHMARKS.md"
