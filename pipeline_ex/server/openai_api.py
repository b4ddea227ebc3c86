"""`POST /v1/chat/completions` and `GET /v1/models`: run a workflow as if it were an OpenAI chat model.

`model` names the workflow. The last user message becomes the workflow's `prompt` input (or its only
input); a workflow with a `list` input named `messages` gets the whole conversation there instead (in
OpenAI's format, tool calls and tool results included), and one with a `list` input named `tools` gets the
request's tools. The reply is the text of the workflow's last top-level LLM step (the run's lifecycle
events add nothing to it); with `stream: true` it arrives as `chat.completion.chunk`s and `data: [DONE]` at
the end. When that step calls one of the request's tools, the call is passed through as OpenAI's
`tool_calls` (streamed fragment by fragment) with `finish_reason: "tool_calls"`: the client runs the tool
and sends the result back in its next request, as it would to OpenAI.
When `stream_options.include_usage` is set, every chunk carries `"usage": null` except an extra last one
with the usage summed over the run's steps (as OpenAI documents it). A failure after the stream started
is sent as an error chunk. The fields a request may set are checked (`parse_chat_request`): a malformed
one is a 400 naming the field.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pipeline_ex.events import Delta, Done, RunEvent, ToolCallInfo, Usage
from pipeline_ex.llm.normalize import add_usage
from pipeline_ex.server.catalog import answer_step
from pipeline_ex.server.security import RequestRejected
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.schema import LLMStep

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request the server uses (every other field is accepted and ignored)."""

    model: str
    prompt: str
    """The text of the last user message."""
    stream: bool
    include_usage: bool
    messages: tuple[dict[str, Any], ...] = ()
    """The whole conversation, each message in OpenAI's format with its content as text."""
    tools: tuple[dict[str, Any], ...] | None = None
    """The request's tools (`{type: function, function: {name, description, parameters}}`), if it gave any."""

    @property
    def tool_names(self) -> frozenset[str]:
        """The names of the request's tools: calls to them are passed through to the client."""
        return frozenset(tool["function"]["name"] for tool in self.tools or ())


def _bad(field: str, problem: str) -> RequestRejected:
    return RequestRejected(400, f"{field!r} {problem}")


def _message_text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("content", f"of {where} must be a string or a list of content parts, got {type(content).__name__}")
    texts = []
    for number, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad("content", f"part {number} of {where} must be an object, got {type(part).__name__}")
        if part.get("type", "text") != "text":
            continue  # images, audio and files are not workflow inputs
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad("content", f"part {number} of {where} needs a string 'text', got {type(text).__name__}")
        texts.append(text)
    return "".join(texts)


