"""`StepRequest`: what a step asked of its model, as a cassette records it and a replay checks it.

A recorded step answers one request: its step path, its messages (system prompt and prompt, or the
messages of a `messages:` step), its model, its options and the tools it offered the model (each tool's
name, description and parameters schema). A replay serves a recording only for the same request, so a
cassette recorded for one topic, or with other tools, can never answer another. The provider's own
name is recorded, for reading, but not compared (a cassette recorded on the mock provider replays for
the real one), and neither are the options that only say how to reach it (`CONNECTION_OPTIONS`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipeline_ex.llm.options import STEP_OPTION_NAMES
from pipeline_ex.redaction import redact

CONNECTION_OPTIONS = frozenset(
    {"api_base_url", "api_key_env", "organization", "max_retries", "keep_alive", "include_usage"}
)
"""Options that say where and how to reach a provider, not what to ask it; requests leave them out."""
_DIFF_LINES = 12
_LINE_WIDTH = 120


def _stand_in(value: Any) -> Any:
    """A JSON stand-in for a value JSON cannot hold, the same in every process (never an address)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    cls = type(value)
    return f"<{cls.__module__}.{cls.__qualname__}>"


def _json_value(value: Any) -> Any:
    """`value` as it reads back from JSON: tuples become lists, other values JSON lacks a stand-in."""
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True, default=_stand_in))


Message = tuple[str, str] | Mapping[str, Any]
"""A message of a request: a (role, text) pair, or a `{role, content}` mapping (a `messages:` step's)."""


def _message(message: Message) -> dict[str, str]:
    if isinstance(message, Mapping):
        if "role" not in message or "content" not in message:
            raise ValueError(f"message {dict(message)!r} is not a chat message; give it a role and a content")
        return {"role": str(message["role"]), "content": str(message["content"])}
    role, text = message
    return {"role": str(role), "content": str(text)}


def tool_definitions(tools: Iterable[Any]) -> list[dict[str, Any]]:
    """Each tool's `{name, description, parameters}`, from mappings or haystack `Tool`s (a `Toolset` is opened).

    :raises ValueError: for a tool without a name.
    """
    found: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, Mapping):
            name, description, parameters = tool.get("name"), tool.get("description"), tool.get("parameters")
        elif not hasattr(tool, "name") and isinstance(tool, Iterable):  # a haystack Toolset
            found.extend(tool_definitions(tool))
            continue
        else:
            name = getattr(tool, "name", None)
            description, parameters = getattr(tool, "description", None), getattr(tool, "parameters", None)
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"tool {tool!r} has no name; a tool is given as a haystack Tool or as {{name, description, parameters}}"
            )
        found.append({"name": name, "description": str(description or ""), "parameters": _json_value(parameters or {})})
    return found


