"""`POST /v1/chat/completions` and `GET /v1/models`: run a workflow as if it were an OpenAI chat model.

`model` names the workflow. The last user message becomes the workflow's `prompt` input (or its only
input). The reply is the text of the workflow's last top-level LLM step (the run's lifecycle events add
nothing to it); with `stream: true` it arrives as `chat.completion.chunk`s and `data: [DONE]` at the end.
When `stream_options.include_usage` is set, every chunk carries `"usage": null` except an extra last one
with the usage summed over the run's steps (as OpenAI documents it). A failure after the stream started
is sent as an error chunk. The fields a request may set are checked (`parse_chat_request`): a malformed
one is a 400 naming the field.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pipeline_ex.events import Delta, Done, RunEvent, Usage
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
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad("messages", f"item {number} must be an object with 'role' and 'content'")
        role = message.get("role")
        if not isinstance(role, str):
            raise _bad("role", f"of message {number} must be a string such as 'user'")
        text = _message_text(message.get("content"), f"message {number}")
        if role == "user":
            found_user, prompt = True, text
    if not found_user:
        raise _bad("messages", "has no user message")
    if prompt is None:
        raise _bad("content", "of the last user message has no text")
    return ChatRequest(model=model, prompt=prompt, stream=stream, include_usage=include_usage)


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
    declared = list(loaded.workflow.inputs)
    if "prompt" in declared:
        return {"prompt": content}
    if len(declared) == 1:
        return {declared[0]: content}
    raise RequestRejected(
        400, f"workflow {loaded.name!r} needs an input named 'prompt' (or exactly one input) to be used as a chat model"
    )


def _usage_json(total: Usage | None) -> dict[str, int] | None:
    if total is None:
        return None
    prompt = total.input_tokens or 0
    completion = total.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total.total_tokens or 0}


def _add(total: Usage | None, usage: Usage | None) -> Usage | None:
    if usage is None:
        return total
    if total is None:
        return usage

    def plus(a: int | None, b: int | None) -> int | None:
        return None if a is None and b is None else (a or 0) + (b or 0)

    return Usage(
        input_tokens=plus(total.input_tokens, usage.input_tokens),
        output_tokens=plus(total.output_tokens, usage.output_tokens),
        total_tokens=plus(total.total_tokens, usage.total_tokens),
    )


class _Answer:
    """Follows a run's events for a chat completion: the answer step's text, finish reason and total usage."""

    def __init__(self, loaded: LoadedWorkflow) -> None:
        self.step = answer_step(loaded)
        self.usage: Usage | None = None
        self.finish = "stop"

    def text_of(self, event: RunEvent) -> str | None:
        """The event's contribution to the answer text, if any (and note what a Done reports)."""
        if isinstance(event, Delta):
            return event.content if event.step == self.step and event.kind == "text" else None
        if not isinstance(event, Done):
            return None  # lifecycle events carry no text
        self.usage = _add(self.usage, event.response.usage)
        if event.step == self.step:
            self.finish = _FINISH.get(event.response.finish_reason, "stop")
        return None


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
) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion; `describe` turns a failure into the error chunk's payload."""
    answer = _Answer(loaded)
    created = int(time.time())
    completion_id = f"chatcmpl-{run_id}"
    model = loaded.name
    yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""}, None, include_usage)
    try:
        async for event in events:
            text = answer.text_of(event)
            if text is not None:
                yield _chunk(completion_id, model, created, {"content": text}, None, include_usage)
    except Exception as error:
        yield f"data: {json.dumps({'error': describe(error)})}\n\n"
        yield "data: [DONE]\n\n"
        return
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


async def complete(events: AsyncIterator[RunEvent], loaded: LoadedWorkflow, run_id: str) -> dict[str, Any]:
    """The body of a non-streamed chat completion (raises the run's error, if any)."""
    answer = _Answer(loaded)
    text = [piece async for event in events if (piece := answer.text_of(event)) is not None]
    body: dict[str, Any] = {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": loaded.name,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": answer.finish}
        ],
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
