"""LLM steps with `messages:`, tools and `output_schema:` in workflows and through `invoke()`.

What reaches the model is checked on a real loopback OpenAI server (the request body it recorded);
mock runs check the events, the values templates see, and the errors a workflow file gets at load time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from haystack.dataclasses import ChatMessage
from openai_sse_server import OpenAISSEServer
from pydantic import BaseModel

import pipeline_ex
from pipeline_ex import Done, Partial, PipelineError, StreamingRecorder, WorkflowError, run
from pipeline_ex.llm.messages import MessageError, chat_messages
from pipeline_ex.llm.tools import Toolbox, ToolSpecError, tool_from_function, tool_name
from pipeline_ex.workflow.loader import parse_workflow

pytestmark = [pytest.mark.streaming, pytest.mark.live]  # live: the OpenAI calls go to a loopback server
ROOT = Path(__file__).resolve().parent.parent


def sent_messages(server: OpenAISSEServer) -> list[dict[str, Any]]:
    """The `messages` of the last request the server received."""
    return server.requests[-1].body["messages"]


def openai(server: OpenAISSEServer) -> dict[str, Any]:
    return {"provider": "openai", "api_base_url": server.url}


# -- messages ----------------------------------------------------------------------------------------


def test_messages_reach_the_model_in_order_with_the_system_prompt_first(openai_server: OpenAISSEServer) -> None:
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    result = pipeline_ex.invoke(messages=history, system="Be brief.", **openai(openai_server))
    assert result.text == "Hello, world!"
    assert sent_messages(openai_server) == [
        {"role": "system", "content": "Be brief."},
        *history,
    ]


def test_a_history_with_tool_calls_and_results_is_sent_in_openai_format(openai_server: OpenAISSEServer) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Oslo"}'}}
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    ]
    pipeline_ex.invoke(messages=history, **openai(openai_server))
    sent = sent_messages(openai_server)
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[1]["tool_calls"][0]["function"]["name"] == "lookup"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"}


def test_haystack_chat_messages_are_accepted_as_they_are(openai_server: OpenAISSEServer) -> None:
    pipeline_ex.invoke(
        messages=[ChatMessage.from_system("S"), ChatMessage.from_user("U")], system="ignored", **openai(openai_server)
    )
    assert sent_messages(openai_server) == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"role": "robot", "content": "x"}, "'role' must be one of system, user, assistant, tool"),
        ({"role": "user"}, "a user message needs 'content'"),
        ("hello", "must be a mapping with 'role' and 'content'"),
        ({"role": "user", "content": 3}, "'content' must be text"),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]},
            "the tool call's arguments are not JSON",
        ),
        ({"role": "assistant", "tool_calls": [{"id": "x"}]}, "give {id, type: function, function: {name, arguments}}"),
    ],
)
def test_a_malformed_message_is_an_error_naming_it(entry: Any, problem: str) -> None:
    with pytest.raises(MessageError, match="message 1") as caught:
        chat_messages([{"role": "user", "content": "ok"}, entry])
    assert problem in str(caught.value)


def test_prompt_and_messages_together_or_neither_are_refused() -> None:
    with pytest.raises(PipelineError, match=r"give either prompt= .* or messages= .*, not both"):
        pipeline_ex.invoke(prompt="a", messages=[{"role": "user", "content": "b"}], provider="mock")
    with pytest.raises(PipelineError, match="give either prompt="):
        pipeline_ex.invoke(provider="mock")


CHAT = """\
workflow:
  name: chat
  inputs:
    history: {type: list, default: [{role: user, content: "I am Ada."}, {role: assistant, content: "Hi Ada."}]}
    message: {default: "Who am I?"}
  defaults: {provider: openai, options: {api_base_url: URL}}
  steps:
    - id: reply
      system: "Answer in one sentence."
      messages:
        - "{{ inputs.history }}"
        - {role: user, content: "{{ inputs.message }} ({{ inputs.history | length }} earlier messages)"}
