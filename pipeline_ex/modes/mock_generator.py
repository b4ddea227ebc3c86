"""`ScriptedChatGenerator`: a haystack chat generator that streams a scripted reply with no network.

haystack ships a `MockChatGenerator`, but it cannot pace chunks, fail part-way through a stream, end a
stream without a finish reason or play a scripted tool loop, and those are exactly the cases a streaming
framework must be tested against. This component adds them and otherwise behaves like any haystack chat
generator: it has `run` and `run_async`, takes a `streaming_callback` and `tools`, and returns
`{"replies": [ChatMessage]}`.

(No `from __future__ import annotations` here: haystack reads the type hints of `run` each time a
component is created, and string annotations would be compiled and evaluated every time.)
"""

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from haystack import component
from haystack.dataclasses import (
    ChatMessage,
    ComponentInfo,
    StreamingCallbackT,
    StreamingChunk,
    ToolCall,
    ToolCallDelta,
)
from haystack.dataclasses.streaming_chunk import FinishReason as HaystackFinishReason
from haystack.dataclasses.streaming_chunk import select_streaming_callback
from pydantic import ValidationError

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.providers.mock import MockReply, MockToolCall
from pipeline_ex.modes.conversation import message_words, tool_round, user_prompt

_WORDS = re.compile(r"\S+\s*|\s+")
_ARGUMENT_PIECES = re.compile(r"\w+|\W+")
_PROMPT_WORDS_ECHOED = 8

ScriptedToolCalls = Sequence[MockToolCall | Mapping[str, Any]] | Sequence[Sequence[MockToolCall | Mapping[str, Any]]]
"""One round of tool calls (`{name, arguments, id?}` mappings or `MockToolCall`s), or a list of rounds."""


class MockProviderError(ConnectionError):
    """The failure a `ScriptedChatGenerator` raises when told to fail part-way (`error_after`)."""


class MockScriptError(ProviderConfigError, ValueError):
    """A scripted reply is not valid: a tool call that is not `{name, arguments, id?}`, or an empty round."""


def split_words(text: str) -> list[str]:
    """Split text into word chunks (each word keeps its trailing space) that join back to the same text."""
    return _WORDS.findall(text)


def argument_fragments(arguments: Mapping[str, Any]) -> list[str]:
    """A tool call's arguments as JSON, cut as a model streams them: words apart from runs of punctuation.

    `{"city": "Paris"}` streams as `{"`, `city`, `": "`, `Paris`, `"}`; the fragments join back to the JSON.
    """
    return _ARGUMENT_PIECES.findall(json.dumps(dict(arguments), ensure_ascii=False))


def derived_reply(prompt: str) -> str:
    """The deterministic reply the mock gives when no response is scripted."""
    words = prompt.split()
    echoed = " ".join(words[:_PROMPT_WORDS_ECHOED]) + (" ..." if len(words) > _PROMPT_WORDS_ECHOED else "")
    return f"Mock reply to: {echoed}" if echoed else "Mock reply."


def _scripted_call(call: object, where: str) -> MockToolCall:
    if isinstance(call, MockToolCall):
        return call
    if not isinstance(call, Mapping):
        raise MockScriptError(
            f"{where} is {call!r}, not a tool call; write a call as {{name: ..., arguments: {{...}}, id: ...}}"
        )
    try:
        return MockToolCall.model_validate(dict(call))
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown key {key!r}")
            else:
                problems.append(f"{key}: {item['msg']}")
        raise MockScriptError(
            f"{where} ({dict(call)!r}) is not a valid tool call: {'; '.join(problems)}; "
            "a call has a name, its arguments (a mapping) and optionally an id"
        ) from None


def scripted_rounds(tool_calls: ScriptedToolCalls | None) -> list[list[MockToolCall]]:
    """The rounds of scripted tool calls, from one round (a list of calls) or a list of rounds, validated.

    :raises MockScriptError: naming the call that is not `{name, arguments, id?}`, or the round that is empty.
    """
    if not tool_calls:
        return []
    if isinstance(tool_calls, str | Mapping | MockToolCall) or not isinstance(tool_calls, Sequence):
        raise MockScriptError(
            f"tool_calls is {tool_calls!r}; give one round as a list of calls ({{name, arguments, id?}}), "
            "or a list of such rounds"
        )
    items: list[object] = list(tool_calls)
    rounds: list[Sequence[object]] = [items]
    if all(isinstance(item, Sequence) and not isinstance(item, str) for item in items):
        rounds = [item for item in items if isinstance(item, Sequence)]
    validated = []
    for number, calls in enumerate(rounds, start=1):
        if not calls:
            raise MockScriptError(
                f"round {number} of the scripted tool_calls is empty; every round calls at least one tool "
                "(the reply after the last round is the text)"
            )
        validated.append(
            [
                _scripted_call(call, f"tool call {position} of round {number}")
                for position, call in enumerate(calls, start=1)
            ]
        )
    return validated


