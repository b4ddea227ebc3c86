"""`ScriptedChatGenerator`: a haystack chat generator that streams a scripted reply with no network.

haystack ships a `MockChatGenerator`, but it cannot pace chunks, fail part-way through a stream or end a
stream without a finish reason, and those are exactly the faults a streaming framework must be tested
against. This component adds them and otherwise behaves like any haystack chat generator: it has `run`
and `run_async`, takes a `streaming_callback`, and returns `{"replies": [ChatMessage]}`.

(No `from __future__ import annotations` here: haystack reads the type hints of `run` each time a
component is created, and string annotations would be compiled and evaluated every time.)
"""

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from haystack import component
from haystack.dataclasses import ChatMessage, ComponentInfo, StreamingCallbackT, StreamingChunk
from haystack.dataclasses.streaming_chunk import FinishReason as HaystackFinishReason
from haystack.dataclasses.streaming_chunk import select_streaming_callback

_WORDS = re.compile(r"\S+\s*|\s+")
_PROMPT_WORDS_ECHOED = 8


class MockProviderError(ConnectionError):
    """The failure a `ScriptedChatGenerator` raises when told to fail part-way (`error_after`)."""


def split_words(text: str) -> list[str]:
    """Split text into word chunks (each word keeps its trailing space) that join back to the same text."""
    return _WORDS.findall(text)


def derived_reply(prompt: str) -> str:
    """The deterministic reply the mock gives when no response is scripted."""
    words = prompt.split()
    echoed = " ".join(words[:_PROMPT_WORDS_ECHOED]) + (" ..." if len(words) > _PROMPT_WORDS_ECHOED else "")
    return f"Mock reply to: {echoed}" if echoed else "Mock reply."


@component
class ScriptedChatGenerator:
    """Streams a scripted reply word by word (or in the given chunks), deterministically.

    :param response: the reply text, or the exact list of chunks to stream. When omitted, the reply is
        derived from the last user message (see `derived_reply`).
    :param model: the model name reported in the reply metadata.
    :param delay_ms: pause before each chunk, in milliseconds.
    :param error_after: raise `MockProviderError` after this many content chunks (0 fails before any).
    :param usage: "words" (default) reports word counts of prompt and reply as token usage; a mapping
        is reported as given; None reports no usage at all.
    :param finish_reason: the finish reason of the last chunk; None ends the stream without one, as a
        dropped connection does.
    :param yield_to_loop: in `run_async`, give the event loop a turn before each chunk even without a
        delay, as a network stream does; a consumer that stops iterating then stops the run at once,
        instead of after the whole workflow already ran.
    """

    def __init__(
        self,
        response: str | Sequence[str] | None = None,
        *,
        model: str = "mock",
        delay_ms: float = 0,
        error_after: int | None = None,
        usage: Literal["words"] | Mapping[str, int] | None = "words",
        finish_reason: HaystackFinishReason | None = "stop",
        streaming_callback: StreamingCallbackT | None = None,
        yield_to_loop: bool = False,
    ) -> None:
        self.response = response
        self.model = model
        self.delay_ms = delay_ms
        self.error_after = error_after
        self.usage = usage
        self.finish_reason = finish_reason
        self.streaming_callback = streaming_callback
        self.yield_to_loop = yield_to_loop

    def _script(self, messages: list[ChatMessage]) -> tuple[list[str], dict[str, Any]]:
        prompt = next((m.text for m in reversed(messages) if m.text), "") or ""
        if self.response is None:
            chunks = split_words(derived_reply(prompt))
        elif isinstance(self.response, str):
            chunks = split_words(self.response)
        else:
            chunks = [c for c in self.response if c]
        meta: dict[str, Any] = {"model": self.model, "index": 0, "finish_reason": self.finish_reason}
        if self.usage == "words":
            prompt_words = sum(len((m.text or "").split()) for m in messages)
            reply_words = len("".join(chunks).split())
            meta["usage"] = {
                "prompt_tokens": prompt_words,
                "completion_tokens": reply_words,
                "total_tokens": prompt_words + reply_words,
            }
        elif self.usage is not None:
            meta["usage"] = dict(self.usage)
        else:
            meta["usage"] = None
        return chunks, meta

    def _chunk(self, content: str, position: int, info: ComponentInfo) -> StreamingChunk:
        return StreamingChunk(
            content=content, index=0, start=position == 0, component_info=info, meta={"model": self.model}
        )

    def _final_chunk(self, meta: dict[str, Any], info: ComponentInfo) -> StreamingChunk:
        return StreamingChunk(content="", component_info=info, finish_reason=self.finish_reason, meta=meta)

    def _check_fault(self, position: int) -> None:
        if self.error_after is not None and position >= self.error_after:
            raise MockProviderError(f"mock provider failed after {position} chunks (error_after={self.error_after})")

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Stream the scripted reply to `streaming_callback` (if any) and return it."""
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=False)
        chunks, meta = self._script(messages)
        info = ComponentInfo.from_component(self)
        delay = self.delay_ms / 1000
        for position, content in enumerate(chunks):
            self._check_fault(position)
            if delay:
                time.sleep(delay)
            if callback is not None:
                callback(self._chunk(content, position, info))
        self._check_fault(len(chunks))
        if callback is not None:
            callback(self._final_chunk(meta, info))
        return {"replies": [ChatMessage.from_assistant("".join(chunks), meta=meta)]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Async twin of `run`; awaits an async callback and sleeps without blocking the loop."""
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=True)
        chunks, meta = self._script(messages)
        info = ComponentInfo.from_component(self)
        delay = self.delay_ms / 1000
        for position, content in enumerate(chunks):
            self._check_fault(position)
            if delay or self.yield_to_loop:
                await asyncio.sleep(delay)
            if callback is not None:
                result = callback(self._chunk(content, position, info))
                if result is not None:
                    await result
        self._check_fault(len(chunks))
        if callback is not None:
            result = callback(self._final_chunk(meta, info))
            if result is not None:
                await result
        return {"replies": [ChatMessage.from_assistant("".join(chunks), meta=meta)]}
