"""The conversation an LLM step sends: haystack `ChatMessage`s, from a prompt or from `messages`.

`messages` entries are haystack `ChatMessage`s or mappings in OpenAI's chat format, so a chat history
received by the OpenAI-compatible endpoint (or kept in a `list` input) can be sent as it is:
`{role, content}` for system, user and assistant messages, an assistant message's `tool_calls`
(`{id, type: function, function: {name, arguments}}`, the arguments as JSON text or an object), and
`{role: tool, tool_call_id, content}` for a tool's result. haystack has no reader for that format, so it
is written here; everything after it is haystack's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline_ex.errors import PipelineError

ROLES = ("system", "user", "assistant", "tool")


class MessageError(PipelineError):
    """A `messages` entry that is not a chat message; the error names the entry and what it lacks."""


def _text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only the text parts are sent
        texts = [part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        return "".join(str(t) for t in texts)
    raise MessageError(f"{where}: 'content' must be text, got {type(content).__name__}")


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise MessageError(f"{where}: the tool call's arguments are not JSON ({error})") from None
        if isinstance(value, dict):
            return value
    raise MessageError(f"{where}: a tool call's arguments must be a JSON object, got {raw!r:.60}")


def _tool_calls(raw: Any, where: str) -> list[Any]:
    from haystack.dataclasses import ToolCall

    if not isinstance(raw, list):
        raise MessageError(f"{where}: 'tool_calls' must be a list")
    calls = []
    for number, call in enumerate(raw):
        at = f"{where}, tool call {number}"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise MessageError(f"{at}: give {{id, type: function, function: {{name, arguments}}}}")
        arguments = _arguments(function.get("arguments"), at)
        calls.append(ToolCall(tool_name=function["name"], arguments=arguments, id=call.get("id")))
    return calls


def chat_message(entry: Any, number: int, earlier: Sequence[Any] = ()) -> Any:
    """One haystack `ChatMessage` from a `ChatMessage` or an OpenAI-format mapping (entry `number`).

    :param earlier: the messages before it: a tool result names its call by id, and the call (with the
        tool's name) is looked up there.
    """
    from haystack.dataclasses import ChatMessage, ToolCall

    if isinstance(entry, ChatMessage):
        return entry
    where = f"message {number}"
    if not isinstance(entry, Mapping):
        raise MessageError(f"{where} must be a mapping with 'role' and 'content', got {type(entry).__name__}")
    role = entry.get("role")
    if role not in ROLES:
        raise MessageError(f"{where}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    text = _text(entry.get("content"), where)
    if role == "tool":
        call_id = entry.get("tool_call_id")
        origin = next(
            (c for m in reversed(earlier) for c in (getattr(m, "tool_calls", None) or []) if c.id == call_id), None
        )
        if origin is None:
            origin = ToolCall(tool_name=str(entry.get("name") or "tool"), arguments={}, id=call_id)
        return ChatMessage.from_tool(text or "", origin=origin)
    if role == "assistant":
        calls = _tool_calls(entry["tool_calls"], where) if entry.get("tool_calls") else None
        return ChatMessage.from_assistant(text, tool_calls=calls)
    if text is None:
        raise MessageError(f"{where}: a {role} message needs 'content'")
    return ChatMessage.from_system(text) if role == "system" else ChatMessage.from_user(text)


def chat_messages(entries: Sequence[Any], system: str | None = None) -> list[Any]:
    """The haystack messages for `entries`, with `system` first unless they begin with a system message."""
    from haystack.dataclasses import ChatMessage, ChatRole

    messages: list[Any] = []
    for number, entry in enumerate(entries):
        messages.append(chat_message(entry, number, messages))
    if system and not (messages and messages[0].role == ChatRole.SYSTEM):
        messages.insert(0, ChatMessage.from_system(system))
    return messages


def prompt_messages(system: str | None, prompt: str) -> list[dict[str, Any]]:
    """The conversation of a `prompt` step, as OpenAI-format mappings: the system prompt, then the prompt."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def message_text(message: Any) -> tuple[str, str]:
    """A message as the (role, text) pair a cassette's request compares: a tool call or result as JSON."""
    role = message.role.value
    result = message.tool_call_result
    if result is not None:
        return role, json.dumps({"tool_call_id": result.origin.id, "result": result.result})
    if message.tool_calls:
        calls = [{"id": c.id, "name": c.tool_name, "arguments": c.arguments} for c in message.tool_calls]
        return role, json.dumps({"text": message.text, "tool_calls": calls}, sort_keys=True)
    return role, message.text or ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message (what a mock script matches and a chat prompt is)."""
    from haystack.dataclasses import ChatRole

    return next((m.text or "" for m in reversed(messages) if m.role == ChatRole.USER), "")
