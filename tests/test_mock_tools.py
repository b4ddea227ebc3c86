"""The mock provider's scripted tool calls: `ScriptedChatGenerator` rounds, `llm_mock.reply(tool_calls=...)`.

The generator is driven the way a step's tool loop drives any haystack chat generator: once per round,
with the conversation so far (after a round, the assistant message with its tool calls and one
`ChatMessage.from_tool` per result are appended) and the step's tools. The chunks it streams are checked
against haystack's own reassembly of a streamed reply (`_convert_streaming_chunks_to_chat_message`, what
haystack's OpenAI generator returns), so they have the shape a real provider streams. End to end, the
step's own tool loop runs on the mock provider: through `invoke`/`ainvoke` with a `MockReply`, through the
`llm_mock` fixture, and in a fresh project that uses the fixture with the example calculator tool.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from haystack.components.generators.utils import _convert_streaming_chunks_to_chat_message
from haystack.dataclasses import ChatMessage, StreamingChunk, ToolCall
from haystack.tools import Tool

import pipeline_ex
from pipeline_ex import Done, StreamingRecorder, ToolResult, ToolRoundsError
from pipeline_ex import ToolCall as ToolCallEvent
from pipeline_ex.llm.providers import build_generator
from pipeline_ex.llm.providers.mock import MockReply, MockToolCall
from pipeline_ex.modes.conversation import tool_round, user_prompt
from pipeline_ex.modes.mock_generator import (
    MockProviderError,
    MockScriptError,
    ScriptedChatGenerator,
    argument_fragments,
)
from pipeline_ex.modes.mock_script import MockScript

pytestmark = pytest.mark.streaming
pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

WEATHER = {"name": "weather", "arguments": {"city": "Paris", "days": 2}}
TIME = {"name": "clock", "arguments": {"zone": "Europe/Paris"}}


def weather(city: str, days: int = 1) -> str:
    """The forecast for a city."""
    return f"{city}: sunny for {days} days"


def clock(zone: str) -> str:
    """The time in a time zone."""
    return f"09:00 in {zone}"


WEATHER_TOOL = Tool(
    name="weather",
    description="The forecast for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
    function=weather,
)


def call(generator: ScriptedChatGenerator, messages: list[ChatMessage]) -> tuple[list[StreamingChunk], ChatMessage]:
    """One round: the chunks streamed and the reply, with the step's tools passed as haystack passes them."""
    chunks: list[StreamingChunk] = []
    reply = generator.run(messages=messages, streaming_callback=chunks.append, tools=[WEATHER_TOOL])["replies"][0]
    return chunks, reply


def with_results(messages: list[ChatMessage], reply: ChatMessage, results: list[str]) -> list[ChatMessage]:
    """The conversation after a tool round: the reply that called tools, then one tool message per call."""
    tools = [ChatMessage.from_tool(result, origin=c) for c, result in zip(reply.tool_calls, results, strict=True)]
    return [*messages, reply, *tools]


# -- one round, then the text ---------------------------------------------------------------------------


def test_a_round_streams_each_call_as_a_provider_does_then_the_text_follows_the_results() -> None:
    generator = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER], text="Sunny in Paris."))
    messages = [ChatMessage.from_system("You help."), ChatMessage.from_user("Weather in Paris?")]

    chunks, reply = call(generator, messages)
    fragments = [c.tool_calls[0] for c in chunks[:-1] if c.tool_calls]
    assert len(fragments) == len(chunks) - 1 >= 4, "several argument fragments, then the final chunk"
    first, *rest = fragments
    assert (first.index, first.id, first.tool_name) == (0, "call_1_0", "weather") and chunks[0].start
    assert all((f.index, f.id, f.tool_name) == (0, None, None) for f in rest), "id and name come once, first"
    assert json.loads("".join(f.arguments or "" for f in fragments)) == WEATHER["arguments"]
    assert all(c.content == "" and c.index == 0 for c in chunks[:-1])
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].meta["finish_reason"] == "tool_calls"
    assert reply.tool_calls == [ToolCall(tool_name="weather", arguments={"city": "Paris", "days": 2}, id="call_1_0")]
    assert reply.text is None and reply.meta["finish_reason"] == "tool_calls"
    reassembled = _convert_streaming_chunks_to_chat_message(chunks)
    assert reassembled.tool_calls == reply.tool_calls and reassembled.meta["finish_reason"] == "tool_calls"

    after = with_results(messages, reply, [weather("Paris", 2)])
    assert tool_round(after) == 1
    chunks, reply = call(generator, after)
    assert [c.content for c in chunks[:-1]] == ["Sunny ", "in ", "Paris."]
    assert not any(c.tool_calls for c in chunks)
    assert chunks[-1].finish_reason == "stop" and reply.text == "Sunny in Paris." and not reply.tool_calls


