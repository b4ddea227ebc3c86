"""What a scripted or replayed model reads from the conversation it is given: its tool round and the prompt.

A step with tools calls its generator once per round, each time with the whole conversation so far: after
a round that called tools, the assistant message with those calls and one tool message per result are
appended. The mock and cassette generators answer from a script or a recording rather than from the
words, so they read only where they are in that loop (`tool_round`) and what the user asked
(`user_prompt`), never a tool's result.
"""

from __future__ import annotations

import json

from haystack.dataclasses import ChatMessage, ChatRole


def _after_last_user(messages: list[ChatMessage]) -> list[ChatMessage]:
    last_user = max((i for i, message in enumerate(messages) if message.role == ChatRole.USER), default=-1)
    return messages[last_user + 1 :]


def tool_round(messages: list[ChatMessage]) -> int:
    """Which round of a tool loop this call is: the assistant messages with tool calls after the last user message.

    0 for the first call of a step; 1 after one round of tool calls and their results; and so on. Tool
    calls before the last user message belong to an earlier exchange of a chat history, not to this loop.
    """
    return sum(1 for message in _after_last_user(messages) if message.role == ChatRole.ASSISTANT and message.tool_calls)


def user_prompt(messages: list[ChatMessage]) -> str:
    """The text of the last user message (or of the last message with text, when no user spoke)."""
    for message in reversed(messages):
        if message.role == ChatRole.USER and message.text:
            return message.text
    return next((message.text for message in reversed(messages) if message.text), "") or ""


def message_words(message: ChatMessage) -> int:
    """How many words a message holds: its texts, the names and JSON arguments of its tool calls, its tool results.

    The mock provider reports these counts as token usage, so a round that sends tool results back costs
    more than the first call, as it does with a real model.
    """
    words = sum(len(text.split()) for text in message.texts)
    for call in message.tool_calls:
        words += 1 + len(json.dumps(call.arguments, ensure_ascii=False).split())
    for result in message.tool_call_results:
        content = result.result
        text = content if isinstance(content, str) else " ".join(getattr(part, "text", "") for part in content)
        words += len(text.split())
    return words