def parse_chat_request(body: Any) -> ChatRequest:
    """Check the fields of a chat completion request; a malformed one is a 400 that names it."""
    if not isinstance(body, dict):
        raise RequestRejected(400, "the body must be a JSON object with 'model' and 'messages'")
    model = body.get("model")
    if not isinstance(model, str):
        raise _bad("model", "(the workflow name, a string) is required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"must be true or false, got {json.dumps(stream)[:40]}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        shown = json.dumps(options)[:40]
        raise _bad("stream_options", f'must be an object such as {{"include_usage": true}}, got {shown}')
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad("stream_options", "field 'include_usage' must be true or false")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list of message objects")
    prompt: str | None = None
    found_user = False
    conversation: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad("messages", f"item {number} must be an object with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str):
            raise _bad("role", f"of message {number} must be a string such as 'user'")
        text = _message_text(message.get("content"), f"message {number}")
        if role == "user":
            found_user, prompt = True, text
        conversation.append(_conversation_message(message, role, text, number))
    if not found_user:
        raise _bad("messages", "has no user message")
    if prompt is None:
        raise _bad("content", "of the last user message has no text")
    return ChatRequest(
        model=model,
        prompt=prompt,
        stream=stream,
        include_usage=include_usage,
        messages=tuple(conversation),
        tools=_tools(body.get("tools")),
    )


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
"""The roles a message may have, and what each is for the workflow (OpenAI's `developer` is a system message)."""
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _call_arguments(raw: Any, where: str) -> None:
    if isinstance(raw, dict) or raw in (None, ""):
        return
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise _bad("tool_calls", f"{where}: 'arguments' must be a JSON object (as text), got {json.dumps(raw)[:40]}")


def _conversation_message(message: dict[str, Any], role: str, text: str | None, number: int) -> dict[str, Any]:
    """One message as a workflow's `messages` input gets it: OpenAI's format, its content as text."""
    if role not in _ROLES:
        raise _bad("role", f"of message {number} must be one of {', '.join(_ROLES)}, got {json.dumps(role)[:40]}")
    role = _ROLES[role]
    kept: dict[str, Any] = {"role": role, "content": text}
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise _bad("tool_calls", f"of message {number} must be a list, on an assistant message")
        for position, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _bad("tool_calls", f"item {position} of message {number} needs 'function' with a 'name'")
            if not isinstance(call.get("id", ""), str):
                raise _bad("tool_calls", f"item {position} of message {number}: 'id' must be a string")
            _call_arguments(function.get("arguments"), f"item {position} of message {number}")
        kept["tool_calls"] = calls
    elif role != "tool" and text is None:
        raise _bad("content", f"of message {number} is missing (only an assistant message with tool_calls may omit it)")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise _bad("tool_call_id", f"of message {number} (a tool result) must name the call it answers")
        kept["tool_call_id"] = call_id
    return kept


def _tools(tools: Any) -> tuple[dict[str, Any], ...] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list of {type: function, function: {name, parameters}} objects")
    checked: list[dict[str, Any]] = []
    names: set[str] = set()
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise _bad("tools", f"item {number} must be {{type: function, function: {{name, parameters}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tools", f"item {number} needs a function 'name'")
        if not _TOOL_NAME.match(name):
            raise _bad(
                "tools", f"item {number}: the name {json.dumps(name)[:70]} must be 1 to 64 letters, digits, _ or -"
            )
        if name in names:
            raise _bad("tools", f"item {number}: two tools are named {name!r}")
        names.add(name)
        if not isinstance(function.get("parameters", {}), dict):
            raise _bad("tools", f"item {number}: 'parameters' must be a JSON Schema object")
        checked.append({"type": "function", "function": function})
    return tuple(checked)


def chat_inputs(loaded: LoadedWorkflow, request: ChatRequest) -> dict[str, Any]:
    """Map a chat request onto the workflow's inputs (only the last user message is used).

    :raises RequestRejected: 400 when the workflow has no input to take the message, or no top-level LLM
        step whose text could be the answer (its LLM steps are all inside groups).
    """
    if answer_step(loaded) is None and any(isinstance(step.spec, LLMStep) for step in loaded.all_steps()):
        raise RequestRejected(
            400,
            f"workflow {loaded.name!r} cannot answer as a chat model: the answer is the text of its last "
            "top-level LLM step, and it has none (its LLM steps are inside groups); add a final LLM step",
        )
    content = request.prompt
    declared = loaded.workflow.inputs
    inputs: dict[str, Any] = {}
    if "tools" in declared and declared["tools"].type == "list":
        own = _own_tool_names(loaded)
        clash = sorted(own & request.tool_names)
        if clash:
            raise RequestRejected(
                400, f"'tools' names {', '.join(map(repr, clash))}, which the workflow's own step defines; rename it"
            )
        inputs["tools"] = list(request.tools or ())
    elif request.tools:
        raise RequestRejected(
            400,
            f"workflow {loaded.name!r} takes no tools: declare a list input named 'tools' and give its answer "
            'step the entry "{{ inputs.tools }}" under tools:',
        )
    if "messages" in declared and declared["messages"].type == "list":
        inputs["messages"] = list(request.messages)
    if "prompt" in declared:
        inputs["prompt"] = content
    if "messages" in inputs or "prompt" in inputs:
        return inputs
    others = [name for name in declared if name not in inputs]
    if len(others) != 1:
        raise RequestRejected(
            400,
            f"workflow {loaded.name!r} needs an input named 'prompt' (or exactly one input), or a list input named "
            "'messages', to be used as a chat model",
        )
    inputs[others[0]] = content
    return inputs


def _own_tool_names(loaded: LoadedWorkflow) -> set[str]:
    """The names of the tools the answer step defines itself (not the templated ones)."""
    from pipeline_ex.llm.tools import tool_name

    answer = answer_step(loaded)
    step = next((s for s in loaded.steps if s.id == answer), None)
    names = (tool_name(tool) for tool in (step.tools if step is not None else []) if not isinstance(tool, str))
    return {name for name in names if name is not None}


def _usage_json(total: Usage | None) -> dict[str, int] | None:
    if total is None:
        return None
    prompt = total.input_tokens or 0
    completion = total.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total.total_tokens or 0}


class _Answer:
    """Follows a run's events for a chat completion: the answer, its finish reason, and the run's usage.

    The answer is the answer step's text and its calls to the request's tools, passed through.

    :param tool_names: the request's tools: the answer step's calls to them are the client's to run.
    """

    def __init__(self, loaded: LoadedWorkflow, tool_names: frozenset[str] = frozenset()) -> None:
        self.step = answer_step(loaded)
        self.tool_names = tool_names
        self.usage: Usage | None = None
        self.finish = "stop"
        self.text: list[str] = []
        self.streamed_calls: dict[str, int] = {}
        """Passed-through call id -> its index in the reply's `tool_calls`."""
        self.calls: list[ToolCallInfo] = []
        """The passed-through calls, complete (from the answer step's Done)."""

    def delta_of(self, event: RunEvent) -> dict[str, Any] | None:
        """The event's contribution to the answer, as a chunk's `delta` (and note what a Done reports)."""
        if isinstance(event, Delta):
            if event.step != self.step:
                return None
            if event.kind == "text":
                self.text.append(event.content)
                return {"content": event.content}
            if event.kind == "tool_call" and event.tool_name in self.tool_names and event.tool_call_id:
                return {"tool_calls": [self._fragment(event.tool_call_id, event.tool_name, event.content)]}
            return None
        if not isinstance(event, Done):
            return None  # lifecycle, tool and partial events carry no text
        self.usage = add_usage(self.usage, event.response.usage)
        if event.step == self.step:
            self.finish = _FINISH.get(event.response.finish_reason, "stop")
            self.calls = [c for c in event.response.tool_calls if c.result is None and c.name in self.tool_names]
        return None

    def _fragment(self, call_id: str, name: str, arguments: str) -> dict[str, Any]:
        index = self.streamed_calls.get(call_id)
        if index is not None:
            return {"index": index, "function": {"arguments": arguments}}
        index = self.streamed_calls[call_id] = len(self.streamed_calls)
        return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}

    def unstreamed_calls(self) -> list[dict[str, Any]]:
        """The passed-through calls no fragment announced (a call without arguments, an unstreamed step)."""
        return [
            self._fragment(call.id, call.name, json.dumps(call.arguments))
            for call in self.calls
            if call.id not in self.streamed_calls
        ]

    def message(self) -> dict[str, Any]:
        """The reply as a non-streamed completion's `message`."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in self.calls
            ]
        return message


def _chunk(
    completion_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None, include_usage: bool
) -> str:
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if include_usage:
        payload["usage"] = None
    return f"data: {json.dumps(payload)}\n\n"


async def stream_chunks(
    events: AsyncIterator[RunEvent],
    loaded: LoadedWorkflow,
    run_id: str,
    include_usage: bool,
    describe: Callable[[BaseException], dict[str, Any]],
    tool_names: frozenset[str] = frozenset(),
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion; `describe` turns a failure into the error chunk's payload."""
    answer = _Answer(loaded, tool_names)
    created = int(time.time())
    completion_id = f"chatcmpl-{run_id}"
    model = loaded.name
    yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""}, None, include_usage)
    try:
        async for event in events:
            delta = answer.delta_of(event)
            if delta is not None:
                yield _chunk(completion_id, model, created, delta, None, include_usage)
    except Exception as error:
        yield f"data: {json.dumps({'error': describe(error)})}\n\n"
        yield "data: [DONE]\n\n"
        return
    late = answer.unstreamed_calls()
    if late:
        yield _chunk(completion_id, model, created, {"tool_calls": late}, None, include_usage)
    yield _chunk(completion_id, model, created, {}, answer.finish, include_usage)
    if include_usage:
        usage_chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage_json(answer.usage),
        }
        yield f"data: {json.dumps(usage_chunk)}\n\n"
    yield "data: [DONE]\n\n"


async def complete(
    events: AsyncIterator[RunEvent], loaded: LoadedWorkflow, run_id: str, tool_names: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The body of a non-streamed chat completion (raises the run's error, if any)."""
    answer = _Answer(loaded, tool_names)
    async for event in events:
        answer.delta_of(event)
    body: dict[str, Any] = {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": loaded.name,
        "choices": [{"index": 0, "message": answer.message(), "finish_reason": answer.finish}],
    }
    usage = _usage_json(answer.usage)
    if usage is not None:
        body["usage"] = usage
    return body


def models(names: list[str], created: int) -> dict[str, Any]:
    """The body of `GET /v1/models`: each workflow as a model, in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "pipeline-ex"} for name in names],
    }