def test_calls_made_side_by_side_stream_one_after_the_other_with_their_positions() -> None:
    explicit = {**TIME, "id": "toolu_clock"}
    generator = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER, explicit], text="Done."))
    chunks, reply = call(generator, [ChatMessage.from_user("Weather and time in Paris?")])
    indexes = [c.tool_calls[0].index for c in chunks if c.tool_calls]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    starts = [c.tool_calls[0] for c in chunks if c.start]
    assert [(s.index, s.id, s.tool_name) for s in starts] == [(0, "call_1_0", "weather"), (1, "toolu_clock", "clock")]
    assert [(c.tool_name, c.id) for c in reply.tool_calls] == [("weather", "call_1_0"), ("clock", "toolu_clock")]
    assert _convert_streaming_chunks_to_chat_message(chunks).tool_calls == reply.tool_calls


def test_argument_fragments_join_back_to_the_json() -> None:
    arguments = {"query": "weather in São Paulo", "n": 3, "tags": ["a", "b"], "nested": {"x": None}}
    fragments = argument_fragments(arguments)
    assert len(fragments) > 10 and all(fragments)
    assert json.loads("".join(fragments)) == arguments
    assert argument_fragments({}) == ["{}"]


# -- several rounds, and past the last one ------------------------------------------------------------


def test_rounds_follow_one_another_then_the_text() -> None:
    generator = ScriptedChatGenerator("It is sunny.", tool_calls=[[TIME], [WEATHER]])
    messages = [ChatMessage.from_user("Plan my day")]
    _, first = call(generator, messages)
    assert [(c.tool_name, c.id) for c in first.tool_calls] == [("clock", "call_1_0")]
    messages = with_results(messages, first, ["09:00"])
    _, second = call(generator, messages)
    assert [(c.tool_name, c.id, c.arguments) for c in second.tool_calls] == [
        ("weather", "call_2_0", WEATHER["arguments"])
    ]
    messages = with_results(messages, second, ["sunny"])
    _, final = call(generator, messages)
    assert final.text == "It is sunny." and not final.tool_calls
    _, again = call(generator, messages)
    assert again.text == "It is sunny.", "a call past the rounds answers the text, every time"


def test_tool_calls_without_text_repeat_the_last_round_forever() -> None:
    generator = ScriptedChatGenerator(MockReply(tool_calls=[[TIME], [WEATHER]]))
    messages = [ChatMessage.from_user("Loop")]
    names = []
    for _ in range(6):
        chunks, reply = call(generator, messages)
        assert chunks[-1].finish_reason == "tool_calls"
        names.append([(c.tool_name, c.id) for c in reply.tool_calls])
        messages = with_results(messages, reply, ["ok"])
    assert names == [[("clock", "call_1_0")]] + [[("weather", f"call_{k}_0")] for k in range(2, 7)]


