"""Scripted mock replies for tests: `llm_mock.reply(...)` picks a reply by matching the prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline_ex.llm.providers.mock import MockReply, MockToolCall

MockFinishReason = Literal["stop", "length", "content_filter", "tool_calls"] | None


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted reply and the prompts it answers.

    `tool_calls` holds its rounds of tool calls (empty for a plain reply); `response` None then means "no
    final text": the mock repeats the last round (see `ScriptedChatGenerator`).
    """

    response: str | tuple[str, ...] | None
    match: str | None = None
    usage: Mapping[str, int] | None = None
    finish_reason: MockFinishReason = "stop"
    error_after: int | None = None
    delay_ms: float = 0
    tool_calls: tuple[tuple[MockToolCall, ...], ...] = ()

    def provider_options(self) -> dict[str, Any]:
        """The `mock` provider options that produce this reply (a `MockReply` when it calls tools)."""
        text = self.response if self.response is None or isinstance(self.response, str) else list(self.response)
        response: str | list[str] | MockReply | None = text
        if self.tool_calls:
            response = MockReply(tool_calls=[list(calls) for calls in self.tool_calls], text=text)
        return {
            "mock_response": response,
            "usage": dict(self.usage) if self.usage is not None else None,
            "finish_reason": self.finish_reason,
            "error_after": self.error_after,
            "delay_ms": self.delay_ms,
        }


@dataclass
class MockScript:
    """The replies a test scripted, and the prompts the mock provider was asked.

    A reply with `match` answers prompts containing that text (the longest match wins); a reply without
    `match` answers every other prompt (the latest one given wins). With no reply that fits, the mock
    derives a deterministic reply from the prompt.

    A reply is picked once per step run, from the step's prompt (its user prompt), and then answers every
    round of the step's tool loop: the tool results a later round sends never decide which reply answers.
    """

    replies: list[ScriptedReply] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def reply(
        self,
        text_or_chunks: str | Sequence[str] | None = None,
        *,
        tool_calls: Sequence[Any] | None = None,
        match: str | None = None,
        usage: Mapping[str, int] | None = None,
        finish_reason: MockFinishReason = "stop",
        error_after: int | None = None,
        delay_ms: float = 0,
    ) -> ScriptedReply:
        """Script a reply: text (streamed word by word) or the exact chunks to stream, after tool calls if any.

        :param text_or_chunks: the final reply; None derives it from the prompt, or, with `tool_calls`,
            repeats the last round of calls for every further round (to reach a step's round limit).
        :param tool_calls: one round of tool calls the model makes first (`{"name": ..., "arguments":
            {...}, "id": ...}` mappings or `MockToolCall`s; the id is optional), or a list of such rounds.
        :param match: answer only prompts that contain this text.
        :param usage: token usage to report, e.g. `{"prompt_tokens": 3, "completion_tokens": 5}`;
            None reports no usage.
        :param finish_reason: the finish reason of the text reply; None ends the stream without one (a
            truncation).
        :param error_after: fail each call's stream after this many chunks (0 fails before the first).
        :param delay_ms: pause before each chunk.
        :raises MockScriptError: for tool calls that are not `{name, arguments, id?}` (naming the call),
            or chunks that are not strings.
        """
        from pipeline_ex.modes.mock_generator import MockScriptError, scripted_rounds

        if text_or_chunks is None or isinstance(text_or_chunks, str):
            response: str | tuple[str, ...] | None = text_or_chunks
        else:
            response = tuple(text_or_chunks)
            if not all(isinstance(chunk, str) for chunk in response):
                raise MockScriptError(
                    f"llm_mock.reply: {text_or_chunks!r} is not a reply; give the text, or the list of chunks "
                    "(strings) to stream"
                )
        rounds = tuple(tuple(calls) for calls in scripted_rounds(tool_calls))
        scripted = ScriptedReply(response, match, usage, finish_reason, error_after, delay_ms, rounds)
        self.replies.append(scripted)
        return scripted

    def pick(self, prompt: str) -> ScriptedReply | None:
        """The reply for `prompt` (and remember the prompt), or None to let the mock derive one.

        The step calls this once per step run, with its prompt, before the first round.
        """
        self.prompts.append(prompt)
        matching = [r for r in self.replies if r.match is not None and r.match in prompt]
        if matching:
            return max(matching, key=lambda r: len(r.match or ""))
        fallback = [r for r in self.replies if r.match is None]
        return fallback[-1] if fallback else None
