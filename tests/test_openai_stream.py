"""The `openai` provider end to end: `invoke` / `ainvoke` against a real loopback SSE server.

Every test talks HTTP to `openai_sse_server.OpenAISSEServer` through haystack's `OpenAIChatGenerator`
and the OpenAI SDK, and checks the typed event stream pipeline_ex delivers: deltas, exactly one Done,
usage and finish reasons, the errors raised after Done, and that the client hangs up on the server when a
step stops early (handler failure, cancellation).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import openai
import pytest
from openai_sse_server import OpenAISSEServer

import pipeline_ex
from pipeline_ex import (
    Context,
    Delta,
    Done,
    Event,
    HandlerError,
    StepError,
    StreamingRecorder,
    StreamTruncatedError,
    Usage,
)

pytestmark = [pytest.mark.streaming, pytest.mark.live]

Mode = Literal["sync", "async"]

PROMPT = "Say hello to the world."
SERVER_USAGE = Usage(input_tokens=11, output_tokens=4, total_tokens=15)
SLOW_PIECES = tuple(f"tok{i} " for i in range(50))
SLOW_DELAY_S = 0.02
SECRET = "sk-test-SECRETSECRET123"


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> Mode:
    """Run the test through `invoke` (sync) and through `ainvoke` (native async)."""
    value: Mode = request.param
    return value


def call_step(mode: Mode, server: OpenAISSEServer, ctx: Context | None = None, **kwargs: Any) -> pipeline_ex.StepResult:
    """Run one `openai` step against `server`, with `invoke` or (in a fresh event loop) `ainvoke`."""
    params: dict[str, Any] = {
        "prompt": PROMPT,
        "provider": "openai",
        "api_base_url": server.url,
        "max_retries": 0,  # one HTTP request per step, so the server's records line up with steps
        "timeout": 10.0,
    }
    params.update(kwargs)
    if mode == "sync":
        return pipeline_ex.invoke(ctx, **params)
    return asyncio.run(pipeline_ex.ainvoke(ctx, **params))


def assert_seq_strictly_increasing(events: Sequence[Event]) -> None:
    seqs = [event.seq for event in events]
    assert all(a < b for a, b in pairwise(seqs)), f"seq not strictly increasing: {seqs}"


def assert_one_done_last(recorder: StreamingRecorder) -> Done:
    """Exactly one Done was recorded and it is the last event; return it."""
    assert len(recorder.dones) == 1, recorder.events
    done = recorder.events[-1]
    assert isinstance(done, Done)
    return done


# -- success ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_happy_path_streams_deltas_usage_and_finish_reason(
    mode: Mode, openai_server: OpenAISSEServer, framing: Literal["close", "chunked"]
) -> None:
    script = openai_server.script(
        pieces=["Hello", ", ", "wor", "ld", "!"], role_chunk=True, finish_reason="stop", framing=framing
    )
    recorder = StreamingRecorder()

    result = call_step(mode, openai_server, system="Be brief.", on_event=recorder, step="greet")

    recorder.assert_complete()
    done = assert_one_done_last(recorder)
    assert result.done is done
    # the empty role chunk produces no delta; each content chunk produces exactly one
    assert [d.content for d in recorder.deltas] == list(script.pieces)
    assert all(d.kind == "text" and d.step == "greet" for d in recorder.deltas)
    assert "".join(d.content for d in recorder.deltas) == done.response.text == result.text == script.text
    assert_seq_strictly_increasing(recorder.events)
    assert len({event.run_id for event in recorder.events}) == 1

    assert done.error is None
    assert done.streamed is True
    assert done.response.provider == "openai"
    assert done.response.model == script.model  # the model the server reported, not the one requested
    assert done.response.finish_reason == "stop"
    assert done.response.meta["finish_reason_raw"] == "stop"
    assert done.response.usage == SERVER_USAGE
    assert done.ttft_ms is not None
    assert 0 <= done.ttft_ms <= done.duration_ms

    assert len(openai_server.requests) == 1
    request = openai_server.wait_for_response(0)
    assert request.path == "/v1/chat/completions"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": PROMPT},
    ]
    assert request.completed
    assert request.client_closed_at is None


def test_include_usage_false_sends_no_stream_options_and_reports_no_usage(
    mode: Mode, openai_server: OpenAISSEServer
) -> None:
    script = openai_server.script()  # has usage, but sends it only when the request asks for it
    recorder = StreamingRecorder()

    result = call_step(mode, openai_server, on_event=recorder, include_usage=False)

    recorder.assert_complete()
    [request] = openai_server.requests
    assert request.body["stream"] is True
    assert "stream_options" not in request.body
    assert result.text == script.text
    assert result.response.finish_reason == "stop"
    assert result.response.usage is None  # not Usage(0, 0, 0)


def test_server_without_usage_gives_usage_none(mode: Mode, openai_server: OpenAISSEServer) -> None:
    script = openai_server.script(usage=None)
    recorder = StreamingRecorder()

    result = call_step(mode, openai_server, on_event=recorder)

    recorder.assert_complete()
    assert openai_server.requests[0].body["stream_options"] == {"include_usage": True}
    assert result.text == script.text
    assert result.response.finish_reason == "stop"
    assert result.response.usage is None


@pytest.mark.parametrize("raw", ["length", "content_filter", "tool_calls"])
def test_finish_reason_is_mapped(mode: Mode, openai_server: OpenAISSEServer, raw: str) -> None:
    script = openai_server.script(finish_reason=raw)
    recorder = StreamingRecorder()

    result = call_step(mode, openai_server, on_event=recorder)

    recorder.assert_complete()
    assert result.done.error is None
    assert result.text == script.text
    assert result.response.finish_reason == raw
    assert result.response.meta["finish_reason_raw"] == raw
    assert result.response.usage == SERVER_USAGE


@pytest.mark.parametrize("raw", ["eos", "end_turn"])
def test_finish_reason_unknown_to_haystack_is_not_truncation(
    mode: Mode, openai_server: OpenAISSEServer, raw: str
) -> None:
    # haystack's OpenAI converter only knows five finish reasons; the raw value must still count
    openai_server.script(finish_reason=raw)

    result = call_step(mode, openai_server, on_event=StreamingRecorder())

    assert result.done.error is None
    assert result.response.finish_reason == "stop"
    assert result.response.meta["finish_reason_raw"] == raw


def test_non_streaming_emits_one_delta_then_unstreamed_done(mode: Mode, openai_server: OpenAISSEServer) -> None:
    script = openai_server.script()
    recorder = StreamingRecorder()

    result = call_step(mode, openai_server, on_event=recorder, stream=False)

    recorder.assert_complete()
    assert len(recorder.events) == 2
    delta, done = recorder.events
    assert isinstance(delta, Delta)
    assert delta.content == script.text
    assert isinstance(done, Done)
    assert result.done is done
    assert done.streamed is False
    assert done.error is None
    assert done.response.text == script.text
    assert done.response.finish_reason == "stop"
    assert done.response.meta["finish_reason_raw"] == "stop"
    assert done.response.usage == SERVER_USAGE
    assert delta.seq < done.seq

    [request] = openai_server.requests
    assert request.body["stream"] is False
    assert "stream_options" not in request.body  # only valid with stream=true


def test_shared_context_numbers_events_across_steps(mode: Mode, openai_server: OpenAISSEServer) -> None:
    openai_server.script(pieces=["one ", "two"])
    ctx = Context()
    recorder = StreamingRecorder()

    first = call_step(mode, openai_server, ctx, on_event=recorder, step="first")
    openai_server.script(pieces=["three ", "four ", "five"])
    second = call_step(mode, openai_server, ctx, on_event=recorder, step="second")

    recorder.assert_complete()
    assert first.text == "one two"
    assert second.text == "three four five"
    assert [event.step for event in recorder.events] == ["first"] * 3 + ["second"] * 4
    assert {event.run_id for event in recorder.events} == {ctx.run_id}
    assert_seq_strictly_increasing(recorder.events)
    assert first.done.seq < min(event.seq for event in recorder.by_step["second"])
    assert len(openai_server.requests) == 2


# -- the stream breaks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("break_after", [0, 1, 3])
@pytest.mark.parametrize(
    ("framing", "expected_error", "error_type"),
    [
        # the body ends at connection close, so a dropped connection looks like a complete body without
        # a finish chunk: pipeline_ex reports a truncated stream
        pytest.param("close", StreamTruncatedError, "truncated", id="close-framed"),
        # the body is chunked, so the missing terminating chunk is a transport error: the SDK raises
        # openai.APIConnectionError mid-stream, from httpx's RemoteProtocolError, and pipeline_ex reports
        # the cut-off reply as truncated too (the SDK's error stays the cause)
        pytest.param("chunked", StreamTruncatedError, "truncated", id="chunked"),
    ],
)
def test_broken_stream_delivers_error_done_then_raises(
    mode: Mode,
    openai_server: OpenAISSEServer,
    break_after: int,
    framing: Literal["close", "chunked"],
    expected_error: type[StepError],
    error_type: str,
) -> None:
    script = openai_server.script(
        pieces=["alpha ", "beta ", "gamma ", "delta ", "epsilon"], break_after=break_after, framing=framing
    )
    recorder = StreamingRecorder()

    with pytest.raises(StepError) as caught:
        call_step(mode, openai_server, on_event=recorder)

    error = caught.value
    done = assert_one_done_last(recorder)
    recorder.assert_complete()
    assert type(error) is expected_error
    assert error.done is done
    assert done.error is not None
    assert done.error.type == error_type
    assert done.response.finish_reason == "error"
    assert done.response.usage is None
    assert done.response.text == error.partial_text == recorder.text == script.sent_text
    assert len(recorder.deltas) == break_after
    if framing == "chunked":
        assert isinstance(error.__cause__, openai.APIConnectionError)
        assert done.error.exception == "openai.APIConnectionError"
        assert "dropped mid-stream" in done.error.message and "RemoteProtocolError" in done.error.message
    assert len(openai_server.requests) == 1
    request = openai_server.wait_for_response(0)
    assert request.completed  # the server played the script (up to its break) to the end
    assert request.client_closed_at is None
    assert request.content_chunks_sent == break_after


# -- stopping early: the client must hang up -------------------------------------------------------------


class ExplodeOnSecondDelta:
    """A handler object that raises on the second delta and records everything it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.error = RuntimeError("handler exploded on delta #2")

    def handle_event(self, event: Event) -> None:
        self.events.append(event)
        if sum(isinstance(e, Delta) for e in self.events) == 2 and isinstance(event, Delta):
            raise self.error


