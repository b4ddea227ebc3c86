"""Property tests of the stream invariants over random chunkings, for sync, native async and hybrid runs."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest
from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_ex import Delta, Done, ProviderError, StreamingRecorder, llm
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator

pytestmark = [pytest.mark.streaming, pytest.mark.live]

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    # The monkeypatched provider registry is the same for every example, so sharing it is intended.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

chunk = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet=" \t\n\r\u00a0\u3000", min_size=1, max_size=4),  # whitespace-only chunks
    st.sampled_from(["\n", "\n\n", "\r\n", " ", "é", "日本", "🙂", "\u200b", "e\u0301"]),
)
chunkings = st.lists(chunk, max_size=25)


# -- a sync-only haystack chat generator ----------------------------------------------------------


@component
class SyncOnlyChatGenerator:
    """Streams the given chunks from its sync `run`; it has no `run_async`, so `ainvoke` runs it hybrid."""

    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.run_thread: int | None = None

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        self.run_thread = threading.get_ident()
        if streaming_callback is not None:
            for content in self.chunks:
                streaming_callback(StreamingChunk(content=content))
            streaming_callback(StreamingChunk(content="", finish_reason="stop"))
        text = "".join(self.chunks)
        return {"replies": [ChatMessage.from_assistant(text, meta={"finish_reason": "stop"})]}


@pytest.fixture
def sync_only(monkeypatch):
    """Register the `sync_only` provider (option `chunks`); returns the generators it built, in order."""
    built: list[SyncOnlyChatGenerator] = []

    def builder(model: str | None, options: dict[str, Any]) -> BuiltGenerator:
        generator = SyncOnlyChatGenerator(list(options["chunks"]))
        built.append(generator)
        return BuiltGenerator(generator, "sync_only", "sync-only")

    monkeypatch.setitem(PROVIDERS, "sync_only", builder)
    return built


@pytest.fixture
def mock_hybrid(monkeypatch):
    """Register `mock_hybrid`: the scripted mock generator, forced to run hybrid (so `error_after` works)."""

    def builder(model: str | None, options: dict[str, Any]) -> BuiltGenerator:
        generator = ScriptedChatGenerator(options["chunks"], error_after=options.get("error_after"))
        return BuiltGenerator(generator, "mock_hybrid", "mock", async_mode="hybrid")

    monkeypatch.setitem(PROVIDERS, "mock_hybrid", builder)


def test_sync_only_generator_has_no_run_async():
    generator = SyncOnlyChatGenerator(["x"])
    assert getattr(generator, "run_async", None) is None


# -- the invariants ------------------------------------------------------------------------------


def check_invariants(events, chunks, result) -> None:
    """Exactly one Done, last; seq strictly increasing; no empty delta; deltas are the chunks, in order."""
    dones = [e for e in events if isinstance(e, Done)]
    assert len(dones) == 1
    assert events[-1] is dones[0]
    done = dones[0]
    assert done.error is None
    assert done.response.finish_reason == "stop"
    seqs = [e.seq for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    deltas = events[:-1]
    assert all(isinstance(d, Delta) and d.content and d.kind == "text" for d in deltas)
    assert [d.content for d in deltas] == chunks
    joined = "".join(d.content for d in deltas)
    assert joined == done.response.text == "".join(chunks) == result.text
    assert result.done is done
    assert len({e.run_id for e in events}) == 1


def check_failure(events, chunks, k, error) -> None:
    """A provider failure after k chunks: k deltas, then exactly one Done with the partial text."""
    dones = [e for e in events if isinstance(e, Done)]
    assert len(dones) == 1
    done = dones[0]
    assert events[-1] is done
    assert error.done is done
    assert done.error is not None and done.error.type == "provider"
    assert done.error.exception == "pipeline_ex.modes.mock_generator.MockProviderError"
    assert done.response.finish_reason == "error"
    assert [e.content for e in events[:-1]] == chunks[:k]
    assert done.response.text == error.partial_text == "".join(chunks[:k])
    seqs = [e.seq for e in events]
    assert all(a < b for a, b in itertools.pairwise(seqs))


@PROPERTY_SETTINGS
@given(chunks=chunkings)
def test_invoke_preserves_every_chunking(chunks):
    recorder = StreamingRecorder()
    result = llm.invoke(prompt="p", provider="mock", mock_response=chunks, on_event=recorder)
    check_invariants(recorder.events, chunks, result)
    recorder.assert_complete()


@PROPERTY_SETTINGS
@given(chunks=chunkings, async_handler=st.booleans())
def test_ainvoke_preserves_every_chunking(chunks, async_handler):
    recorder = StreamingRecorder()

    async def handle(event):
        await asyncio.sleep(0)
        recorder.handle_event(event)

    handler = handle if async_handler else recorder
    result = asyncio.run(llm.ainvoke(prompt="p", provider="mock", mock_response=chunks, on_event=handler))
    check_invariants(recorder.events, chunks, result)
    recorder.assert_complete()


@PROPERTY_SETTINGS
@given(chunks=chunkings, async_handler=st.booleans())
def test_hybrid_ainvoke_preserves_every_chunking(sync_only, chunks, async_handler):
    recorder = StreamingRecorder()

    async def handle(event):
        await asyncio.sleep(0)
        recorder.handle_event(event)

    handler = handle if async_handler else recorder
    result = asyncio.run(llm.ainvoke(prompt="p", provider="sync_only", chunks=chunks, on_event=handler))
    check_invariants(recorder.events, chunks, result)
    recorder.assert_complete()
    assert result.response.provider == "sync_only"
    assert result.response.usage is None  # the generator reported none, and none is invented


@st.composite
def chunks_and_failure_point(draw):
    chunks = draw(st.lists(chunk, max_size=15))
    return chunks, draw(st.integers(min_value=0, max_value=len(chunks)))


@PROPERTY_SETTINGS
@given(case=chunks_and_failure_point(), mode=st.sampled_from(["invoke", "ainvoke", "hybrid"]))
def test_provider_failure_keeps_the_partial_text(mock_hybrid, case, mode):
    chunks, k = case
    recorder = StreamingRecorder()
    options = {"prompt": "p", "mock_response": chunks, "error_after": k, "on_event": recorder}
    with pytest.raises(ProviderError) as info:
        if mode == "invoke":
            llm.invoke(provider="mock", **options)
        else:
            if mode == "ainvoke":
                asyncio.run(llm.ainvoke(provider="mock", **options))
            else:  # a provider of its own, whose options are its own: the chunks are not a mock reply
                options["chunks"] = options.pop("mock_response")
                asyncio.run(llm.ainvoke(provider="mock_hybrid", **options))
    check_failure(recorder.events, chunks, k, info.value)
    recorder.assert_complete()


# -- hybrid delivery -----------------------------------------------------------------------------


def test_hybrid_delivers_on_the_event_loop_thread_while_run_executes_elsewhere(sync_only):
    chunks = [f"{i} " for i in range(5000)]
    handler_threads: set[int] = set()
    recorder = StreamingRecorder()

    def handler(event):
        handler_threads.add(threading.get_ident())
        recorder.handle_event(event)

    async def main():
        loop_thread = threading.get_ident()
        result = await llm.ainvoke(prompt="p", provider="sync_only", chunks=chunks, on_event=handler)
        return loop_thread, result

    loop_thread, result = asyncio.run(main())

    (generator,) = sync_only
    assert generator.run_thread is not None
    assert generator.run_thread != loop_thread
    assert handler_threads == {loop_thread}
    check_invariants(recorder.events, chunks, result)
    assert len(recorder.deltas) == 5000
    recorder.assert_complete()


def test_hybrid_with_an_async_handler_also_delivers_on_the_loop_thread(sync_only):
    chunks = [f"{i}," for i in range(2000)]
    handler_threads: set[int] = set()
    recorder = StreamingRecorder()

    async def handler(event):
        handler_threads.add(threading.get_ident())
        recorder.handle_event(event)

    async def main():
        result = await llm.ainvoke(prompt="p", provider="sync_only", chunks=chunks, on_event=handler)
        return threading.get_ident(), result

    loop_thread, result = asyncio.run(main())

    assert sync_only[0].run_thread != loop_thread
    assert handler_threads == {loop_thread}
    check_invariants(recorder.events, chunks, result)
