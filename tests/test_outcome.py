"""Each case of the outcome table (`pipeline_ex.llm.outcome.CASES`), driven directly.

The bridge is a real `StreamBridge` with a real `Dispatcher` and a recording handler; chunks are real
haystack `StreamingChunk`s fed through `on_chunk`, replies real `ChatMessage`s, and the errors are those
the SDKs raise (httpx's `RemoteProtocolError` and `ReadTimeout`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from haystack.dataclasses import ChatMessage, StreamingChunk

from pipeline_ex.errors import HandlerError, ProviderError, StepTimeoutError, StreamTruncatedError
from pipeline_ex.events import Done, Event
from pipeline_ex.llm.bridge import StreamAbort, StreamBridge
from pipeline_ex.llm.outcome import CASES, conclude
from pipeline_ex.llm.policy import StepTimeout
from pipeline_ex.streaming.dispatch import BoundHandler, Dispatcher


def make_bridge(handler: Any = None) -> tuple[StreamBridge, list[Event]]:
    """A bridge for step "s" of run "r" on provider "openai", delivering to a recording handler."""
    seen: list[Event] = []

    def record(event: Event) -> None:
        seen.append(event)
        if handler is not None:
            handler(event)

    counter = itertools.count(1)
    bridge = StreamBridge(
        step="s",
        run_id="r",
        next_seq=lambda: next(counter),
        provider="openai",
        model="gpt-test",
        dispatcher=Dispatcher([BoundHandler("recorder", record, False)]),
    )
    return bridge, seen


def stream(bridge: StreamBridge, *texts: str, finish: str | None = None) -> None:
    """Feed text chunks through the bridge, the last one carrying `finish` as the provider's finish reason."""
    for text in texts:
        bridge.on_chunk(StreamingChunk(content=text))
    if finish is not None:
        bridge.on_chunk(StreamingChunk(content="", meta={"finish_reason": finish}))


def test_the_table_ends_with_a_case_that_matches_everything() -> None:
    applies, _ = CASES[-1]
    bridge, _ = make_bridge()
    assert applies.__name__ == "_anything"
    done, error = conclude(bridge, None, None, SystemExit(3), streamed=True)
    assert done.response.finish_reason == "cancelled" and isinstance(error, SystemExit)


