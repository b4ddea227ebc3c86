"""The tools an LLM step offers its model, and running the calls the model makes.

Tools are haystack `Tool`s. A Python function becomes one through haystack's `create_tool_from_function`
(the JSON Schema of its parameters comes from the type hints); a haystack `Tool` is used as it is. Two
things are added by hand, because haystack does not do them:

- the parameter descriptions of a `:param name:` (or Google/NumPy style) docstring go into the schema,
  and the tool's description is the docstring's text without them (haystack sends the raw docstring and
  no parameter descriptions);
- *declared* tools: a name, a description and a parameter schema with no function. The model may call
  them, and the step hands those calls back to its caller (the OpenAI-compatible endpoint passes them to
  its client) instead of running them.

The loop that sends results back round after round is the step's own (see `pipeline_ex.llm.step`), not
haystack's `Agent`: the Agent streams tool results only as chunks, executes the tool calls of its last
allowed step and then stops without the model's answer, and cannot hand calls back; the step needs one
event per completed call, one `Done` at the very end, a clear failure when the round limit is reached,
and cancellation that can land while a tool runs.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import ToolCallInfo


class ToolSpecError(PipelineError):
    """A `tools:` entry that is not a tool: not importable, not callable, or a malformed declaration."""


def _declared_handed_back(**_: Any) -> None:  # pragma: no cover - never called: the step hands these back
    raise RuntimeError("a declared tool is run by the caller, not by the step")


def _describe(function: Callable[..., Any]) -> tuple[str | None, dict[str, str]]:
    """The docstring's description and its parameter descriptions (any of the common styles)."""
    import docstring_parser

    doc = inspect.getdoc(function)
    if not doc:
        return None, {}
    parsed = docstring_parser.parse(doc)
    text = "\n\n".join(part for part in (parsed.short_description, parsed.long_description) if part)
    return (text or None), {p.arg_name: p.description for p in parsed.params if p.description}


def tool_from_function(function: Callable[..., Any], name: str | None = None) -> Any:
    """A haystack `Tool` for a Python function: schema from its type hints, descriptions from its docstring."""
    from haystack.tools.from_function import create_tool_from_function

    description, params = _describe(function)
    tool = create_tool_from_function(function, name=name, description=description)
    properties = tool.parameters.get("properties", {})
    for arg, text in params.items():
        if arg in properties and "description" not in properties[arg]:
            properties[arg]["description"] = text
    return tool


def declared_tool(spec: Mapping[str, Any]) -> Any:
    """A haystack `Tool` for a declared tool, whose calls the step hands back instead of running them.

    :param spec: `{name, description, parameters}`, or OpenAI's `{type: function, function: {...}}`.
    """
    from haystack.tools.tool import Tool

    if spec.get("type") == "function" and isinstance(spec.get("function"), Mapping):
        spec = spec["function"]
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ToolSpecError(f"a declared tool needs a 'name' (a string), got {dict(spec)!r:.120}")
    parameters = spec.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise ToolSpecError(f"tool {name!r}: 'parameters' must be a JSON Schema object, got {parameters!r:.80}")
    description = spec.get("description") or name
    return Tool(name=name, description=str(description), parameters=dict(parameters), function=_declared_handed_back)


def _is_haystack_tool(value: Any) -> bool:
    return hasattr(value, "tool_spec") and hasattr(value, "invoke")  # duck-typed: no haystack import needed


def import_reference(reference: str) -> Any:
    """Import the function or haystack `Tool` at `package.module:name` (or `package.module.name`).

    Nothing of haystack is imported here, so a workflow's tools are checked when it loads (`validate`)
    without it; `as_tool` turns the value into a `Tool` when the step runs.
    """
    from pipeline_ex.streaming.resolve import ensure_cwd_importable

    module_name, _, attribute = reference.replace(":", ".").rpartition(".")
    if not module_name:
        raise ToolSpecError(f"tool {reference!r}: give a dotted path such as 'tools.calc:evaluate'")
    ensure_cwd_importable()
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:
        raise ToolSpecError(f"cannot import tool {reference!r}: {type(error).__name__}: {error}") from error
    if not _is_haystack_tool(value) and (not callable(value) or isinstance(value, type)):
        raise ToolSpecError(f"tool {reference!r} is a {type(value).__name__}, not a function or a haystack Tool")
    return value


