"""`pipeline-ex serve` tunes its process's garbage collector for many streams; library calls never do."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from pipeline_ex import arun
from pipeline_ex.server import gc_tuning, serve
from pipeline_ex.workflow import parse_workflow


@pytest.fixture
def default_collector() -> object:
    previous = gc.get_threshold()
    yield previous
    gc.unfreeze()
    gc.set_threshold(*previous)


def test_tuning_freezes_start_up_objects_and_raises_only_the_young_threshold(default_collector: tuple) -> None:
    before = gc.get_threshold()
    previous = gc_tuning.tune_for_many_streams()
    assert previous == before
    assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, before[1], before[2])
    assert gc.get_freeze_count() > 1000  # the interpreter's and haystack's objects, at the least
    gc_tuning.restore(previous)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_serve_tunes_the_collector_before_uvicorn_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_collector: tuple
) -> None:
    import uvicorn

    (tmp_path / "hello.yaml").write_text("- id: a\n  provider: mock\n  prompt: hi\n")
    seen: dict[str, object] = {}

    def started(app: object, **options: object) -> None:  # where uvicorn would now serve until interrupted
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(uvicorn, "run", started)
    serve(tmp_path, mock=True)
    assert seen["threshold"] == (gc_tuning.GEN0_THRESHOLD, *default_collector[1:])
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 0


def test_running_a_workflow_leaves_the_callers_collector_alone(default_collector: tuple) -> None:
    loaded = parse_workflow("- id: a\n  provider: mock\n  prompt: hi\n  stream_handler: 'null'\n", "gc.yaml")
    asyncio.run(arun(loaded, mock=True))
    assert gc.get_threshold() == default_collector
    assert gc.get_freeze_count() == 0
