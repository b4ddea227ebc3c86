"""`CassetteChatGenerator`: a haystack chat generator that replays one recorded step run.

It emits the recorded chunks with the same boundaries, finish reason, usage and model, pausing as the
recording did (scaled by the replay speed; 0 replays instantly). A recorded provider failure is raised
again after the recorded deltas.

A step with tools calls it once per round of its tool loop (and once per repair of a structured reply).
Each call replays the next recorded round: its text, reasoning and tool-call chunks, then, for a round
that called tools, a final chunk with finish reason "tool_calls" and a reply carrying the recorded calls
(ids, names and arguments), which the step runs again. The recorded usage is the step's total, so it is
reported once, by the first round: the step adds up what its rounds report, also when it stops early.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from haystack import component
from haystack.dataclasses import (
    ChatMessage,
    ComponentInfo,
    ReasoningContent,
    StreamingChunk,
    ToolCallDelta,
)
from haystack.dataclasses import ToolCall as HaystackToolCall
from haystack.dataclasses.streaming_chunk import FinishReason as HaystackFinishReason

from pipeline_ex.events import Delta, Done
from pipeline_ex.modes.cassette import RERECORD, CassetteError, RecordedRound, RecordedStep, ReplayedProviderError

_STEP_FAILURES = frozenset({"tool_rounds", "schema"})
"""Failures the step decides on its own after the model answered; a replay lets the step reach them again."""


def _usage_meta(done: Done) -> dict[str, int | None] | None:
    usage = done.response.usage
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _delta_chunk(delta: Delta, first_of_call: bool, info: ComponentInfo) -> StreamingChunk:
    """The haystack chunk a recorded delta came from, as a provider streams it."""
    if delta.kind == "reasoning":
        return StreamingChunk(
            content="", index=0, component_info=info, reasoning=ReasoningContent(reasoning_text=delta.content)
        )
    if delta.kind == "tool_call":
        # a call's id and name come with its first fragment only, as OpenAI streams them
        fragment = ToolCallDelta(
            index=delta.index,
            id=delta.tool_call_id if first_of_call else None,
            tool_name=delta.tool_name if first_of_call else None,
            arguments=delta.content,
        )
        return StreamingChunk(
            content="", index=delta.index, tool_calls=[fragment], start=first_of_call, component_info=info
        )
    return StreamingChunk(content=delta.content, index=0, component_info=info)


def _round_chunks(round_: RecordedRound, info: ComponentInfo) -> list[tuple[float, StreamingChunk]]:
    chunks: list[tuple[float, StreamingChunk]] = []
    calls_seen: set[int] = set()
    for pause, delta in round_.deltas:
        first_of_call = False
        if delta.kind == "tool_call" and delta.index not in calls_seen:
            first_of_call = True
            calls_seen.add(delta.index)
        chunks.append((pause, _delta_chunk(delta, first_of_call, info)))
    return chunks


def _reply(round_: RecordedRound, meta: dict[str, Any]) -> ChatMessage:
    """The round's reply: its text (None in a round that only called tools), reasoning and tool calls."""
    text = "".join(d.content for _, d in round_.deltas if d.kind == "text")
    reasoning = "".join(d.content for _, d in round_.deltas if d.kind == "reasoning")
    calls = [HaystackToolCall(tool_name=c.name, arguments=dict(c.arguments), id=c.id) for c in round_.tool_calls]
    return ChatMessage.from_assistant(
        text if text or not calls else None, meta=meta, tool_calls=calls or None, reasoning=reasoning or None
    )


def replay_round(
    recording: RecordedStep, number: int, info: ComponentInfo
) -> tuple[list[tuple[float, StreamingChunk]], ChatMessage, Exception | None]:
    """The chunks (each with the pause before it) of recorded round `number`, its reply, and the failure to raise.

    :raises CassetteError: the recording has no such round (the replayed tool loop went another way).
    """
    rounds = recording.rounds
    if number >= len(rounds):
        where = f"cassette {recording.source}" if recording.source else "the cassette"
        raise CassetteError(
            f"{where}: step {recording.done.step!r} asked its model for round {number + 1} of its tool loop, "
            f"but the recording has {len(rounds)} round{'s' if len(rounds) != 1 else ''}; the tools or the "
            f"step's settings changed since it was recorded; {RERECORD}"
        )
    round_ = rounds[number]
    chunks = _round_chunks(round_, info)
    done = recording.done
    model = done.response.model
    usage = _usage_meta(done) if number == 0 else None
    if number < len(rounds) - 1:  # a round that called tools, or a structured reply that was repaired
        ended_as: HaystackFinishReason = "tool_calls" if round_.tool_calls else "stop"
        meta: dict[str, Any] = {"model": model, "usage": usage, "finish_reason": ended_as}
        chunks.append((0.0, StreamingChunk(content="", component_info=info, finish_reason=ended_as, meta=meta)))
        return chunks, _reply(round_, meta), None
    raw_finish = done.response.meta.get("finish_reason_raw")
    if raw_finish is None and round_.tool_calls:
        raw_finish = "tool_calls"
    meta = {"model": model, "usage": usage, "finish_reason": raw_finish}
    error = done.error
    failure: Exception | None = None
    if error is not None and error.type != "truncated" and error.type not in _STEP_FAILURES:
        failure = ReplayedProviderError(f"replayed failure ({error.type}): {error.message}")
    elif error is None or error.type in _STEP_FAILURES:
        finish: HaystackFinishReason = "tool_calls" if round_.tool_calls else "stop"
        chunks.append((0.0, StreamingChunk(content="", component_info=info, finish_reason=finish, meta=meta)))
    ended = error is None or error.type in _STEP_FAILURES
    reply = _reply(round_, {**meta, "finish_reason": raw_finish if ended else None})
    return chunks, reply, failure


@component
class CassetteChatGenerator:
    """Replays one recorded step run as a haystack chat generator, one recorded round per call."""

    def __init__(self, recording: RecordedStep, speed: float = 1.0) -> None:
        self.recording = recording
        self.speed = speed
        self.replied = 0
        """The model calls answered so far: the next call replays the next recorded round.

        Counted here rather than read from the conversation, because a structured reply's repair adds
        a user message as a new question would; one generator serves one step run.
        """

    def _scaled(self, pause_ms: float) -> float:
        return 0.0 if self.speed <= 0 else pause_ms / 1000 / self.speed

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
        tools: Any = None,
    ) -> dict[str, list[ChatMessage]]:
        """Emit the recorded chunks of the round `messages` has reached, with their recorded pauses.

        `tools` is accepted as every chat generator accepts it; which tools a step offers is part of the
        request the cassette was checked against before this generator was built.
        """
        info = ComponentInfo.from_component(self)
        chunks, reply, failure = replay_round(self.recording, self.replied, info)
        for pause, chunk in chunks:
            if (delay := self._scaled(pause)) > 0:
                time.sleep(delay)
            if streaming_callback is not None:
                streaming_callback(chunk)
        if failure is not None:
            raise failure
        self.replied += 1
        return {"replies": [reply]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
        tools: Any = None,
    ) -> dict[str, list[ChatMessage]]:
        """Async twin of `run`."""
        info = ComponentInfo.from_component(self)
        chunks, reply, failure = replay_round(self.recording, self.replied, info)
        for pause, chunk in chunks:
            if (delay := self._scaled(pause)) > 0:
                await asyncio.sleep(delay)
            if streaming_callback is not None:
                result = streaming_callback(chunk)
                if result is not None:
                    await result
        if failure is not None:
            raise failure
        self.replied += 1
        return {"replies": [reply]}
