"""Scripted mock replies for tests: `llm_mock.reply(...)` picks a reply by matching the prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

MockFinishReason = Literal["stop", "length", "content_filter", "tool_calls"] | None


@dataclass(frozen=True)
class ScriptedReply:
    """One scripted reply and the prompts it answers."""

    response: str | tuple[str, ...]
    match: str | None = None
    usage: Mapping[str, int] | None = None
    finish_reason: MockFinishReason = "stop"
    error_after: int | None = None
    delay_ms: float = 0

    def provider_options(self) -> dict[str, Any]:
        """The `mock` provider options that produce this reply."""
        return {
            "mock_response": self.response if isinstance(self.response, str) else list(self.response),
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
    """

    replies: list[ScriptedReply] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    def reply(
        self,
        text_or_chunks: str | Sequence[str],
        *,
        match: str | None = None,
        usage: Mapping[str, int] | None = None,
        finish_reason: MockFinishReason = "stop",
        error_after: int | None = None,
        delay_ms: float = 0,
    ) -> ScriptedReply:
        """Script a reply: text (streamed word by word) or the exact chunks to stream.

        :param match: answer only prompts that contain this text.
        :param usage: token usage to report, e.g. `{"prompt_tokens": 3, "completion_tokens": 5}`;
            None reports no usage.
        :param finish_reason: the finish reason; None ends the stream without one (a truncation).
        :param error_after: fail the stream after this many chunks (0 fails before the first).
        :param delay_ms: pause before each chunk.
        """
        response = text_or_chunks if isinstance(text_or_chunks, str) else tuple(text_or_chunks)
        scripted = ScriptedReply(response, match, usage, finish_reason, error_after, delay_ms)
        self.replies.append(scripted)
        return scripted

    def pick(self, prompt: str) -> ScriptedReply | None:
        """The reply for `prompt` (and remember the prompt), or None to let the mock derive one."""
        self.prompts.append(prompt)
        matching = [r for r in self.replies if r.match is not None and r.match in prompt]
        if matching:
            return max(matching, key=lambda r: len(r.match or ""))
        fallback = [r for r in self.replies if r.match is None]
        return fallback[-1] if fallback else None