def test_the_round_counts_only_tool_calls_after_the_last_user_message() -> None:
    earlier_call = ToolCall(tool_name="weather", arguments={"city": "Oslo"}, id="old")
    history = [
        ChatMessage.from_user("Weather in Oslo?"),
        ChatMessage.from_assistant(tool_calls=[earlier_call]),
        ChatMessage.from_tool("rain", origin=earlier_call),
        ChatMessage.from_assistant("Rain in Oslo."),
        ChatMessage.from_user("And in Paris?"),
    ]
    assert tool_round(history) == 0
    generator = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER], text="Sunny."))
    _, reply = call(generator, history)
    assert [c.id for c in reply.tool_calls] == ["call_1_0"]


def test_a_derived_reply_answers_the_user_prompt_not_a_tool_result_or_earlier_text() -> None:
    generator = ScriptedChatGenerator(tool_calls=[WEATHER, TIME])
    messages = [ChatMessage.from_user("What should I wear today")]
    _, reply = call(generator, messages)
    messages = with_results(messages, reply, ["The forecast says heavy rain", "It is 9 in the morning"])
    messages.insert(1, ChatMessage.from_assistant("Let me look that up."))
    assert user_prompt(messages) == "What should I wear today"
    generator = ScriptedChatGenerator(tool_calls=[[WEATHER, TIME]], response="Take an umbrella.")
    assert call(generator, messages)[1].text == "Take an umbrella."
    derived = ScriptedChatGenerator()
    assert call(derived, messages)[1].text == "Mock reply to: What should I wear today"


# -- usage, faults, pacing and async ------------------------------------------------------------------


def test_usage_counts_words_of_each_call_with_the_tool_calls_and_results_it_sends() -> None:
    generator = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER], text="Sunny two days."))
    messages = [ChatMessage.from_user("Weather in Paris?")]
    _, first = call(generator, messages)
    # 3 prompt words; the call is its name and its JSON arguments: weather {"city": "Paris", "days": 2}
    assert first.meta["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    messages = with_results(messages, first, ["Paris: sunny for 2 days"])
    _, final = call(generator, messages)
    # 3 prompt words + the call sent back (5) + its result (5); the reply has 3 words
    assert final.meta["usage"] == {"prompt_tokens": 13, "completion_tokens": 3, "total_tokens": 16}
    fixed = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER], text="x"), usage={"prompt_tokens": 7})
    assert call(fixed, [ChatMessage.from_user("q")])[1].meta["usage"] == {"prompt_tokens": 7}
    assert call(ScriptedChatGenerator(tool_calls=[WEATHER], usage=None), messages[:1])[1].meta["usage"] is None


@pytest.mark.parametrize("error_after", [0, 1, 3])
def test_error_after_fails_a_tool_round_part_way(error_after: int) -> None:
    generator = ScriptedChatGenerator(MockReply(tool_calls=[WEATHER], text="Sunny."), error_after=error_after)
    chunks: list[StreamingChunk] = []
    with pytest.raises(MockProviderError, match=f"after {error_after} chunks"):
        generator.run(messages=[ChatMessage.from_user("q")], streaming_callback=chunks.append)
    assert len(chunks) == error_after and all(c.tool_calls for c in chunks)


