"""`POST /v1/chat/completions`: run a workflow as if it were an OpenAI chat model.

`model` names the workflow. The last user message becomes the workflow's `prompt` input (or its only
input). The reply is the text of the workflow's last LLM step; with `stream: true` it arrives as
`chat.completion.chunk`s, with `usage` (summed over the run's steps) when `stream_options.include_usage`
is set, and `data: [DONE]` at the end. A failure after the stream started is sent as an error chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pipeline_ex.events import Delta, Event, Usage
from pipeline_ex.server.catalog import answer_step
from pipeline_ex.server.security import RequestRejected
from pipeline_ex.sse import error_payload
from pipeline_ex.workflow.iterate import EventStream
from pipeline_ex.workflow.loader import LoadedWorkflow

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}


def chat_inputs(loaded: LoadedWorkflow, body: dict[str, Any]) -> dict[str, Any]:
    """Map a chat request onto the workflow's inputs (only the last user message is used)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRejected(400, "'messages' must be a non-empty list")
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not user:
        raise RequestRejected(400, "'messages' has no user message")
    content = user[-1].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise RequestRejected(400, "the last user message has no text content")
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

    def text_of(self, event: Event) -> str | None:
        """The event's contribution to the answer text, if any (and note what a Done reports)."""
        if isinstance(event, Delta):
            return event.content if event.step == self.step and event.kind == "text" else None
        self.usage = _add(self.usage, event.response.usage)
        if event.step == self.step:
            self.finish = _FINISH.get(event.response.finish_reason, "stop")
        return None


def _chunk(completion_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


async def stream_chunks(events: EventStream, loaded: LoadedWorkflow, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body of a streamed chat completion."""
    answer = _Answer(loaded)
    created = int(time.time())
    completion_id = f"chatcmpl-{events.run_id_hint}"
    model = loaded.name
    yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""}, None)
    try:
        async for event in events:
            text = answer.text_of(event)
            if text is not None:
                yield _chunk(completion_id, model, created, {"content": text}, None)
    except Exception as error:
        yield f"data: {json.dumps({'error': error_payload(error)})}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield _chunk(completion_id, model, created, {}, answer.finish)
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


async def complete(events: EventStream, loaded: LoadedWorkflow) -> dict[str, Any]:
    """The body of a non-streamed chat completion (raises the run's error, if any)."""
    answer = _Answer(loaded)
    text = [piece async for event in events if (piece := answer.text_of(event)) is not None]
    body: dict[str, Any] = {
        "id": f"chatcmpl-{events.run_id_hint}",
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
