"""`pipeline_ex.sse`: the exact SSE frames, parsing them back, keepalive comments, and errors without tracebacks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline_ex
from pipeline_ex import Delta, Done, Response, StepError, Usage
from pipeline_ex.events import EVENT_ADAPTER, ErrorInfo, new_delta
from pipeline_ex.sse import (
    HEADERS,
    KEEPALIVE_FRAME,
    MEDIA_TYPE,
    _frame,
    end_frame,
    error_frame,
    error_payload,
    event_frame,
    event_id,
    gap_frame,
    parse_frames,
    sse_frames,
    text_chunks,
    with_keepalive,
)

pytestmark = pytest.mark.streaming

RUN = "run0123456789abc"


def delta(content: str, seq: int, step: str = "answer", kind: str = "text") -> Delta:
    return Delta(content=content, step=step, run_id=RUN, seq=seq, kind=kind)  # type: ignore[arg-type]


def done(text: str, seq: int, step: str = "answer", *, error: ErrorInfo | None = None) -> Done:
    return Done(
        response=Response(
            text=text,
            model="mock",
            provider="mock",
            finish_reason="error" if error else "stop",
            usage=Usage(input_tokens=2, output_tokens=3, total_tokens=5),
        ),
        step=step,
        run_id=RUN,
        seq=seq,
        error=error,
        duration_ms=12.5,
    )


def step_error() -> StepError:
    info = ErrorInfo(type="provider", message="upstream said no", exception="builtins.ConnectionError")
    return StepError(
        "step 'answer': provider 'mock' failed: upstream said no", step="answer", done=done("x", 2, error=info)
    )


async def aiter_of(items: Iterable[object], *, fail: BaseException | None = None) -> AsyncIterator[object]:
    for item in items:
        yield item
    if fail is not None:
        raise fail


async def collect(frames: AsyncIterator[str]) -> list[str]:
    return [frame async for frame in frames]


# ---------------------------------------------------------------------------------------------------------
# Exact frame format
# ---------------------------------------------------------------------------------------------------------


def test_delta_frame_is_event_id_and_one_json_data_line() -> None:
    event = delta("Hello", 3)
    assert event_id(event) == f"{RUN}:3"
    assert event_frame(event) == f"event: delta\nid: {RUN}:3\ndata: {event.model_dump_json()}\n\n"
    assert json.loads(event_frame(event).split("data: ", 1)[1]) == {
        "type": "delta",
        "content": "Hello",
        "step": "answer",
        "run_id": RUN,
        "seq": 3,
        "index": 0,
        "kind": "text",
    }


_strings = st.one_of(st.text(max_size=12), st.text(st.characters(max_codepoint=127), max_size=12))


@given(
    content=st.one_of(st.text(min_size=1, max_size=20), st.text(st.characters(max_codepoint=127), min_size=1)),
    step=_strings,
    run_id=_strings,
    seq=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    index=st.integers(min_value=0, max_value=5),
    kind=st.sampled_from(["text", "reasoning", "tool_call"]),
    tool=st.one_of(st.none(), st.tuples(st.one_of(st.none(), _strings), st.one_of(st.none(), _strings))),
    fast=st.booleans(),
)
@settings(max_examples=300)
def test_every_delta_frame_carries_exactly_pydantics_json(
    content: str, step: str, run_id: str, seq: int, index: int, kind: str, tool: Any, fast: bool
) -> None:
    """The hand-written JSON of plain ASCII Deltas, and pydantic's for the rest, are byte for byte pydantic's."""
    if fast and tool is None and index == 0:
        event = new_delta(content, step, run_id, seq, kind)  # type: ignore[arg-type]
    else:
        call_id, name = tool if tool is not None else (None, None)
        event = Delta(
            content=content,
            step=step,
            run_id=run_id,
            seq=seq,
            index=index,
            kind=kind,
            tool_call_id=call_id,
            tool_name=name,
        )
    data = [line[len("data: ") :] for line in event_frame(event).split("\n") if line.startswith("data: ")]
    assert data == [event.model_dump_json()]


def test_a_delta_pydantic_cannot_serialise_fails_the_same_way_when_framed() -> None:
    event = new_delta("lone \ud800 surrogate", "answer", "run", 1)
    with pytest.raises(Exception) as direct:
        event.model_dump_json()
    with pytest.raises(type(direct.value)):
        event_frame(event)


def test_done_frame_uses_the_done_event_name() -> None:
    event = done("Hello", 4)
    frame = event_frame(event)
    assert frame == f"event: done\nid: {RUN}:4\ndata: {event.model_dump_json()}\n\n"
    assert frame.count("\n\n") == 1 and frame.endswith("\n\n")


def test_end_and_gap_frames_are_exact() -> None:
    assert end_frame(RUN) == f'event: end\ndata: {{"run_id": "{RUN}"}}\n\n'
    assert end_frame() == 'event: end\ndata: {"run_id": null}\n\n'
    assert gap_frame(4, 9) == 'event: gap\ndata: {"from_seq": 4, "to_seq": 9}\n\n'
    assert KEEPALIVE_FRAME == ": keepalive\n\n"
    assert MEDIA_TYPE == "text/event-stream"
    assert HEADERS["Cache-Control"] == "no-cache"


def test_error_frame_has_type_message_step_and_run_but_no_id() -> None:
    error = step_error()
    frame = error_frame(error)
    assert frame.startswith("event: error\ndata: ") and frame.endswith("\n\n")
    assert "\nid:" not in frame
    assert json.loads(frame.split("data: ", 1)[1]) == {
        "type": "provider",
        "message": "step 'answer': provider 'mock' failed: upstream said no",
        "step": "answer",
        "run_id": RUN,
    }


def test_error_frame_for_an_unexpected_exception_reveals_nothing() -> None:
    try:
        raise RuntimeError("password=hunter2 at /srv/secret/config.py")
    except RuntimeError as error:
        frame = error_frame(error)
    payload = json.loads(parse_frames(frame)[0]["data"])
    assert payload == {"type": "internal", "message": "the run failed; see the server log"}
    for leak in ("hunter2", "/srv/secret", "Traceback", "RuntimeError", 'File "'):
        assert leak not in frame


async def test_error_frame_of_a_real_failing_run_has_no_traceback(tmp_path: Path) -> None:
    workflow = tmp_path / "fail.yaml"
    workflow.write_text(
        "workflow:\n  name: fail\n  steps:\n    - id: answer\n      provider: mock\n      prompt: hi\n"
        "      options: {error_after: 1}\n      mock_response: [one, two]\n"
    )
    with pytest.raises(StepError) as caught:
        await pipeline_ex.arun(workflow)
    assert caught.value.__traceback__ is not None  # a real exception with a real traceback behind it
    frame = error_frame(caught.value)
    assert "Traceback" not in frame and 'File "' not in frame and ".py" not in frame
    payload = json.loads(parse_frames(frame)[0]["data"])
    assert payload["type"] == "provider" and payload["step"] == "answer"
    assert "error_after=1" in payload["message"]
    assert error_payload(caught.value) == payload


def test_multi_line_data_becomes_several_data_lines_and_joins_back() -> None:
    frame = _frame("note", "first\nsecond\r\nthird\rfourth", "r:1")
    assert frame == "event: note\nid: r:1\ndata: first\ndata: second\ndata: third\ndata: fourth\n\n"
    assert parse_frames(frame) == [{"event": "note", "id": "r:1", "data": "first\nsecond\nthird\nfourth"}]
    assert _frame("note", "") == "event: note\ndata: \n\n"
    assert parse_frames(_frame("note", "")) == [{"event": "note", "data": ""}]


def test_newlines_inside_event_text_stay_on_one_data_line() -> None:
    event = delta("line one\nline two\r\n\tend", 1)
    frame = event_frame(event)
    assert frame.count("data:") == 1
    assert EVENT_ADAPTER.validate_json(parse_frames(frame)[0]["data"]) == event


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_in_text_survive_a_round_trip(separator: str) -> None:
    event = delta(f"left{separator}right", 1)
    frame = event_frame(event)
    assert frame.count("data:") == 1
    assert EVENT_ADAPTER.validate_json(parse_frames(frame)[0]["data"]) == event


# ---------------------------------------------------------------------------------------------------------
# parse_frames
# ---------------------------------------------------------------------------------------------------------


def test_parse_frames_round_trips_a_whole_stream() -> None:
    events = [delta("Hel", 1), delta("lo", 2), delta("thinking", 3, kind="reasoning"), done("Hello", 4)]
    text = (
        KEEPALIVE_FRAME
        + "".join(event_frame(e) for e in events[:2])
        + KEEPALIVE_FRAME
        + gap_frame(1, 1)
        + "".join(event_frame(e) for e in events[2:])
        + error_frame(step_error())
        + end_frame(RUN)
    )
    frames = parse_frames(text)
    assert [f["event"] for f in frames] == ["delta", "delta", "gap", "delta", "done", "error", "end"]
    parsed = [EVENT_ADAPTER.validate_json(f["data"]) for f in frames if f["event"] in ("delta", "done")]
    assert parsed == events
    assert [f["id"] for f in frames if "id" in f] == [f"{RUN}:{n}" for n in (1, 2, 3, 4)]
    assert json.loads(frames[2]["data"]) == {"from_seq": 1, "to_seq": 1}
    assert json.loads(frames[-1]["data"]) == {"run_id": RUN}


def test_parse_frames_field_rules() -> None:
    text = ": a comment\nevent:tight\ndata:no space\ndata:  two spaces\nid\n\n\n\n: only a comment\n\n"
    assert parse_frames(text) == [{"event": "tight", "data": "no space\n two spaces", "id": ""}]
    assert parse_frames("") == []
    assert parse_frames(KEEPALIVE_FRAME * 3) == []


@settings(max_examples=200, deadline=None)
@given(
    contents=st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2028\u2029\x85"),
            min_size=1,
            max_size=40,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_text_round_trips_through_frames(contents: list[str]) -> None:
    events = [delta(content, seq) for seq, content in enumerate(contents, start=1)]
    frames = parse_frames("".join(event_frame(e) for e in events) + end_frame(RUN))
    assert [EVENT_ADAPTER.validate_json(f["data"]) for f in frames[:-1]] == events
    assert frames[-1]["event"] == "end"


# ---------------------------------------------------------------------------------------------------------
# sse_frames and text_chunks
# ---------------------------------------------------------------------------------------------------------


async def test_sse_frames_frames_every_event_then_end() -> None:
    events = [delta("a", 1), delta("b", 2), done("ab", 3)]
    frames = await collect(sse_frames(aiter_of(events)))  # type: ignore[arg-type]
    assert frames == [*(event_frame(e) for e in events), end_frame(RUN)]


async def test_sse_frames_without_events_ends_with_the_given_run_id() -> None:
    assert await collect(sse_frames(aiter_of([]), run_id="given")) == [end_frame("given")]  # type: ignore[arg-type]


async def test_sse_frames_turns_a_failure_into_an_error_frame_then_end() -> None:
    error = step_error()
    frames = await collect(sse_frames(aiter_of([delta("a", 1), error.done], fail=error)))  # type: ignore[arg-type]
    assert frames == [event_frame(delta("a", 1)), event_frame(error.done), error_frame(error), end_frame(RUN)]
    assert all("Traceback" not in f for f in frames)


async def test_sse_frames_lets_cancellation_through() -> None:
    async def cancelled() -> AsyncIterator[Delta]:
        yield delta("a", 1)
        raise asyncio.CancelledError

    frames = sse_frames(cancelled())
    assert await frames.__anext__() == event_frame(delta("a", 1))
    with pytest.raises(asyncio.CancelledError):
        await frames.__anext__()


async def test_text_chunks_keeps_only_text_deltas() -> None:
    events = [delta("Hel", 1), delta("hmm", 2, kind="reasoning"), delta("lo", 3), done("Hello", 4)]
    assert await collect(text_chunks(aiter_of(events))) == ["Hel", "lo"]  # type: ignore[arg-type]


async def test_text_chunks_ends_a_failure_with_an_error_line() -> None:
    error = step_error()
    chunks = await collect(text_chunks(aiter_of([delta("x", 1)], fail=error)))  # type: ignore[arg-type]
    assert chunks == ["x", f"\n[error: {error}]\n"]
    internal = await collect(text_chunks(aiter_of([], fail=KeyError("secret"))))  # type: ignore[arg-type]
    assert internal == ["\n[error: the run failed; see the server log]\n"]


# ---------------------------------------------------------------------------------------------------------
# with_keepalive
# ---------------------------------------------------------------------------------------------------------


async def slow_frames(pauses: list[float], closed: list[str] | None = None) -> AsyncIterator[str]:
    try:
        for number, pause in enumerate(pauses):
            await asyncio.sleep(pause)
            yield f"data: frame {number}\n\n"
    finally:
        if closed is not None:
            closed.append("closed")


async def test_keepalive_comments_fill_idle_time_and_frames_keep_their_order() -> None:
    started = time.perf_counter()
    timeline: list[tuple[float, str]] = []
    async for frame in with_keepalive(slow_frames([0.0, 0.32, 0.0]), keepalive=0.05):
        timeline.append((time.perf_counter() - started, frame))
    frames = [f for _, f in timeline]
    assert [f for f in frames if f != KEEPALIVE_FRAME] == [
        "data: frame 0\n\n",
        "data: frame 1\n\n",
        "data: frame 2\n\n",
    ]
    first, second = frames.index("data: frame 0\n\n"), frames.index("data: frame 1\n\n")
    assert first == 0  # no keepalive before a frame that is ready at once
    idle = frames[first + 1 : second]
    assert idle and set(idle) == {KEEPALIVE_FRAME}
    assert 3 <= len(idle) <= 7, f"{len(idle)} keepalives in 0.32 s of silence at 0.05 s"
    assert frames[-1] == "data: frame 2\n\n"
    assert parse_frames("".join(frames)) == [{"data": f"frame {n}"} for n in range(3)]  # keepalives are comments
    keepalive_times = [t for t, f in timeline if f == KEEPALIVE_FRAME]
    assert keepalive_times[0] >= 0.045


async def test_no_keepalive_when_frames_keep_coming() -> None:
    frames = await collect(with_keepalive(slow_frames([0.01] * 10), keepalive=0.2))
    assert KEEPALIVE_FRAME not in frames and len(frames) == 10


async def test_closing_the_keepalive_stream_cancels_the_pending_frame() -> None:
    closed: list[str] = []
    stream = with_keepalive(slow_frames([0.0, 30.0], closed), keepalive=0.02)
    assert await stream.__anext__() == "data: frame 0\n\n"
    assert await stream.__anext__() == KEEPALIVE_FRAME  # the source is now waiting 30 s
    started = time.perf_counter()
    await stream.aclose()
    assert closed == ["closed"]
    assert time.perf_counter() - started < 1.0


async def test_keepalive_passes_errors_of_the_source_through() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "frame\n\n"
        await asyncio.sleep(0.08)
        raise ValueError("source broke")

    stream = with_keepalive(failing(), keepalive=0.03)
    seen = []
    with pytest.raises(ValueError, match="source broke"):
        async for frame in stream:
            seen.append(frame)
    assert seen[0] == "frame\n\n" and KEEPALIVE_FRAME in seen[1:]