def test_run_async_streams_the_same_chunks_to_an_async_callback_with_its_pauses() -> None:
    script = MockReply(tool_calls=[WEATHER], text="Sunny.")
    messages = [ChatMessage.from_user("Weather in Paris?")]
    sync_chunks, sync_reply = call(ScriptedChatGenerator(script), messages)
    generator = ScriptedChatGenerator(script, delay_ms=5, yield_to_loop=True)
    received: list[StreamingChunk] = []

    async def on_chunk(chunk: StreamingChunk) -> None:
        received.append(chunk)

    async def go() -> tuple[ChatMessage, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await generator.run_async(messages=messages, streaming_callback=on_chunk, tools=[WEATHER_TOOL])
        return result["replies"][0], loop.time() - started

    reply, elapsed = asyncio.run(go())
    assert reply.tool_calls == sync_reply.tool_calls
    assert [(c.tool_calls, c.finish_reason) for c in received] == [(c.tool_calls, c.finish_reason) for c in sync_chunks]
    assert elapsed >= (len(received) - 1) * 0.005 * 0.9


def test_a_plain_reply_streams_as_before() -> None:
    chunks, reply = call(ScriptedChatGenerator(["Hel", "lo"], finish_reason="length"), [ChatMessage.from_user("hi")])
    assert [c.content for c in chunks] == ["Hel", "lo", ""] and chunks[-1].finish_reason == "length"
    assert reply.text == "Hello" and reply.meta["finish_reason"] == "length"


# -- bad scripts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool_calls", "message"),
    [
        (
            [{"arguments": {}}],
            r"tool call 1 of round 1 \(\{'arguments': \{\}\}\) is not a valid tool call: name",
        ),
        ([WEATHER, {"name": "x", "args": {}}], "tool call 2 of round 1 .* unknown key 'args'"),
        ([[WEATHER], [{"name": "x", "arguments": "city=Paris"}]], "tool call 1 of round 2 .* arguments:"),
        ([[WEATHER], []], "round 2 of the scripted tool_calls is empty"),
        ("weather", "tool_calls is 'weather'; give one round as a list of calls"),
        ([WEATHER, [TIME]], r"tool call 2 of round 1 is \[.*\], not a tool call"),
    ],
    ids=["no name", "unknown key", "arguments not a mapping", "empty round", "a string", "mixed"],
)
def test_a_bad_script_is_a_clear_error_naming_the_call(tool_calls: Any, message: str) -> None:
    with pytest.raises(MockScriptError, match=message):
        ScriptedChatGenerator(tool_calls=tool_calls)
    with pytest.raises(MockScriptError, match=message):
        MockScript().reply("text", tool_calls=tool_calls)


def test_tool_calls_given_twice_are_refused() -> None:
    with pytest.raises(MockScriptError, match="either in the MockReply or as tool_calls="):
        ScriptedChatGenerator(MockReply(tool_calls=[WEATHER]), tool_calls=[TIME])


# -- llm_mock.reply and the mock provider ---------------------------------------------------------------


def test_a_scripted_reply_with_tool_calls_builds_a_mock_that_plays_them() -> None:
    script = MockScript()
    script.reply("Paris is sunny.", tool_calls=[WEATHER, MockToolCall(name="clock", id="c1")], match="Paris")
    script.reply("Nothing to look up.")
    picked = script.pick("What is the weather in Paris?")
    assert picked is not None and script.pick("Hello") is not None
    assert script.prompts == ["What is the weather in Paris?", "Hello"]
    options = picked.provider_options()
    assert options["mock_response"] == MockReply(
        tool_calls=[
            [MockToolCall(name="weather", arguments=WEATHER["arguments"]), MockToolCall(name="clock", id="c1")]
        ],
        text="Paris is sunny.",
    )
    built = build_generator("mock", None, options)
    messages = [ChatMessage.from_user("What is the weather in Paris?")]
    _, reply = call(built.generator, messages)
    assert [(c.tool_name, c.id) for c in reply.tool_calls] == [("weather", "call_1_0"), ("clock", "c1")]
    _, final = call(built.generator, with_results(messages, reply, ["sunny", "09:00"]))
    assert final.text == "Paris is sunny."


def test_a_reply_with_rounds_and_no_text_keeps_calling_and_one_without_tools_is_unchanged() -> None:
    script = MockScript()
    looping = script.reply(tool_calls=[[TIME], [WEATHER]])
    assert looping.response is None and len(looping.tool_calls) == 2
    assert looping.provider_options()["mock_response"] == MockReply(tool_calls=[[TIME], [WEATHER]])
    plain = script.reply(["a ", "b"], usage={"prompt_tokens": 1}, delay_ms=2)
    assert plain.provider_options() == {
        "mock_response": ["a ", "b"],
        "usage": {"prompt_tokens": 1},
        "finish_reason": "stop",
        "error_after": None,
        "delay_ms": 2,
    }
    with pytest.raises(MockScriptError, match="is not a reply"):
        script.reply(["a", 3])  # type: ignore[list-item]