@component
class ScriptedChatGenerator:
    """Streams a scripted reply word by word (or in the given chunks), deterministically, tool calls first.

    A scripted tool loop: each call is answered from where the conversation stands, its tool round
    (the assistant messages with tool calls after the last user message, see `tool_round`). Round k of
    the scripted `tool_calls` is streamed as an OpenAI-style model streams calls: per call, a first
    `ToolCallDelta(index, id, tool_name, arguments=<first fragment>)` then one `ToolCallDelta(index,
    arguments=...)` per further fragment (see `argument_fragments`), and a final chunk with
    `finish_reason="tool_calls"`. The reply carries the round's haystack `ToolCall`s; a call's id is
    `call_<round>_<position>` (the round from 1, the position from 0, as the step names calls) unless
    scripted. Past the last scripted round the model replies with the text when there is one; a script
    with tool calls and no text repeats its last round forever (how a test reaches a step's round limit).

    :param response: the reply text, the exact list of chunks to stream, or a `MockReply` (tool calls,
        then text). When there is no text, the reply is derived from the last user message (see
        `derived_reply`).
    :param tool_calls: the rounds of tool calls, for a text `response` (see `scripted_rounds`).
    :param model: the model name reported in the reply metadata.
    :param delay_ms: pause before each chunk, in milliseconds.
    :param error_after: raise `MockProviderError` after this many content chunks of a call (0 fails before
        any).
    :param usage: "words" (default) reports word counts of the conversation and the reply as token usage
        (see `message_words`); a mapping is reported as given, by every call; None reports no usage.
    :param finish_reason: the finish reason of the text reply's last chunk; None ends the stream without
        one, as a dropped connection does. Rounds of tool calls always finish with "tool_calls".
    :param yield_to_loop: in `run_async`, give the event loop a turn before each chunk even without a
        delay, as a network stream does; a consumer that stops iterating then stops the run at once,
        instead of after the whole workflow already ran.
    :raises MockScriptError: for invalid tool calls, or tool calls given both in a `MockReply` and apart.
    """

    def __init__(
        self,
        response: str | Sequence[str] | MockReply | None = None,
        *,
        tool_calls: ScriptedToolCalls | None = None,
        model: str = "mock",
        delay_ms: float = 0,
        error_after: int | None = None,
        usage: Literal["words"] | Mapping[str, int] | None = "words",
        finish_reason: HaystackFinishReason | None = "stop",
        streaming_callback: StreamingCallbackT | None = None,
        yield_to_loop: bool = False,
    ) -> None:
        if isinstance(response, MockReply):
            if tool_calls:
                raise MockScriptError("give the tool calls either in the MockReply or as tool_calls=, not both")
            self.rounds = scripted_rounds(response.tool_calls)
            self.response: str | Sequence[str] | None = response.text
        else:
            self.rounds = scripted_rounds(tool_calls)
            self.response = response
        self.model = model
        self.delay_ms = delay_ms
        self.error_after = error_after
        self.usage = usage
        self.finish_reason = finish_reason
        self.streaming_callback = streaming_callback
        self.yield_to_loop = yield_to_loop

    # -- the script ------------------------------------------------------------------------------

    def _usage(self, messages: list[ChatMessage], reply_words: int) -> dict[str, int] | None:
        if self.usage == "words":
            prompt_words = sum(message_words(m) for m in messages)
            return {
                "prompt_tokens": prompt_words,
                "completion_tokens": reply_words,
                "total_tokens": prompt_words + reply_words,
            }
        return dict(self.usage) if self.usage is not None else None

    def _script(self, messages: list[ChatMessage]) -> tuple[list[str], dict[str, Any]]:
        """The text reply's chunks and the metadata of its last chunk and reply."""
        if self.response is None:
            chunks = split_words(derived_reply(user_prompt(messages)))
        elif isinstance(self.response, str):
            chunks = split_words(self.response)
        else:
            chunks = [c for c in self.response if c]
        meta: dict[str, Any] = {"model": self.model, "index": 0, "finish_reason": self.finish_reason}
        meta["usage"] = self._usage(messages, len("".join(chunks).split()))
        return chunks, meta

    def _round_calls(self, messages: list[ChatMessage]) -> tuple[int, list[MockToolCall]] | None:
        """The tool round this call is in and its scripted calls, or None when the text reply is due."""
        turn = tool_round(messages)
        if turn < len(self.rounds):
            return turn, self.rounds[turn]
        if self.rounds and self.response is None:
            return turn, self.rounds[-1]
        return None

    def _plan(
        self, messages: list[ChatMessage], info: ComponentInfo
    ) -> tuple[list[StreamingChunk], StreamingChunk, ChatMessage]:
        """The chunks to stream for this call, the final chunk, and the reply."""
        scripted = self._round_calls(messages)
        if scripted is None:
            texts, meta = self._script(messages)
            chunks = [self._chunk(content, position, info) for position, content in enumerate(texts)]
            return chunks, self._final_chunk(meta, info), ChatMessage.from_assistant("".join(texts), meta=meta)
        turn, calls = scripted
        chunks = []
        made: list[ToolCall] = []
        for index, call in enumerate(calls):
            call_id = call.id or f"call_{turn + 1}_{index}"
            made.append(ToolCall(tool_name=call.name, arguments=dict(call.arguments), id=call_id))
            for position, fragment in enumerate(argument_fragments(call.arguments)):
                first = position == 0
                delta = ToolCallDelta(
                    index=index,
                    id=call_id if first else None,
                    tool_name=call.name if first else None,
                    arguments=fragment,
                )
                chunks.append(
                    StreamingChunk(
                        content="",
                        index=index,
                        tool_calls=[delta],
                        start=first,
                        component_info=info,
                        meta={"model": self.model},
                    )
                )
        reply_words = sum(message_words(ChatMessage.from_assistant(tool_calls=[call])) for call in made)
        meta = {"model": self.model, "index": 0, "finish_reason": "tool_calls"}
        meta["usage"] = self._usage(messages, reply_words)
        final = StreamingChunk(content="", component_info=info, finish_reason="tool_calls", meta=meta)
        return chunks, final, ChatMessage.from_assistant(tool_calls=made, meta=meta)

    def _chunk(self, content: str, position: int, info: ComponentInfo) -> StreamingChunk:
        return StreamingChunk(
            content=content, index=0, start=position == 0, component_info=info, meta={"model": self.model}
        )

    def _final_chunk(self, meta: dict[str, Any], info: ComponentInfo) -> StreamingChunk:
        return StreamingChunk(content="", component_info=info, finish_reason=self.finish_reason, meta=meta)

    def _check_fault(self, position: int) -> None:
        if self.error_after is not None and position >= self.error_after:
            raise MockProviderError(f"mock provider failed after {position} chunks (error_after={self.error_after})")

    # -- haystack's entry points -----------------------------------------------------------------

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        tools: Any = None,
    ) -> dict[str, list[ChatMessage]]:
        """Stream this call's part of the script to `streaming_callback` (if any) and return the reply.

        `tools` (haystack `Tool`s or a `Toolset`) is accepted as every chat generator accepts it; the
        scripted calls do not depend on it, so a test can also script a call to a tool that does not exist.
        (It is typed `Any` so creating the component does not import `haystack.tools`.)
        """
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=False)
        chunks, final, reply = self._plan(messages, ComponentInfo.from_component(self))
        delay = self.delay_ms / 1000
        for position, chunk in enumerate(chunks):
            self._check_fault(position)
            if delay:
                time.sleep(delay)
            if callback is not None:
                callback(chunk)
        self._check_fault(len(chunks))
        if callback is not None:
            callback(final)
        return {"replies": [reply]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(
        self,
        messages: list[ChatMessage],
        streaming_callback: StreamingCallbackT | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        tools: Any = None,
    ) -> dict[str, list[ChatMessage]]:
        """Async twin of `run`; awaits an async callback and sleeps without blocking the loop."""
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=True)
        chunks, final, reply = self._plan(messages, ComponentInfo.from_component(self))
        delay = self.delay_ms / 1000
        for position, chunk in enumerate(chunks):
            self._check_fault(position)
            if delay or self.yield_to_loop:
                await asyncio.sleep(delay)
            if callback is not None:
                result = callback(chunk)
                if result is not None:
                    await result
        self._check_fault(len(chunks))
        if callback is not None:
            result = callback(final)
            if result is not None:
                await result
        return {"replies": [reply]}
