"""`CassetteChatGenerator`: a haystack chat generator that replays one recorded step run.

It emits the recorded chunks with the same boundaries, finish reason, usage and model, pausing as the
recording did (scaled by the replay speed; 0 replays instantly). A recorded provider failure is raised
again after the recorded deltas.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from haystack import component
from haystack.dataclasses import ChatMessage, ComponentInfo, ReasoningContent, StreamingChunk

from pipeline_ex.events import Done
from pipeline_ex.modes.cassette import RecordedStep, ReplayedProviderError


def _usage_meta(done: Done) -> dict[str, int | None] | None:
    usage = done.response.usage
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _replay_chunks(
    recording: RecordedStep, info: ComponentInfo
) -> tuple[list[tuple[float, StreamingChunk]], ChatMessage, Exception | None]:
    done = recording.done
    chunks: list[tuple[float, StreamingChunk]] = []
    for pause, delta in recording.deltas:
        if delta.kind == "reasoning":
            chunk = StreamingChunk(
                content="", index=0, component_info=info, reasoning=ReasoningContent(reasoning_text=delta.content)
            )
        else:
            chunk = StreamingChunk(content=delta.content, index=0, component_info=info)
        chunks.append((pause, chunk))
    raw_finish = done.response.meta.get("finish_reason_raw")
    meta: dict[str, Any] = {"model": done.response.model, "usage": _usage_meta(done), "finish_reason": raw_finish}
    failure: Exception | None = None
    if done.error is not None and done.error.type != "truncated":
        failure = ReplayedProviderError(f"replayed failure ({done.error.type}): {done.error.message}")
    elif done.error is None:
        chunks.append((0.0, StreamingChunk(content="", component_info=info, finish_reason="stop", meta=meta)))
    text = "".join(d.content for _, d in recording.deltas if d.kind == "text")
    reply = ChatMessage.from_assistant(text, meta={**meta, "finish_reason": raw_finish if done.error is None else None})
    return chunks, reply, failure


@component
class CassetteChatGenerator:
    """Replays one recorded step run as a haystack chat generator."""

    def __init__(self, recording: RecordedStep, speed: float = 1.0) -> None:
        self.recording = recording
        self.speed = speed

    def _scaled(self, pause_ms: float) -> float:
        return 0.0 if self.speed <= 0 else pause_ms / 1000 / self.speed

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Emit the recorded chunks with their recorded pauses."""
        chunks, reply, failure = _replay_chunks(self.recording, ComponentInfo.from_component(self))
        for pause, chunk in chunks:
            if (delay := self._scaled(pause)) > 0:
                time.sleep(delay)
            if streaming_callback is not None:
                streaming_callback(chunk)
        if failure is not None:
            raise failure
        return {"replies": [reply]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        """Async twin of `run`."""
        chunks, reply, failure = _replay_chunks(self.recording, ComponentInfo.from_component(self))
        for pause, chunk in chunks:
            if (delay := self._scaled(pause)) > 0:
                await asyncio.sleep(delay)
            if streaming_callback is not None:
                result = streaming_callback(chunk)
                if result is not None:
                    await result
        if failure is not None:
            raise failure
        return {"replies": [reply]}