def tool_name(item: Any) -> str | None:
    """The name a `tools=` entry gives its tool (a function's name, a Tool's or a declaration's), if known."""
    if isinstance(item, Mapping):
        item = item.get("function", item) if item.get("type") == "function" else item
        name = item.get("name")
        return name if isinstance(name, str) else None
    name = getattr(item, "name", None)
    if isinstance(name, str):
        return name
    return getattr(item, "__name__", None)


def import_tool(reference: str) -> Any:
    """Import `package.module:name`: a haystack `Tool`, or a function made one."""
    return as_tool(import_reference(reference))


def as_tool(item: Any) -> Any:
    """One haystack `Tool` from what `tools=` accepts: a Tool, a function, a dotted path or a declaration."""
    from haystack.tools.tool import Tool

    if isinstance(item, Tool):
        return item
    if _is_haystack_tool(item):
        return item
    if isinstance(item, str):
        return import_tool(item)
    if isinstance(item, Mapping):
        return declared_tool(item)
    dump = getattr(item, "model_dump", None)  # a `DeclaredTool` from a workflow file
    if callable(dump):
        return declared_tool(dump())
    if callable(item):
        return tool_from_function(item)
    raise ToolSpecError(f"{item!r:.80} is not a tool: give a function, a haystack Tool, a dotted path or a declaration")


@dataclass(frozen=True)
class Toolbox:
    """The tools of one step, by name, and which of them are declared (handed back to the caller)."""

    tools: tuple[Any, ...]
    declared: frozenset[str]

    @classmethod
    def of(cls, items: Sequence[Any]) -> Toolbox:
        """Build the toolbox; two tools with one name are an error (the model could not tell them apart)."""
        tools = [as_tool(item) for item in items]
        seen: set[str] = set()
        for tool in tools:
            if tool.name in seen:
                raise ToolSpecError(f"two tools are named {tool.name!r}; give each tool its own name")
            seen.add(tool.name)
        declared = frozenset(t.name for t in tools if t.function is _declared_handed_back)
        return cls(tuple(tools), declared)

    @property
    def has_async(self) -> bool:
        """Whether a tool can only be awaited (an `async def` function): a sync step runs on an event loop then."""
        return any(tool.function is None and tool.async_function is not None for tool in self.tools)

    def find(self, name: str) -> Any | None:
        """The tool with this name, or None."""
        return next((tool for tool in self.tools if tool.name == name), None)

    def definitions(self) -> list[dict[str, Any]]:
        """Each tool as `{name, description, parameters}` (what a cassette's request records)."""
        return [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in self.tools]


def result_text(value: Any) -> str:
    """A tool's return value as the text the model is shown: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _failure(error: BaseException) -> str:
    cause = error.__cause__ if error.__cause__ is not None else error
    return f"the tool failed: {type(cause).__name__}: {cause}"


def _unknown(toolbox: Toolbox, name: str) -> str:
    names = ", ".join(t.name for t in toolbox.tools)
    return f"there is no tool named {name!r}; the tools are: {names}"


def run_call(toolbox: Toolbox, call_id: str, name: str, arguments: dict[str, Any]) -> ToolCallInfo:
    """Run one call on the calling thread; a tool that raises gives an error result, not an exception."""
    tool = toolbox.find(name)
    if tool is None:
        return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=_unknown(toolbox, name), error=True)
    try:
        value = tool.invoke(**arguments)  # async-only tools never get here: `invoke` runs those steps on a loop
    except Exception as error:
        return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=_failure(error), error=True)
    return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=result_text(value))


async def arun_call(toolbox: Toolbox, call_id: str, name: str, arguments: dict[str, Any]) -> ToolCallInfo:
    """Run one call without blocking the event loop: async tools are awaited, sync ones run on a thread.

    A sync tool runs on a daemon thread (see `bridge.in_daemon_thread`): if the step is cancelled while it
    runs, the step stops waiting at once, and the thread is left to finish on its own.
    """
    from pipeline_ex.llm.bridge import in_daemon_thread

    tool = toolbox.find(name)
    if tool is None:
        return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=_unknown(toolbox, name), error=True)
    try:
        if tool.async_function is not None:
            value = await tool.invoke_async(**arguments)
        else:
            value = await in_daemon_thread(asyncio.get_running_loop(), lambda: tool.invoke(**arguments))
    except Exception as error:
        return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=_failure(error), error=True)
    return ToolCallInfo(id=call_id, name=name, arguments=arguments, result=result_text(value))
