"""A client-side tool loop through `POST /v1/chat/completions`, driven by the official `openai` client.

The workflow's answer step runs on a real loopback OpenAI server (the "model"), which calls the client's
tool in round 1 and answers from the tool's result in round 2. pipeline-ex serve sits in between, on
uvicorn: it passes the client's conversation and tools to the workflow, streams the model's tool call
to the client as OpenAI `tool_calls` deltas, and runs nothing itself. The client runs the tool and sends
the result back, exactly as it would against OpenAI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai_sse_server import OpenAISSEServer, StreamScript
from provider_servers import ScriptedToolCall

pytestmark = [pytest.mark.streaming, pytest.mark.live]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

ASSISTANT = """\
workflow:
  name: assistant
  inputs:
    messages: {type: list}
    tools: {type: list, default: []}
  steps:
    - id: answer
      provider: openai
      options: {api_base_url: "UPSTREAM"}
      system: "Use the tools you are given."
      messages: ["{{ inputs.messages }}"]
      tools: ["{{ inputs.tools }}", tools_here:local_time]
"""

LOCAL_TOOLS = '''\
def local_time(city: str) -> str:
    """The local time in a city (run by the server itself).

    :param city: the city.
    """
    return f"14:05 in {city}"
'''


@pytest.fixture
def assistant(
    tmp_path: Path, openai_server: OpenAISSEServer, start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> openai.OpenAI:
    """An `openai` client of a pipeline-ex server whose `assistant` workflow runs on `openai_server`."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "assistant.yaml").write_text(ASSISTANT.replace("UPSTREAM", openai_server.url), encoding="utf-8")
    (tmp_path / "tools_here.py").write_text(LOCAL_TOOLS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tools_here", raising=False)
    server = start_server(folder)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def weather(city: str) -> str:
    return f"{city}: 12 C and rain"


def collect_stream(stream: Any) -> tuple[str, list[dict[str, Any]], str | None, int]:
    """The streamed text, the tool calls put together from their deltas, the finish reason, the chunks."""
    text, calls, finish, count = [], {}, None, 0
    for chunk in stream:
        count += 1
        choice = chunk.choices[0]
        if choice.delta.content:
            text.append(choice.delta.content)
        for fragment in choice.delta.tool_calls or []:
            call = calls.setdefault(fragment.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = call["id"] or fragment.id
            if fragment.function is not None:
                call["name"] = call["name"] or fragment.function.name
                call["arguments"] += fragment.function.arguments or ""
        finish = choice.finish_reason or finish
    return "".join(text), [calls[i] for i in sorted(calls)], finish, count


def test_a_developer_message_is_a_system_message(assistant: openai.OpenAI, openai_server: OpenAISSEServer) -> None:
    messages: Any = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assistant.chat.completions.create(model="assistant", messages=messages)
    sent = openai_server.requests[0].body["messages"]
    assert sent[0] == {"role": "system", "content": "Be terse."}


def test_a_client_side_tool_loop_works_with_the_openai_client(
    assistant: openai.OpenAI, openai_server: OpenAISSEServer
) -> None:
    openai_server.queue(
        StreamScript.calling(ScriptedToolCall("get_weather", {"city": "Oslo"}, fragments=4)),
        StreamScript.replying("It is ", "12 C and ", "raining in Oslo."),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    stream = assistant.chat.completions.create(model="assistant", messages=messages, tools=[WEATHER_TOOL], stream=True)
    text, calls, finish, chunks = collect_stream(stream)
    assert finish == "tool_calls" and text == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert chunks >= 4  # the role chunk, the arguments in fragments, the finish chunk

    upstream = openai_server.requests[0].body
    assert [t["function"]["name"] for t in upstream["tools"]] == ["get_weather", "local_time"]
    assert upstream["messages"][-1] == messages[0]

    call = calls[0]
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": weather(**json.loads(call["arguments"]))})
    stream = assistant.chat.completions.create(model="assistant", messages=messages, tools=[WEATHER_TOOL], stream=True)
    text, calls, finish, _ = collect_stream(stream)
    assert (text, calls, finish) == ("It is 12 C and raining in Oslo.", [], "stop")

    second = openai_server.requests[1].body["messages"]
    assert second[-2]["tool_calls"][0]["id"] == call["id"]
    assert second[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "Oslo: 12 C and rain"}


def test_the_servers_own_tools_run_there_and_are_not_passed_through(
    assistant: openai.OpenAI, openai_server: OpenAISSEServer
) -> None:
    openai_server.queue(
        StreamScript.calling(ScriptedToolCall("local_time", {"city": "Oslo"})),
        StreamScript.replying("It is 14:05."),
    )
    stream = assistant.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Time in Oslo?"}], tools=[WEATHER_TOOL], stream=True
    )
    text, calls, finish, _ = collect_stream(stream)
    assert (text, calls, finish) == ("It is 14:05.", [], "stop")
    tool_message = openai_server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "14:05 in Oslo"


def test_an_unstreamed_completion_carries_the_tool_calls_in_its_message(
    assistant: openai.OpenAI, openai_server: OpenAISSEServer
) -> None:
    openai_server.queue(StreamScript.calling(ScriptedToolCall("get_weather", {"city": "Bergen"})))
    completion = assistant.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Weather in Bergen?"}], tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert completion.usage is not None and completion.usage.total_tokens == 15  # one model call, counted once
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Bergen"}


def test_tools_for_a_workflow_without_a_tools_input_are_refused(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "plain.yaml").write_text(
        "workflow:\n  name: plain\n  inputs: {prompt: {}}\n  steps:\n"
        "    - {id: a, provider: mock, prompt: '{{ inputs.prompt }}'}\n",
        encoding="utf-8",
    )
    client = openai.OpenAI(base_url=f"{start_server(folder).url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="takes no tools: declare a list input named 'tools'"):
        client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]
        )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"tools": "get_weather"}, "'tools' must be a list"),
        ({"tools": [{"type": "function"}]}, "'tools' item 0 must be"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "needs a function 'name'"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]},
            "'tool_call_id' of message 1",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": "f"}]},
            "'tool_calls' of message 1 must be a list",
        ),
        ({"messages": [{"role": "robot", "content": "x"}]}, "'role' of message 0 must be one of"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]},
                ]
            },
            "'arguments' must be a JSON object",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
                ]
            },
            "'arguments' must be a JSON object",
        ),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "two tools are named 'get_weather'"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "must be 1 to 64 letters"),
        (
            {"tools": [{"type": "function", "function": {"name": "local_time"}}]},
            "names 'local_time', which the workflow's own step defines",
        ),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}, "'content' of message 1 is missing"),
    ],
)
def test_a_malformed_tool_request_is_a_400_naming_the_field(
    assistant: openai.OpenAI, body: dict[str, Any], problem: str
) -> None:
    payload = {"model": "assistant", "messages": [{"role": "user", "content": "x"}], **body}
    response = httpx.post(f"{assistant.base_url}chat/completions", json=payload, timeout=10)
    assert response.status_code == 400, response.text
    assert problem in response.text