def test_handler_error_delivers_done_raises_and_hangs_up(mode: Mode, openai_server: OpenAISSEServer) -> None:
    script = openai_server.script(pieces=SLOW_PIECES, delay_s=SLOW_DELAY_S)
    recorder = StreamingRecorder()
    failing = ExplodeOnSecondDelta()

    with pytest.raises(HandlerError) as caught:
        call_step(mode, openai_server, on_event=[recorder, failing])

    error = caught.value
    # the Done reached every handler, the failing one included
    done = assert_one_done_last(recorder)
    assert failing.events[-1] is done
    assert error.done is done
    assert "ExplodeOnSecondDelta" in error.handler
    assert "ExplodeOnSecondDelta" in str(error)
    assert error.__cause__ is failing.error
    assert done.error is not None
    assert done.error.type == "handler"
    assert done.error.exception == "builtins.RuntimeError"
    assert done.response.finish_reason == "error"
    recorder.assert_complete()
    assert recorder.text == done.response.text == "".join(script.pieces[:2])

    closed_at = openai_server.wait_for_client_close(timeout=2.0)
    [request] = openai_server.requests
    assert not request.completed
    assert request.content_chunks_sent < len(script.pieces)
    # the whole script takes >= 1 s to stream; the client hung up long before that
    assert closed_at - request.received_at < len(script.pieces) * SLOW_DELAY_S