"""


def test_a_workflow_sends_its_history_input_and_templated_messages(openai_server: OpenAISSEServer) -> None:
    loaded = parse_workflow(CHAT.replace("URL", openai_server.url))
    result = run(loaded)
    assert result.steps["reply"].text == "Hello, world!"
    assert sent_messages(openai_server) == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "I am Ada."},
        {"role": "assistant", "content": "Hi Ada."},
        {"role": "user", "content": "Who am I? (2 earlier messages)"},
    ]


def test_a_history_expression_that_gives_no_list_fails_at_its_line() -> None:
    text = CHAT.replace('"{{ inputs.history }}"', '"{{ inputs.message }}"').replace("URL", "http://127.0.0.1:9")
    with pytest.raises(WorkflowError) as caught:
        run(parse_workflow(text, "chat.yaml", mock=True), mock=True)
    assert "chat.yaml:11:" in str(caught.value)
    assert "must give a list of messages, but it gave text" in str(caught.value)


def test_a_history_holding_a_bad_message_fails_naming_it() -> None:
    with pytest.raises(WorkflowError, match="message 0: 'role' must be one of"):
        loaded = parse_workflow(CHAT.replace("URL", "http://127.0.0.1:9"), "chat.yaml", mock=True)
        run(loaded, {"history": [{"role": "nobody", "content": "x"}]}, mock=True)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{id: s}", "missing required key 'prompt' (or 'messages', to send a conversation)"),
        ("{id: s, prompt: a, messages: [{role: user, content: b}]}", "give either 'prompt' or 'messages', not both"),
        ("{id: s, messages: [hello]}", "a messages entry is a mapping such as {role: user, content: ...}"),
        ("{id: s, messages: [{role: user, content: '{{ inputs.nope }}'}]}", "declares no input 'nope'"),
        ("{id: s, messages: [{role: robot, content: x}]}", "role"),
        ("{id: s, prompt: a, tools: [no_such_module:f]}", "cannot import tool 'no_such_module:f'"),
        ("{id: s, prompt: a, tools: [json]}", "give a dotted path such as 'tools.calc:evaluate'"),
        ("{id: s, prompt: a, tools: [json.decoder]}", "is a module, not a function or a haystack Tool"),
        ("{id: s, prompt: a, tools: ['{{ inputs.nope }}']}", "declares no input 'nope'"),
        ("{id: s, prompt: a, tools: [{name: 'bad name!'}]}", "name"),
        ("{id: s, prompt: a, max_tool_rounds: -1}", "max_tool_rounds"),
        ("{id: s, prompt: a, output_schema: {type: objekt}}", "output_schema"),
        ("{id: s, prompt: a, output_schema: {model: 'no_such_module:Model'}}", "no_such_module"),
        ("{id: s, prompt: a, schema_retries: 11}", "schema_retries"),
        ("{id: s, prompt: a, max_tool_rounds: 2}", "max_tool_rounds is given but the step has no tools"),
        ("{id: s, prompt: a, schema_retries: 2}", "schema_retries is given but the step has no output_schema"),
    ],
)
def test_a_conversation_mistake_is_reported_at_load_with_its_line(step: str, message: str) -> None:
    text = f"workflow:\n  name: w\n  defaults: {{provider: mock}}\n  steps:\n    - {step}\n"
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "w.yaml", mock=True)
    assert "w.yaml:5:" in str(caught.value)
    assert message in str(caught.value)


def test_two_tools_with_one_name_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "twotools.py").write_text("def f(x: int) -> int:\n    'F.'\n    return x\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    text = "workflow:\n  name: w\n  steps:\n    - {id: s, provider: mock, prompt: a, tools: [twotools:f, twotools.f]}\n"
    with pytest.raises(WorkflowError, match="two tools are named 'f'"):
        parse_workflow(text, "w.yaml", mock=True)


# -- tools -------------------------------------------------------------------------------------------


def weather(city: str, unit: str = "C") -> str:
    """Look up the weather in a city.

    :param city: the city's name, such as "Oslo".
    :param unit: C or F.
    """
    return f"12 {unit} in {city}"


def test_a_function_tool_is_described_by_its_type_hints_and_docstring() -> None:
    tool = tool_from_function(weather)
    assert tool.name == "weather"
    assert tool.description == "Look up the weather in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'the city\'s name, such as "Oslo".'},
            "unit": {"type": "string", "default": "C", "description": "C or F."},
        },
        "required": ["city"],
    }


def test_tools_can_be_functions_haystack_tools_paths_and_declarations() -> None:
    toolbox = Toolbox.of(
        [
            weather,
            tool_from_function(weather, name="weather2"),
            "tools.calculator:evaluate",
            {"type": "function", "function": {"name": "ask_user", "parameters": {"type": "object"}}},
        ]
    )
    assert [t.name for t in toolbox.tools] == ["weather", "weather2", "evaluate", "ask_user"]
    assert toolbox.declared == {"ask_user"}
    assert toolbox.definitions()[2]["parameters"]["required"] == ["expression"]
    with pytest.raises(ToolSpecError, match="two tools are named 'weather'"):
        Toolbox.of([weather, weather])
    with pytest.raises(ToolSpecError, match="is not a tool"):
        Toolbox.of([42])


PLAIN_GENERATOR = """\
from haystack import component
from haystack.dataclasses import ChatMessage


