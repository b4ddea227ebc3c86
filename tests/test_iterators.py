"""`pipeline_ex.stream()` / `astream()`: the iterator sees what the handlers see, and leaving early cancels the run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pipeline_ex
from pipeline_ex import Delta, Done, PipelineError, ProviderError, StepError, StreamingRecorder
from pipeline_ex.events import EVENT_ADAPTER, Event
from pipeline_ex.modes.session import LiveCallBlocked

pytestmark = pytest.mark.streaming

SLOW_CHUNKS = 60  # scripted chunks of the slow workflow
SLOW_DELAY_MS = 20  # so the whole slow reply takes about 1.2 s
STREAM_THREAD = "pipeline-ex-stream"


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PIPELINE_TEST_MODE", "PIPELINE_OUTPUT_DIR", "PIPELINE_STREAM_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def no_stream_thread_outlives_the_test() -> Any:
    """Wait for any run a test left going, so it cannot disturb the next test."""
    yield
    for thread in stream_threads():
        thread.join(timeout=10)


def write_workflow(
    folder: Path,
    name: str,
    *,
    steps: list[dict[str, Any]],
    inputs: dict[str, Any] | None = None,
    jsonl: Path | None = None,
) -> Path:
    """A workflow on the mock provider; with `jsonl`, every step also streams to that JSONL file."""
    defaults: dict[str, Any] = {"provider": "mock"}
    if jsonl is not None:
        defaults["stream_handler"] = "jsonl"
        defaults["stream_handler_options"] = {"path": str(jsonl)}
    document = {"workflow": {"name": name, "inputs": inputs or {}, "defaults": defaults, "steps": steps}}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(document, indent=2))  # JSON is YAML
    return path


def llm_step(step_id: str, prompt: str, chunks: list[str] | None = None, **options: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "type": "llm", "prompt": prompt}
    if chunks is not None:
        step["mock_response"] = chunks
    if options:
        step["options"] = options
    return step


def slow_workflow(folder: Path, jsonl: Path) -> Path:
    chunks = [f"w{n} " for n in range(SLOW_CHUNKS)]
    return write_workflow(folder, "slow", steps=[llm_step("answer", "go", chunks, delay_ms=SLOW_DELAY_MS)], jsonl=jsonl)


def two_step_workflow(folder: Path, jsonl: Path) -> Path:
    return write_workflow(
        folder,
        "two_steps",
        inputs={"topic": {"default": "tides"}},
        steps=[
            llm_step("draft", "Write about {{ inputs.topic }}.", ["Tides ", "rise ", "and ", "fall."]),
            llm_step("summary", "Summarise: {{ steps.draft.text }}"),
        ],
        jsonl=jsonl,
    )


def failing_workflow(folder: Path, jsonl: Path) -> Path:
    return write_workflow(
        folder,
        "failing",
        steps=[llm_step("answer", "go", ["one ", "two ", "three ", "four"], error_after=2)],
        jsonl=jsonl,
    )


def read_jsonl(path: Path) -> list[Event]:
    return [EVENT_ADAPTER.validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def deltas(events: list[Event]) -> list[Delta]:
    return [e for e in events if isinstance(e, Delta)]


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == STREAM_THREAD and t.is_alive()]


def assert_cancelled_early(events_file: Path, *, read: int) -> Done:
    """The handler file ends with a cancelled Done, after far fewer deltas than were scripted."""
    recorded = read_jsonl(events_file)
    last = recorded[-1]
    assert isinstance(last, Done), f"the handler's last event is {last!r}"
    assert last.response.finish_reason == "cancelled"
    assert last.error is not None and last.error.type == "cancelled"
    produced = len(deltas(recorded))
    assert read <= produced <= read + 5, f"{produced} deltas reached the handler after reading {read}"
    assert produced < SLOW_CHUNKS // 4
    assert last.response.text == "".join(d.content for d in deltas(recorded))
    return last


BREAK_BUG = (
    "library bug: breaking out of `for event in stream(...)` does not cancel the run: the worker thread's "
    "target holds _SyncStream._pump() (a reference to the stream), so __del__/close() never runs while the run "
    "is alive and the run goes on to its end in the background"
)


# ---------------------------------------------------------------------------------------------------------
# Same events, same order, as the handlers
# ---------------------------------------------------------------------------------------------------------


def test_stream_yields_exactly_what_the_yaml_handler_and_on_event_recorder_get(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = two_step_workflow(tmp_path, events_file)
    recorder = StreamingRecorder()
    events = list(pipeline_ex.stream(workflow, {"topic": "owls"}, on_event=recorder))
    assert events == recorder.events == read_jsonl(events_file)
    recorder.assert_complete()
    assert [e.seq for e in recorder.timeline] == list(range(1, len(recorder.timeline) + 1))  # lifecycle too
    assert [(e.type, e.step) for e in events if isinstance(e, Done)] == [("done", "draft"), ("done", "summary")]
    assert "".join(d.content for d in deltas(events) if d.step == "draft") == "Tides rise and fall."
    summary = next(e for e in events if isinstance(e, Done) and e.step == "summary")
    assert summary.response.text.startswith("Mock reply to: Summarise: Tides rise and fall.")
    assert len({e.run_id for e in events}) == 1


async def test_astream_yields_exactly_what_the_handlers_get_and_keeps_the_result(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = two_step_workflow(tmp_path, events_file)
    recorder = StreamingRecorder()
    stream = pipeline_ex.astream(pipeline_ex.load_workflow(workflow), on_event=[recorder])
    events = [event async for event in stream]
    assert events == recorder.events == read_jsonl(events_file)
    recorder.assert_complete()
    assert stream.result is not None
    assert stream.result.steps["draft"].text == "Tides rise and fall."
    assert stream.result.run_id == events[0].run_id


async def test_astream_uses_the_run_id_it_is_given(tmp_path: Path) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    events = [e async for e in pipeline_ex.astream(workflow, run_id="my-run-1")]
    assert {e.run_id for e in events} == {"my-run-1"}


def test_stream_takes_a_loaded_workflow_and_inputs(tmp_path: Path) -> None:
    workflow = write_workflow(
        tmp_path, "echo", inputs={"topic": {}}, steps=[llm_step("answer", "Tell me about {{ inputs.topic }}")]
    )
    events = list(pipeline_ex.stream(pipeline_ex.load_workflow(workflow), {"topic": "owls"}))
    done = events[-1]
    assert isinstance(done, Done) and done.response.text == "Mock reply to: Tell me about owls"
    assert "".join(d.content for d in deltas(events)) == done.response.text


# ---------------------------------------------------------------------------------------------------------
# Leaving early cancels the run
# ---------------------------------------------------------------------------------------------------------


def test_breaking_out_of_stream_cancels_the_run(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    threads_before = threading.active_count()
    started = time.perf_counter()
    seen: list[Event] = []
    for event in pipeline_ex.stream(workflow):
        seen.append(event)
        if len(seen) == 3:
            break
    elapsed = time.perf_counter() - started
    assert len(deltas(seen)) == 3
    last = assert_cancelled_early(events_file, read=3)
    assert elapsed < SLOW_CHUNKS * SLOW_DELAY_MS / 1000 / 2, f"breaking out took {elapsed:.2f} s"
    assert last.duration_ms < SLOW_CHUNKS * SLOW_DELAY_MS / 2
    assert stream_threads() == []
    assert threading.active_count() == threads_before


def test_stream_in_a_with_block_cancels_when_the_block_exits(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    with pipeline_ex.stream(workflow) as events:  # type: ignore[attr-defined]
        for count, _ in enumerate(events, start=1):
            if count == 4:
                break
        # the same object is still referenced here: leaving the `with` block is what cancels
    assert_cancelled_early(events_file, read=4)
    assert stream_threads() == []
    assert next(events, None) is None  # closed: nothing more comes out


def test_stream_in_a_with_block_runs_to_completion_when_consumed(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = two_step_workflow(tmp_path, events_file)
    with pipeline_ex.stream(workflow) as events:  # type: ignore[attr-defined]
        collected = list(events)
    assert collected == read_jsonl(events_file)
    assert [e.response.finish_reason for e in collected if isinstance(e, Done)] == ["stop", "stop"]


def test_close_before_iterating_and_an_exception_in_the_loop(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    unused = pipeline_ex.stream(workflow)
    unused.close()  # type: ignore[attr-defined]
    assert list(unused) == [] and not events_file.exists()

    with pytest.raises(RuntimeError, match="consumer failed"), pipeline_ex.stream(workflow) as events:  # type: ignore[attr-defined]
        for count, _ in enumerate(events, start=1):
            if count == 2:
                raise RuntimeError("consumer failed")
    assert_cancelled_early(events_file, read=2)


def test_no_thread_is_left_behind_after_breaking_out(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    baseline = threading.active_count()
    for round_number in range(10):
        for count, _ in enumerate(pipeline_ex.stream(workflow), start=1):
            if count == 1 + round_number % 3:
                break
        assert stream_threads() == [], f"round {round_number}"
    assert threading.active_count() == baseline, [t.name for t in threading.enumerate()]


def test_no_thread_is_left_behind_after_leaving_a_with_block(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    baseline = threading.active_count()
    for round_number in range(10):
        with pipeline_ex.stream(workflow) as events:  # type: ignore[attr-defined]
            for count, _ in enumerate(events, start=1):
                if count == 1 + round_number % 3:
                    break
        assert stream_threads() == [], f"round {round_number}"
        assert threading.active_count() == baseline, [t.name for t in threading.enumerate()]
    assert_cancelled_early(events_file, read=1 + 9 % 3)


async def test_aclose_cancels_the_run(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    stream = pipeline_ex.astream(workflow)
    seen = []
    async for event in stream:
        seen.append(event)
        if len(seen) == 5:
            break
    started = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - started < 0.5
    assert_cancelled_early(events_file, read=5)
    assert stream.result is None
    with pytest.raises(StopAsyncIteration):  # closed: the iteration is over
        await stream.__anext__()
    await stream.aclose()  # closing twice is harmless


async def test_async_with_block_cancels_on_exit(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    async with pipeline_ex.astream(workflow) as stream:
        async for event in stream:
            if event.seq == 2:
                break
    assert_cancelled_early(events_file, read=2)


async def test_aclose_after_a_complete_run_changes_nothing(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = two_step_workflow(tmp_path, events_file)
    stream = pipeline_ex.astream(workflow)
    events = [e async for e in stream]
    await stream.aclose()
    assert read_jsonl(events_file) == events and stream.result is not None


async def test_tasks_are_not_left_behind_after_aclose(tmp_path: Path) -> None:
    workflow = slow_workflow(tmp_path, tmp_path / "events.jsonl")
    baseline = len(asyncio.all_tasks())
    for _ in range(20):
        stream = pipeline_ex.astream(workflow)
        async for _event in stream:
            break
        await stream.aclose()
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == baseline


# ---------------------------------------------------------------------------------------------------------
# One use only, and failures
# ---------------------------------------------------------------------------------------------------------


def test_consuming_a_stream_twice_raises(tmp_path: Path) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    events = pipeline_ex.stream(workflow)
    assert len(list(events)) > 0
    with pytest.raises(PipelineError, match="already consumed"):
        list(events)
    with pytest.raises(PipelineError, match="already consumed"):
        iter(events)


async def test_consuming_an_async_stream_twice_raises(tmp_path: Path) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    stream = pipeline_ex.astream(workflow)
    assert len([e async for e in stream]) > 0
    with pytest.raises(PipelineError, match="already consumed"):
        async for _ in stream:
            pass


def test_a_failing_run_yields_its_error_done_then_raises(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = failing_workflow(tmp_path, events_file)
    seen: list[Event] = []
    with pytest.raises(ProviderError) as caught:
        for event in pipeline_ex.stream(workflow):
            seen.append(event)
    assert [d.content for d in deltas(seen)] == ["one ", "two "]
    last = seen[-1]
    assert isinstance(last, Done) and last.response.finish_reason == "error"
    assert last.error is not None and last.error.type == "provider"
    assert caught.value.done == last and caught.value.step == "answer"
    assert seen == read_jsonl(events_file)
    assert stream_threads() == []


async def test_a_failing_async_run_yields_its_error_done_then_raises(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = failing_workflow(tmp_path, events_file)
    seen: list[Event] = []
    stream = pipeline_ex.astream(workflow)
    with pytest.raises(StepError) as caught:
        async for event in stream:
            seen.append(event)
    assert isinstance(seen[-1], Done) and seen[-1].response.finish_reason == "error"
    assert caught.value.done == seen[-1] and caught.value.partial_text == "one two "
    assert seen == read_jsonl(events_file)
    assert stream.result is None
    await stream.aclose()


def test_an_invalid_input_fails_on_first_iteration(tmp_path: Path) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    events = pipeline_ex.stream(workflow, {"topik": "owls"})
    with pytest.raises(PipelineError, match="did you mean 'topic'"):
        next(iter(events))


# ---------------------------------------------------------------------------------------------------------
# Library bugs found while writing these tests (see the report)
# ---------------------------------------------------------------------------------------------------------


def test_stream_delivers_to_the_stream_recorder_fixture(tmp_path: Path, stream_recorder: StreamingRecorder) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    events = list(pipeline_ex.stream(workflow))
    assert stream_recorder.events == events


def test_stream_is_subject_to_the_live_call_guard(tmp_path: Path, openai_server: Any) -> None:
    workflow = write_workflow(
        tmp_path,
        "real_provider",
        steps=[{"id": "answer", "provider": "openai", "prompt": "hi", "options": {"api_base_url": openai_server.url}}],
    )
    try:
        with pytest.raises(LiveCallBlocked):
            list(pipeline_ex.stream(workflow))
    finally:
        assert openai_server.requests == [], "the real (loopback) provider was called"


async def test_breaking_out_of_astream_without_aclose_cancels_the_run(tmp_path: Path) -> None:
    import gc

    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    async for event in pipeline_ex.astream(workflow):
        if event.seq == 2:
            break
    gc.collect()

    def handler_got_done() -> bool:
        return events_file.exists() and '"type":"done"' in events_file.read_text()

    deadline = time.monotonic() + SLOW_CHUNKS * SLOW_DELAY_MS / 1000 + 1
    while time.monotonic() < deadline and not handler_got_done():  # noqa: ASYNC110 - polling a file
        await asyncio.sleep(0.02)
    assert_cancelled_early(events_file, read=2)


async def test_astream_accepts_a_tuple_of_handlers_like_arun(tmp_path: Path) -> None:
    workflow = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    first, second = StreamingRecorder(), StreamingRecorder()
    events = [e async for e in pipeline_ex.astream(workflow, on_event=(first, second))]
    assert first.events == second.events == events


async def test_cancel_keeps_iterating_to_the_cancelled_done_and_then_ends(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    workflow = slow_workflow(tmp_path, events_file)
    stream = pipeline_ex.astream(workflow)
    seen: list[Event] = []
    try:
        async for event in stream:
            seen.append(event)
            if len(seen) == 2:
                stream.cancel()
    except asyncio.CancelledError:
        pytest.fail(f"CancelledError leaked into the consumer after {len(seen)} events")
    last = seen[-1]
    assert isinstance(last, Done) and last.response.finish_reason == "cancelled"


def test_mock_mode_keeps_the_options_of_a_mock_provider_step(tmp_path: Path) -> None:
    workflow = failing_workflow(tmp_path, tmp_path / "events.jsonl")
    with pytest.raises(StepError):
        list(pipeline_ex.stream(workflow, mock=True))


MULTI_STEP = Path(__file__).resolve().parent.parent / "workflows" / "multi_step.yaml"


async def test_leaving_astream_early_in_a_mock_run_stops_it_before_later_steps_run_or_write_files(
    tmp_path: Path,
) -> None:
    """The mock streams like a network would, yielding between chunks, so the consumer's break lands at once."""
    recorder = StreamingRecorder()
    seen: list[Event] = []
    events = pipeline_ex.astream(MULTI_STEP, mock=True, on_event=recorder, output_dir=tmp_path)
    async for event in events:
        seen.append(event)
        if len(seen) == 3:
            break
    await events.aclose()
    assert [e.step for e in seen] == ["draft"] * 3
    assert {e.step for e in recorder.events} == {"draft"}, "the summary step ran after the consumer left"
    assert recorder.done is not None and recorder.done.response.finish_reason == "cancelled"
    assert len(recorder.deltas) < 8  # the draft's mock reply has 8 words; it was stopped part-way
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []  # no draft.md, no summary.md


async def test_run_into_hands_every_event_to_the_sink_as_iteration_would(tmp_path: Path) -> None:
    path = two_step_workflow(tmp_path, tmp_path / "events.jsonl")
    iterated = [event async for event in pipeline_ex.astream(path, {"topic": "owls"}, mock=True, lifecycle=True)]
    stream = pipeline_ex.astream(path, {"topic": "owls"}, mock=True, lifecycle=True)
    taken: list[Any] = []
    await stream.run_into(taken.append)
    assert [e.type for e in taken] == [e.type for e in iterated]
    assert stream.result is not None
    with pytest.raises(PipelineError):
        await stream.run_into(taken.append)