def test_success_maps_the_finish_reason_and_keeps_the_raw_one() -> None:
    bridge, seen = make_bridge()
    stream(bridge, "Hel", "lo", finish="max_tokens")
    reply = ChatMessage.from_assistant(
        "Hello", meta={"model": "gpt-test-2024", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    )
    done, error = conclude(bridge, reply, None, None, streamed=True)
    assert error is None
    assert done.response.finish_reason == "length"
    assert done.error is None
    assert done.response.text == "Hello" == "".join(e.content for e in seen if e.type == "delta")
    assert done.response.meta == {"finish_reason_raw": "max_tokens"}
    assert done.response.model == "gpt-test-2024"
    assert done.response.usage is not None and done.response.usage.output_tokens == 2
    assert done.streamed is True


def test_success_without_streaming_reads_the_reply_and_counted_usage() -> None:
    bridge, _ = make_bridge()
    bridge.deliver(bridge.make_delta("one call"))
    reply = ChatMessage.from_assistant("one call", meta={"finish_reason": "stop", "model": "/models/x.gguf"})
    counted = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    done, error = conclude(bridge, reply, counted, None, streamed=False, model_from_reply=False)
    assert error is None
    assert done.response.finish_reason == "stop" and done.streamed is False
    assert done.response.text == "one call"
    assert done.response.model == "gpt-test"  # a file path is not reported as the model
    assert done.response.meta == {"usage_source": "counted by pipeline_ex", "finish_reason_raw": "stop"}
    assert done.response.usage is not None and done.response.usage.total_tokens == 6


def test_a_stream_without_a_finish_reason_is_truncated() -> None:
    bridge, _ = make_bridge()
    stream(bridge, "cut ", "off")
    done, error = conclude(bridge, ChatMessage.from_assistant("cut off"), None, None, streamed=True)
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "truncated"
    assert "without a finish reason" in done.error.message
    assert done.response.text == "cut off"
    assert isinstance(error, StreamTruncatedError) and error.done is done


def test_a_failing_handler_becomes_a_handler_error() -> None:
    def explode(event: Event) -> None:
        raise ValueError("no room")

    bridge, _ = make_bridge(explode)
    with pytest.raises(StreamAbort) as stopped:
        stream(bridge, "first")
    done, error = conclude(bridge, None, None, stopped.value, streamed=True)
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "handler"
    assert done.error.exception == "builtins.ValueError"
    assert isinstance(error, HandlerError) and error.handler == "recorder"
    assert isinstance(error.__cause__, ValueError)
    assert done.response.text == "first"  # the delta the handler failed on was delivered to the others


@pytest.mark.parametrize("cancel", [KeyboardInterrupt(), asyncio.CancelledError(), GeneratorExit()])
def test_a_cancellation_is_re_raised_as_it_is(cancel: BaseException) -> None:
    bridge, _ = make_bridge()
    stream(bridge, "part")
    done, error = conclude(bridge, None, None, cancel, streamed=True)
    assert done.response.finish_reason == "cancelled"
    assert done.error is not None and done.error.type == "cancelled"
    assert done.error.message == "the step was cancelled"
    assert done.response.text == "part"
    assert error is cancel


def dropped_mid_body() -> Exception:
    """What openai raises when the server closes the connection mid-body: a wrapper of httpx's error."""
    try:
        try:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        except httpx.RemoteProtocolError as cause:
            raise ConnectionError("Connection error.") from cause
    except ConnectionError as wrapper:
        return wrapper


def test_a_connection_dropped_mid_stream_is_a_truncation() -> None:
    bridge, _ = make_bridge()
    stream(bridge, "half a rep")
    done, error = conclude(bridge, None, None, dropped_mid_body(), streamed=True, retries=2)
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "truncated"
    assert "RemoteProtocolError" in done.error.message
    assert done.response.text == "half a rep"
    assert isinstance(error, StreamTruncatedError)
    assert "not retried: 1 deltas were already delivered" in str(error)


def test_a_connection_dropped_before_the_stream_is_a_provider_error() -> None:
    bridge, _ = make_bridge()
    done, error = conclude(bridge, None, None, dropped_mid_body(), streamed=True)
    assert done.error is not None and done.error.type == "provider"
    assert isinstance(error, ProviderError) and "provider 'openai' failed" in str(error)


def test_the_steps_own_timeout_is_a_step_timeout_error() -> None:
    bridge, _ = make_bridge()
    done, error = conclude(bridge, None, None, StepTimeout("no chunk for 0.5 s"), streamed=True)
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "timeout"
    assert done.error.message == "no chunk for 0.5 s"
    assert isinstance(error, StepTimeoutError) and "timed out" in str(error)
    assert done.response.text == ""


def test_a_clients_timeout_is_a_timeout_from_the_provider() -> None:
    bridge, _ = make_bridge()
    done, error = conclude(bridge, None, None, httpx.ReadTimeout("read timed out"), streamed=True)
    assert done.error is not None and done.error.type == "timeout"
    assert done.error.exception == "httpx.ReadTimeout"
    assert isinstance(error, ProviderError) and not isinstance(error, StepTimeoutError)


def test_a_provider_error_keeps_the_partial_text_and_its_cause() -> None:
    bridge, _ = make_bridge()
    stream(bridge, "so far")
    failure = RuntimeError("status 500: overloaded")
    done, error = conclude(bridge, None, None, failure, streamed=True)
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "provider"
    assert done.error.message == "status 500: overloaded"
    assert done.response.text == "so far"
    assert isinstance(error, ProviderError) and error.__cause__ is failure and error.done is done
    assert "not retried" not in str(error)  # the step has no retries


def test_any_other_base_exception_cancels_the_step() -> None:
    class Shutdown(BaseException):
        pass

    bridge, _ = make_bridge()
    stop = Shutdown()
    done, error = conclude(bridge, None, None, stop, streamed=False)
    assert done.response.finish_reason == "cancelled" and done.streamed is False
    assert done.error is not None and done.error.message == "interrupted by Shutdown"
    assert error is stop


def test_every_done_gets_the_next_sequence_number() -> None:
    bridge, seen = make_bridge()
    stream(bridge, "a", "b", finish="stop")
    done, _ = conclude(bridge, ChatMessage.from_assistant("ab"), None, None, streamed=True)
    assert isinstance(done, Done)
    assert done.seq == max(e.seq for e in seen) + 1


def test_a_stream_stopped_early_keeps_its_chunk_count_and_reports_no_invented_usage() -> None:
    bridge, _ = make_bridge()
    stream(bridge, "one ", "two ", "three")
    done, _ = conclude(bridge, None, None, asyncio.CancelledError(), streamed=True)
    assert done.response.usage is None  # the provider counts tokens at the end of a stream: none came
    assert done.response.meta == {"streamed_chunks": 3}
    failed, _ = conclude(bridge, None, None, RuntimeError("status 500"), streamed=True)
    assert failed.response.usage is None and failed.response.meta == {"streamed_chunks": 3}


@pytest.mark.parametrize("error", [asyncio.CancelledError(), RuntimeError("status 500")])
def test_a_provider_streaming_a_token_per_chunk_reports_them_as_an_estimate(error: BaseException) -> None:
    bridge, _ = make_bridge()
    stream(bridge, "one", " two", " three", " four")
    done, _ = conclude(bridge, None, None, error, streamed=True, chunks_are_tokens=True)
    usage = done.response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (None, 4, None)
    assert done.response.meta == {"streamed_chunks": 4, "usage_source": "estimated: one token per streamed chunk"}


def test_nothing_is_estimated_before_the_first_chunk_or_for_a_reply_that_was_not_streamed() -> None:
    bridge, _ = make_bridge()
    done, _ = conclude(bridge, None, None, asyncio.CancelledError(), streamed=True, chunks_are_tokens=True)
    assert done.response.usage is None and done.response.meta == {}
    bridge.deliver(bridge.make_delta("the whole reply, as one delta"))
    done, _ = conclude(bridge, None, None, asyncio.CancelledError(), streamed=False, chunks_are_tokens=True)
    assert done.response.usage is None and done.response.meta == {}