@component
class PlainChatGenerator:
    calls = 0

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage], generation_kwargs: dict | None = None) -> dict:
        PlainChatGenerator.calls += 1
        return {"replies": [ChatMessage.from_assistant("plain")]}
"""


def test_a_generator_that_cannot_call_tools_is_refused_before_any_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain_generator.py").write_text(PLAIN_GENERATOR, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"type": "plain_generator.PlainChatGenerator", "init_parameters": {}}
    with pytest.raises(pipeline_ex.ProviderConfigError, match="cannot call tools"):
        pipeline_ex.invoke(prompt="x", provider="generator", tools=[weather], **spec)
    import plain_generator

    assert plain_generator.PlainChatGenerator.calls == 0
    assert pipeline_ex.invoke(prompt="x", provider="generator", stream=False, **spec).text == "plain"


def test_the_calculator_tool_evaluates_arithmetic_and_refuses_anything_else() -> None:
    from tools.calculator import evaluate

    assert evaluate("2480 * 0.125 + 17") == 327
    assert evaluate("2,480 / 8") == 310
    assert evaluate("-(2 ** 3) % 5") == 2
    with pytest.raises(ValueError, match="is not arithmetic"):
        evaluate("__import__('os').system('true')")
    with pytest.raises(ValueError, match="exponent"):
        evaluate("9 ** 999")


def test_loading_a_workflow_with_tools_imports_no_haystack() -> None:
    code = (
        "import sys; from pipeline_ex import load_workflow; "
        "load_workflow('workflows/calculator.yaml', mock=True); "
        "assert not [m for m in sys.modules if m.startswith('haystack')], 'haystack was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


async def async_weather(city: str) -> str:
    """Look up the weather, asynchronously.

    :param city: the city.
    """
    await asyncio.sleep(0)
    return f"rain in {city}"


def test_an_async_tool_runs_in_a_sync_invoke_also_inside_a_running_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline_ex.running_loop._warned", set())  # the warning is given once per process
    reply = {"tool_calls": [{"name": "async_weather", "arguments": {"city": "Oslo"}}], "text": "Rain."}
    result = pipeline_ex.invoke(prompt="x", provider="mock", tools=[async_weather], mock_response=reply)
    assert [c.result for c in result.tool_calls] == ["rain in Oslo"]

    async def inside_a_loop() -> Any:
        return pipeline_ex.invoke(prompt="x", provider="mock", tools=[async_weather], mock_response=reply)

    with pytest.warns(RuntimeWarning, match=r"invoke\(\) was called inside a running event loop"):
        result = asyncio.run(inside_a_loop())
    assert [c.result for c in result.tool_calls] == ["rain in Oslo"]


def test_legacy_and_callback_handlers_see_only_what_they_know() -> None:
    legacy: list[Any] = []
    dones: list[Any] = []
    reply = {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}], "text": "Rain."}
    with pytest.warns(DeprecationWarning, match="legacy tuple handler"):
        handlers = [pipeline_ex.legacy_handler(legacy.append), pipeline_ex.CallbackHandler(on_done=dones.append)]
    pipeline_ex.invoke(prompt="x", provider="mock", tools=[weather], mock_response=reply, on_event=handlers)
    assert [kind for kind, _ in legacy] == ["chunk", "complete"]
    assert [type(d).__name__ for d in dones] == ["Done"]


# -- structured output -------------------------------------------------------------------------------


class City(BaseModel):
    """A city (the output schema of a test)."""

    name: str
    country: str
    population: int


def test_a_mock_structured_step_streams_partials_and_validates(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    reply = '{"name": "Oslo", "country": "Norway", "population": 709000}'
    chunks = [reply[i : i + 7] for i in range(0, len(reply), 7)]
    result = pipeline_ex.invoke(
        prompt="Oslo", provider="mock", output_schema=City, mock_response=chunks, on_event=recorder
    )
    recorder.assert_complete()
    assert result.data == {"name": "Oslo", "country": "Norway", "population": 709000}
    assert result.done.response.data == result.data
    partials = [e.data for e in recorder.events if isinstance(e, Partial)]
    assert partials[-1] == result.data
    assert len(partials) >= 4
    for before, after in itertools.pairwise(partials):
        for key, value in before.items():
            assert key in after
            if isinstance(value, str):
                assert after[key].startswith(value)
            else:
                assert after[key] == value


def test_a_reply_that_never_matches_fails_with_type_schema_after_the_retries() -> None:
    recorder = StreamingRecorder()
    with pytest.raises(pipeline_ex.StructuredOutputError, match="after 3 attempts") as caught:
        pipeline_ex.invoke(
            prompt="x",
            provider="mock",
            output_schema=City,
            mock_response='{"name": "Oslo"}',
            schema_retries=2,
            on_event=recorder,
        )
    done = recorder.events[-1]
    assert isinstance(done, Done) and done is caught.value.done
    assert done.error is not None and done.error.type == "schema"
    assert "country" in done.error.message and done.response.finish_reason == "error"
    assert done.response.data is None
    assert [e.attempt for e in recorder.events if isinstance(e, Partial)][-1] == 3
    assert done.response.text == '{"name": "Oslo"}' * 3


EXTRACT = """\
workflow:
  name: extract
  defaults: {provider: mock}
  steps:
    - id: city
      prompt: "Oslo"
      output_schema: {model: "test_conversation:City"}
    - id: line
      prompt: "{{ steps.city.data.name }} is in {{ steps.city.data.country }}"