def test_handler_error_still_reaches_the_handlers_after_the_failing_one(
    mode: Mode, openai_server: OpenAISSEServer
) -> None:
    script = openai_server.script(pieces=["one ", "two ", "three"])
    failing = ExplodeOnSecondDelta()
    recorder = StreamingRecorder()

    with pytest.raises(HandlerError) as caught:
        call_step(mode, openai_server, on_event=[failing, recorder])

    # the delta the first handler choked on was still delivered to the second, so its text and Done agree
    recorder.assert_complete()
    assert recorder.text == caught.value.partial_text == "".join(script.pieces[:2])
    assert caught.value.done is recorder.done


async def test_cancelling_ainvoke_delivers_cancelled_done_and_hangs_up(openai_server: OpenAISSEServer) -> None:
    script = openai_server.script(pieces=SLOW_PIECES, delay_s=SLOW_DELAY_S)
    recorder = StreamingRecorder()
    three_deltas = asyncio.Event()

    def watch(event: Event) -> None:
        if isinstance(event, Delta) and len(recorder.deltas) >= 3:
            three_deltas.set()

    task = asyncio.create_task(
        pipeline_ex.ainvoke(
            prompt=PROMPT,
            provider="openai",
            api_base_url=openai_server.url,
            max_retries=0,
            on_event=[recorder, watch],
        )
    )
    async with asyncio.timeout(5):
        await three_deltas.wait()
    cancelled_at = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()

    done = assert_one_done_last(recorder)
    recorder.assert_complete()
    assert done.response.finish_reason == "cancelled"
    assert done.error is not None
    assert done.error.type == "cancelled"
    assert len(recorder.deltas) >= 3
    assert done.response.text == "".join(d.content for d in recorder.deltas)
    assert script.text.startswith(done.response.text)

    closed_at = await asyncio.to_thread(openai_server.wait_for_client_close, -1, 2.0)
    elapsed_ms = (closed_at - cancelled_at) * 1000
    print(f"task.cancel() -> server saw the connection closed: {elapsed_ms:.2f} ms")
    assert 0 <= elapsed_ms < 2000
    [request] = openai_server.requests
    assert not request.completed
    assert request.content_chunks_sent < len(script.pieces)