def test_the_mock_provider_takes_a_mock_reply_as_a_mapping() -> None:
    built = build_generator("mock", "m", {"mock_response": {"tool_calls": [WEATHER], "text": "ok"}, "usage": None})
    chunks, reply = call(built.generator, [ChatMessage.from_user("q")])
    assert reply.tool_calls[0].tool_name == "weather" and chunks[0].meta == {"model": "m"}


# -- end to end: the step's tool loop on the mock provider ----------------------------------------------


def tool_calls_and_results(recorder: StreamingRecorder) -> list[tuple[str, str, str]]:
    """The ToolCall and ToolResult events in order, as (type, id, name or result)."""
    found = []
    for event in recorder.events:
        if isinstance(event, ToolCallEvent):
            found.append(("call", event.id, event.name))
        elif isinstance(event, ToolResult):
            found.append(("result", event.id, event.result))
    return found


@pytest.mark.parametrize("run", ["sync", "async"])
def test_invoke_streams_the_tool_loop_of_a_scripted_reply(run: str) -> None:
    recorder = StreamingRecorder()
    script = MockReply(tool_calls=[WEATHER, TIME], text="Sunny in Paris at nine.")
    arguments: dict[str, Any] = {
        "prompt": "Weather and time in Paris?",
        "provider": "mock",
        "tools": [weather, clock],
        "mock_response": script,
        "on_event": recorder,
    }
    result = pipeline_ex.invoke(**arguments) if run == "sync" else asyncio.run(pipeline_ex.ainvoke(**arguments))
    recorder.assert_complete()
    fragments = [d for d in recorder.deltas if d.kind == "tool_call"]
    by_call = {(d.index, d.tool_call_id, d.tool_name): "" for d in fragments}
    for d in fragments:
        by_call[(d.index, d.tool_call_id, d.tool_name)] += d.content
    assert list(by_call) == [(0, "call_1_0", "weather"), (1, "call_1_1", "clock")]
    assert [json.loads(text) for text in by_call.values()] == [WEATHER["arguments"], TIME["arguments"]]
    assert sum(1 for d in fragments if d.index == 0) >= 4, "a call streams in several fragments"
    assert tool_calls_and_results(recorder) == [
        ("call", "call_1_0", "weather"),
        ("call", "call_1_1", "clock"),
        ("result", "call_1_0", "Paris: sunny for 2 days"),
        ("result", "call_1_1", "09:00 in Europe/Paris"),
    ]
    dones = [e for e in recorder.events if isinstance(e, Done)]
    assert len(dones) == 1 and dones[0] is recorder.events[-1]
    response = result.response
    assert result.text == "Sunny in Paris at nine." == recorder.text and response.finish_reason == "stop"
    assert [(c.id, c.name, c.arguments, c.result) for c in response.tool_calls] == [
        ("call_1_0", "weather", WEATHER["arguments"], "Paris: sunny for 2 days"),
        ("call_1_1", "clock", TIME["arguments"], "09:00 in Europe/Paris"),
    ]
    assert response.usage is not None and response.usage.input_tokens is not None
    assert response.usage.input_tokens > 2 * len(["Weather", "and", "time", "in", "Paris?"]), "both calls counted"


def test_a_script_without_text_reaches_the_round_limit_with_one_done() -> None:
    recorder = StreamingRecorder()
    with pytest.raises(ToolRoundsError) as caught:
        pipeline_ex.invoke(
            prompt="Loop forever",
            provider="mock",
            tools=[weather],
            max_tool_rounds=3,
            mock_response=MockReply(tool_calls=[WEATHER]),
            on_event=recorder,
        )
    recorder.assert_complete()
    done = recorder.done
    assert done is not None and done == caught.value.done and done.error is not None
    assert done.error.type == "tool_rounds" and done.response.finish_reason == "tool_calls"
    calls = [e.id for e in recorder.events if isinstance(e, ToolCallEvent)]
    assert calls[:3] == ["call_1_0", "call_2_0", "call_3_0"]
    assert [e.id for e in recorder.events if isinstance(e, ToolResult)] == calls[:3], "three rounds ran"