"""


def test_later_steps_read_the_validated_value_as_steps_id_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    recorder = StreamingRecorder()
    result = run(parse_workflow(EXTRACT), mock=True, on_event=recorder)
    city = result.steps["city"].data
    assert City.model_validate(city)
    assert result.steps["line"].text == f"Mock reply to: {city['name']} is in {city['country']}"


def test_the_structured_example_loads_and_its_schema_is_sent_to_the_model(openai_server: OpenAISSEServer) -> None:
    reply = '{"name": "Lisbon", "country": "Portugal", "population": 545000}'
    openai_server.script(pieces=(reply[:20], reply[20:]))
    loaded = pipeline_ex.load_workflow(str(ROOT / "workflows" / "extract_city.yaml"))
    schema = loaded.steps[0].output_schema.json_schema
    result = pipeline_ex.invoke(prompt="Lisbon", output_schema=schema, **openai(openai_server))
    assert result.data == json.loads(reply)
    sent = openai_server.requests[-1].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema


def test_an_async_structured_step_validates_too() -> None:
    async def main() -> Any:
        return await pipeline_ex.ainvoke(prompt="x", provider="mock", output_schema=City)

    result = asyncio.run(main())
    assert City.model_validate(result.data)


def test_the_example_workflows_declare_what_the_readme_says(tmp_path: Path) -> None:
    chat = pipeline_ex.load_workflow(str(ROOT / "workflows" / "chat.yaml"), mock=True)
    assert chat.workflow.inputs["history"].type == "list"
    calculator = pipeline_ex.load_workflow(str(ROOT / "workflows" / "calculator.yaml"), mock=True)
    assert [tool_name(t) for t in calculator.steps[0].tools] == ["evaluate"]