def test_keyboard_interrupt_in_sync_invoke_delivers_cancelled_done_and_hangs_up(
    openai_server: OpenAISSEServer,
) -> None:
    script = openai_server.script(pieces=SLOW_PIECES, delay_s=SLOW_DELAY_S)
    recorder = StreamingRecorder()

    def interrupt_on_third_delta(event: Event) -> None:
        if isinstance(event, Delta) and len(recorder.deltas) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_step("sync", openai_server, on_event=[recorder, interrupt_on_third_delta])

    done = assert_one_done_last(recorder)
    recorder.assert_complete()
    assert done.response.finish_reason == "cancelled"
    assert done.error is not None
    assert done.error.type == "cancelled"
    assert done.response.text == "".join(script.pieces[:3])
    openai_server.wait_for_client_close(timeout=2.0)
    assert not openai_server.requests[0].completed


# -- debug logging ---------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^\S+ \[debug\s*\] (provider chunk|event)\s", re.MULTILINE)


def test_stream_debug_logs_chunks_and_events_without_the_api_key(
    mode: Mode, openai_server: OpenAISSEServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_STREAM_DEBUG", "1")
    monkeypatch.setenv("PIPELINE_EX_TEST_OPENAI_KEY", SECRET)
    ctx = Context()  # reads PIPELINE_STREAM_DEBUG once, when created
    assert ctx.debug
    script = openai_server.script(pieces=["de", "bug"])
    capfd.readouterr()

    result = call_step(mode, openai_server, ctx, api_key_env="PIPELINE_EX_TEST_OPENAI_KEY")

    out, err = capfd.readouterr()
    assert result.text == script.text
    # the key really was used: the server got it
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    kinds = _LOG_LINE.findall(err)
    # every raw chunk: role, 2 content, finish, usage-only
    assert kinds.count("provider chunk") == 1 + len(script.pieces) + 1 + 1
    # every event: 2 deltas and the Done
    assert kinds.count("event") == len(script.pieces) + 1
    assert f"run_id={ctx.run_id}" in err
    assert SECRET not in err
    assert SECRET not in out
    assert "SECRETSECRET" not in err


def test_stream_debug_keeps_token_counts_readable(
    openai_server: OpenAISSEServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_STREAM_DEBUG", "1")
    ctx = Context()
    openai_server.script()
    capfd.readouterr()

    call_step("sync", openai_server, ctx)

    err = capfd.readouterr().err
    # usage counts are not secrets, even though their keys contain "token"
    assert "'prompt_tokens': 11" in err
    assert "'input_tokens': 11" in err
    assert "'total_tokens': 15" in err