def test_a_failing_tool_is_an_error_result_and_the_scripted_text_still_follows() -> None:
    def broken(city: str) -> str:
        """Always fails."""
        raise RuntimeError(f"no data for {city}")

    recorder = StreamingRecorder()
    result = pipeline_ex.invoke(
        prompt="Weather?",
        provider="mock",
        tools=[broken],
        mock_response=MockReply(tool_calls=[{"name": "broken", "arguments": {"city": "Oslo"}}], text="Sorry."),
        on_event=recorder,
    )
    recorder.assert_complete()
    (failed,) = [e for e in recorder.events if isinstance(e, ToolResult)]
    assert failed.error and "no data for Oslo" in failed.result
    assert result.text == "Sorry." and result.response.tool_calls[0].error


def test_llm_mock_scripts_tool_calls_and_matches_the_user_prompt_in_every_round(
    llm_mock: MockScript, stream_recorder: StreamingRecorder
) -> None:
    llm_mock.reply("Take sunglasses.", tool_calls=[[WEATHER], [TIME]], match="Paris")
    llm_mock.reply("This answers a tool result, which it must not.", match="sunny")
    result = pipeline_ex.invoke(prompt="What to wear in Paris?", provider="openai", tools=[weather, clock])
    stream_recorder.assert_complete()
    assert result.text == "Take sunglasses."
    assert [c.name for c in result.response.tool_calls] == ["weather", "clock"]
    assert [c.result for c in result.response.tool_calls] == ["Paris: sunny for 2 days", "09:00 in Europe/Paris"]
    assert llm_mock.prompts == ["What to wear in Paris?"], "one pick per step run, from its prompt"


PLUGIN_PROJECT_TEST = """
import pytest

from pipeline_ex import Delta, Done, ToolCall, ToolResult, run


@pytest.mark.streaming
def test_the_agent_calls_the_calculator(llm_mock, stream_recorder):
    llm_mock.reply(
        "It is 327.",
        tool_calls=[{"name": "evaluate", "arguments": {"expression": "2480 * 0.125 + 17"}, "id": "calc"}],
        match="2,480",
    )
    result = run("calculator.yaml")
    stream_recorder.assert_complete()
    events = stream_recorder.by_step["answer"]
    assert [type(e).__name__ for e in events if not isinstance(e, Delta)] == ["ToolCall", "ToolResult", "Done"]
    fragments = [d for d in events if isinstance(d, Delta) and d.kind == "tool_call"]
    assert len(fragments) > 3 and {(d.tool_call_id, d.tool_name) for d in fragments} == {("calc", "evaluate")}
    (tool_result,) = [e for e in events if isinstance(e, ToolResult)]
    assert tool_result.result == "327" and not tool_result.error
    assert result.steps["answer"].text == "It is 327."
    assert llm_mock.prompts == ["What is 12.5% of 2,480, plus 17?"]
"""

CALCULATOR_WORKFLOW = """
workflow:
  name: calculator
  inputs:
    question: {default: "What is 12.5% of 2,480, plus 17?"}
  steps:
    - id: answer
      provider: openai
      prompt: "{{ inputs.question }}"
      tools: [tools.calculator:evaluate]
"""


def test_a_fresh_project_scripts_tool_calls_with_the_llm_mock_fixture(pytester: pytest.Pytester) -> None:
    shutil.copytree(ROOT / "tools", pytester.path / "tools")  # the example calculator tool
    pytester.makefile(".yaml", calculator=CALCULATOR_WORKFLOW)
    pytester.makepyfile(test_calculator=PLUGIN_PROJECT_TEST)
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