@dataclass(frozen=True)
class StepRequest:
    """The request of one step run, in the JSON form a cassette holds (secrets redacted)."""

    step: str
    provider: str | None
    model: str | None
    messages: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The tools offered to the model: `{name, description, parameters}` each, in the order offered."""

    @classmethod
    def of(
        cls,
        step: str,
        *,
        provider: str | None,
        model: str | None,
        messages: Sequence[Message],
        options: Mapping[str, Any],
        tools: Iterable[Any] = (),
    ) -> StepRequest:
        """The request of a step run: its messages, its provider options and the tools it offers.

        :param messages: (role, text) pairs (`messages.message_text`), or the `{role, content}`
            mappings of a `messages:` step.
        :param tools: haystack `Tool`s (or a `Toolset`), or `{name, description, parameters}` mappings.
        :raises ValueError: for a message without a role or content, or a tool without a name.
        """
        asked = {k: v for k, v in options.items() if k not in CONNECTION_OPTIONS and k not in STEP_OPTION_NAMES}
        request: dict[str, Any] = {
            "step": step,
            "provider": provider,
            "model": model,
            "messages": [_message(message) for message in messages],
            "options": _json_value(asked),
        }
        offered = tool_definitions(tools)
        if offered:
            request["tools"] = offered
        return cls.from_json(redact(request))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRequest:
        """Read a request from its cassette form (one recorded before tools were recorded has none).

        :raises ValueError: when `data` is not a recorded request.
        """
        try:
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in data["messages"]]
            tools = [
                {"name": str(t["name"]), "description": str(t["description"]), "parameters": dict(t["parameters"])}
                for t in data.get("tools") or []
            ]
            return cls(
                str(data["step"]), data.get("provider"), data.get("model"), messages, dict(data["options"]), tools
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a recorded request ({type(error).__name__}: {error})") from None

    def to_json(self) -> dict[str, Any]:
        """The request as a cassette line holds it (`tools` only when the step offered some)."""
        data: dict[str, Any] = {
            "step": self.step,
            "provider": self.provider,
            "model": self.model,
            "messages": self.messages,
            "options": self.options,
        }
        if self.tools:
            data["tools"] = self.tools
        return data

    def matches(self, recorded: StepRequest) -> bool:
        """Whether a recording made for `recorded` answers this request (the provider is not compared)."""
        return (self.step, self.model, self.messages, self.options, self.tools) == (
            recorded.step,
            recorded.model,
            recorded.messages,
            recorded.options,
            recorded.tools,
        )

    def differences(self, recorded: StepRequest) -> list[str]:
        """What differs from `recorded`, one item per difference, text shown as `-` recorded / `+` now."""
        found: list[str] = []
        if self.step != recorded.step:
            found.append(f"step: {recorded.step!r} when recorded, {self.step!r} now")
        if self.model != recorded.model:
            found.append(f"model: {_model(recorded.model)} when recorded, {_model(self.model)} now")
        found.extend(_message_differences(recorded.messages, self.messages))
        for name in sorted(set(recorded.options) | set(self.options)):
            before, after = recorded.options.get(name, _UNSET), self.options.get(name, _UNSET)
            if before != after:
                found.append(f"option {name}: {_shown(before)} when recorded, {_shown(after)} now")
        found.extend(_tool_differences(recorded.tools, self.tools))
        return found


_UNSET = object()


def _model(name: str | None) -> str:
    return "the provider's default" if name is None else repr(name)


def _shown(value: Any) -> str:
    return "not set" if value is _UNSET else repr(value)


def _label(messages: list[dict[str, str]], position: int) -> str:
    role = messages[position]["role"]
    if role == "system":
        return "system prompt"
    if role == "user" and position == len(messages) - 1:
        return "prompt"
    return f"message {position + 1} ({role})"


def _message_differences(recorded: list[dict[str, str]], now: list[dict[str, str]]) -> list[str]:
    roles_before, roles_now = [m["role"] for m in recorded], [m["role"] for m in now]
    if roles_before != roles_now:
        found = [f"messages: {', '.join(roles_before) or 'none'} when recorded, {', '.join(roles_now) or 'none'} now"]
        if recorded and now and recorded[-1]["content"] != now[-1]["content"]:
            found.append("last message:\n" + text_diff(recorded[-1]["content"], now[-1]["content"]))
        return found
    return [
        f"{_label(now, i)}:\n" + text_diff(before["content"], after["content"])
        for i, (before, after) in enumerate(zip(recorded, now, strict=True))
        if before["content"] != after["content"]
    ]


def _tool_differences(recorded: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    names_before, names_now = [t["name"] for t in recorded], [t["name"] for t in now]
    found = []
    if names_before != names_now:
        found.append(f"tools: {', '.join(names_before) or 'none'} when recorded, {', '.join(names_now) or 'none'} now")
    offered_now = {t["name"]: t for t in now}
    for before in recorded:
        after = offered_now.get(before["name"])
        if after is None:
            continue
        if before["description"] != after["description"]:
            found.append(
                f"tool {before['name']!r} description:\n" + text_diff(before["description"], after["description"])
            )
        if before["parameters"] != after["parameters"]:
            found.append(
                f"tool {before['name']!r} parameters:\n"
                + text_diff(_pretty(before["parameters"]), _pretty(after["parameters"]))
            )
    return found


def _pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=2)


def text_diff(recorded: str, now: str) -> str:
    """A short line diff, indented: `- ` lines as recorded, `+ ` lines now; long lines cut around the change.

    (difflib's unified diff would add headers and hunk markers that mean nothing for one prompt, and
    would not cut a long line near the place where it changed.)
    """
    before, after = recorded.splitlines() or [""], now.splitlines() or [""]
    lines: list[str] = []
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        old, new = before[i1:i2], after[j1:j2]
        for k in range(max(len(old), len(new))):
            a = old[k] if k < len(old) else None
            b = new[k] if k < len(new) else None
            start = _common_prefix(a, b) if a is not None and b is not None else 0
            whitespace_only = a is not None and b is not None and a.split() == b.split()
            if a is not None:
                lines.append("- " + _window(a, start, whitespace_only))
            if b is not None:
                lines.append("+ " + _window(b, start, whitespace_only))
    if len(lines) > _DIFF_LINES:
        lines = [*lines[:_DIFF_LINES], f"... ({len(lines) - _DIFF_LINES} more changed lines)"]
    return "\n".join("    " + line for line in lines)


def _common_prefix(a: str, b: str) -> int:
    size = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        size += 1
    return size


def _window(line: str, start: int, literal: bool) -> str:
    """The line, or the part of it around column `start` when it is long; `repr` when only spacing differs."""
    if len(line) > _LINE_WIDTH:
        begin = max(0, min(start - _LINE_WIDTH // 4, len(line) - _LINE_WIDTH))
        end = begin + _LINE_WIDTH
        line = ("…" if begin else "") + line[begin:end] + ("…" if end < len(line) else "")
    return repr(line) if literal else line
