"""Tool calls on every provider's wire format, over real loopback HTTP, through the real SDKs.

The loopback servers (`openai_sse_server.py`, `provider_servers.py`) stream tool calls the way each API
does: OpenAI `delta.tool_calls` fragments, Anthropic `tool_use` blocks with `input_json_delta`, Ollama
`message.tool_calls` lines, Gemini `functionCall` parts. The first part of this file calls the haystack
chat generators directly, built as pipeline_ex builds them, and checks what haystack makes of each format:
the `StreamingChunk.tool_calls` deltas (index, id, name, argument fragments), the reply's `ToolCall`s, its
finish reason, and what the SDK sent back in the next round (the tool definitions, the assistant's calls
and the tool results). Where an integration mishandles a format, the test pins what it does, so the day it
changes is noticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from haystack.dataclasses import ChatMessage, StreamingChunk, ToolCall
from haystack.tools import Tool, create_tool_from_function
from openai_sse_server import OpenAISSEServer, StreamScript
from provider_servers import (
    AnthropicScript,
    GeminiScript,
    OllamaScript,
    ProviderServer,
    ScriptedToolCall,
)

from pipeline_ex.llm.providers import BuiltGenerator, build_generator

pytestmark = [
    pytest.mark.streaming,
    # google-genai's async client subclasses aiohttp.ClientSession, which aiohttp deprecates
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning"),
]

Mode = Literal["sync", "async"]
ProviderName = Literal["openai", "anthropic", "ollama", "gemini"]
MODES: tuple[Mode, ...] = ("sync", "async")


# -- tools ---------------------------------------------------------------------------------------------


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    :param city: the city's name.
    :param unit: celsius or fahrenheit.
    """
    return f"sunny, 21 degrees {unit} in {city}"


def get_time(zone: str) -> str:
    """Get the current time in a time zone.

    :param zone: an IANA time zone name.
    """
    return f"12:00 in {zone}"


WEATHER_TOOL = create_tool_from_function(get_weather)
TIME_TOOL = create_tool_from_function(get_time)
TOOLS: list[Tool] = [WEATHER_TOOL, TIME_TOOL]

PARIS = ScriptedToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, fragments=4)
TOKYO = ScriptedToolCall("get_time", {"zone": "Asia/Tokyo"}, fragments=3)
LIMA = ScriptedToolCall("get_weather", {"city": "Lima"}, fragments=2)


# -- servers and generators ----------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One provider's loopback server and the options that point a pipeline_ex-built generator at it."""

    name: ProviderName
    server: OpenAISSEServer | ProviderServer[Any]
    options: dict[str, Any]

    def build(self) -> BuiltGenerator:
        """A generator built the way a step builds it."""
        return build_generator(self.name, None, self.options)

    def calling(self, *calls: ScriptedToolCall, **changes: Any) -> Any:
        """This format's script for a reply that calls `calls`."""
        return SCRIPTS[self.name].calling(*calls, **changes)

    def replying(self, *pieces: str, **changes: Any) -> Any:
        """This format's script for a text reply."""
        return SCRIPTS[self.name].replying(*pieces, **changes)


SCRIPTS: dict[ProviderName, Any] = {
    "openai": StreamScript,
    "anthropic": AnthropicScript,
    "ollama": OllamaScript,
    "gemini": GeminiScript,
}


def make_endpoint(name: ProviderName, request: pytest.FixtureRequest) -> Endpoint:
    """Start `name`'s server (through its conftest fixture, which also sets the SDK's variables)."""
    if name == "openai":
        server = request.getfixturevalue("openai_server")
        return Endpoint(name, server, {"api_base_url": server.url, "max_retries": 0})
    if name == "ollama":
        server = request.getfixturevalue("ollama_server")
        return Endpoint(name, server, {"api_base_url": server.url})
    server = request.getfixturevalue(f"{name}_server")
    return Endpoint(name, server, {"max_retries": 0})


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Callable[[ProviderName], Endpoint]:
    """Start a provider's loopback server by name."""
    return lambda name: make_endpoint(name, request)


@dataclass
class Generation:
    """What one generator run gave: the streamed chunks and the reply."""

    chunks: list[StreamingChunk]
    reply: ChatMessage

    @property
    def deltas(self) -> list[tuple[int, str | None, str | None, str | None]]:
        """Every `ToolCallDelta` streamed, as (index, id, tool_name, arguments)."""
        return [(d.index, d.id, d.tool_name, d.arguments) for c in self.chunks for d in c.tool_calls or []]

    def arguments_by_index(self) -> dict[int, str]:
        """The streamed argument fragments of each call index, joined."""
        joined: dict[int, str] = {}
        for index, _, _, arguments in self.deltas:
            joined[index] = joined.get(index, "") + (arguments or "")
        return joined

    @property
    def text(self) -> str:
        """The streamed text content, joined."""
        return "".join(c.content for c in self.chunks)


def generate(
    built: BuiltGenerator,
    messages: list[ChatMessage],
    mode: Mode,
    *,
    tools: list[Tool] | None = None,
    stream: bool = True,
) -> Generation:
    """Run the generator once, in `run` or `run_async`, collecting the chunks its streaming callback gets."""
    chunks: list[StreamingChunk] = []
    kwargs: dict[str, Any] = {"messages": messages, "tools": TOOLS if tools is None else tools}
    if built.generation_kwargs:
        kwargs["generation_kwargs"] = built.generation_kwargs
    if mode == "sync":
        if stream:
            kwargs["streaming_callback"] = chunks.append
        result = built.generator.run(**kwargs)
    else:

        async def collect(chunk: StreamingChunk) -> None:
            chunks.append(chunk)

        if stream:
            kwargs["streaming_callback"] = collect
        result = asyncio.run(built.generator.run_async(**kwargs))
    replies = result["replies"]
    assert len(replies) == 1, replies
    return Generation(chunks, replies[0])


def ask(text: str = "What is the weather in Paris and the time in Tokyo?") -> list[ChatMessage]:
    """The first round's messages."""
    return [ChatMessage.from_system("Use the tools."), ChatMessage.from_user(text)]


def reply_calls(reply: ChatMessage) -> list[tuple[str | None, str, dict[str, Any]]]:
    """The reply's tool calls as (id, name, arguments)."""
    return [(c.id, c.tool_name, c.arguments) for c in reply.tool_calls]


def assert_fragments_join(generation: Generation, calls: tuple[ScriptedToolCall, ...]) -> None:
    """Each call index's streamed argument fragments join to exactly that call's arguments JSON."""
    assert generation.arguments_by_index() == {i: call.arguments_json for i, call in enumerate(calls)}


# -- OpenAI chat completions ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_openai_streams_each_call_as_a_head_then_argument_fragments(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Sequential calls: the head fragment has index, id and name; the argument fragments only the index."""
    openai = endpoint("openai")
    openai.server.queue(openai.calling(PARIS, TOKYO))

    generation = generate(openai.build(), ask(), mode)

    expected: list[tuple[int, str | None, str | None, str | None]] = []
    for index, call in enumerate((PARIS, TOKYO)):
        expected.append((index, f"call_1_{index}", call.name, None))  # the head's empty "" arguments become None
        expected += [(index, None, None, fragment) for fragment in call.argument_fragments()]
    assert generation.deltas == expected
    assert len(PARIS.argument_fragments()) == 4
    # one delta per chunk; the chunk's own index is its call's index, and `start` marks the head
    tool_chunks = [c for c in generation.chunks if c.tool_calls]
    assert [c.index for c in tool_chunks] == [d[0] for d in expected]
    assert [c.start for c in tool_chunks] == [d[2] is not None for d in expected]
    assert_fragments_join(generation, (PARIS, TOKYO))
    assert reply_calls(generation.reply) == [
        ("call_1_0", "get_weather", PARIS.arguments),
        ("call_1_1", "get_time", TOKYO.arguments),
    ]
    assert generation.reply.text is None
    assert generation.reply.meta["finish_reason"] == "tool_calls"
    assert [c.finish_reason for c in generation.chunks if c.finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("mode", MODES)
def test_openai_interleaved_parallel_calls_are_kept_apart_by_index(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Fragments of three parallel calls alternating by index still join to three whole calls, in order."""
    openai = endpoint("openai")
    openai.server.queue(openai.calling(PARIS, TOKYO, LIMA, tool_call_style="interleaved"))

    generation = generate(openai.build(), ask(), mode)

    indexes = [d[0] for d in generation.deltas]
    assert indexes[:6] == [0, 1, 2, 0, 1, 2]  # the heads, then the first fragment of each
    assert indexes != sorted(indexes)
    assert_fragments_join(generation, (PARIS, TOKYO, LIMA))
    assert reply_calls(generation.reply) == [
        ("call_1_0", "get_weather", PARIS.arguments),
        ("call_1_1", "get_time", TOKYO.arguments),
        ("call_1_2", "get_weather", LIMA.arguments),
    ]
    assert generation.reply.meta["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("mode", MODES)
def test_openai_compatible_server_sending_whole_calls_in_one_chunk(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """All calls whole in one delta (Ollama's and llama.cpp's OpenAI endpoints): one chunk, several deltas."""
    openai = endpoint("openai")
    openai.server.queue(openai.calling(PARIS, TOKYO, tool_call_style="one_chunk"))

    generation = generate(openai.build(), ask(), mode)

    tool_chunks = [c for c in generation.chunks if c.tool_calls]
    assert len(tool_chunks) == 1
    assert tool_chunks[0].index == 0  # haystack gives the chunk the first delta's index
    assert generation.deltas == [
        (0, "call_1_0", "get_weather", PARIS.arguments_json),
        (1, "call_1_1", "get_time", TOKYO.arguments_json),
    ]
    assert [c[1] for c in reply_calls(generation.reply)] == ["get_weather", "get_time"]
    assert generation.reply.meta["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("mode", MODES)
def test_openai_text_before_the_calls_stays_text(mode: Mode, endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """Content pieces before the tool calls stream as text chunks and form the reply's text."""
    openai = endpoint("openai")
    openai.server.queue(openai.calling(PARIS, pieces=["Let me ", "check."]))

    generation = generate(openai.build(), ask(), mode)

    assert generation.text == "Let me check."
    assert generation.reply.text == "Let me check."
    assert reply_calls(generation.reply) == [("call_1_0", "get_weather", PARIS.arguments)]


# -- Anthropic Messages --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_anthropic_streams_tool_use_blocks_after_the_text_block(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Text block 0, then one tool_use block per call: the block start has id and name, then partial JSON."""
    anthropic = endpoint("anthropic")
    anthropic.server.queue(anthropic.calling(PARIS, TOKYO, pieces=["Let me ", "check."]))

    generation = generate(anthropic.build(), ask(), mode)

    expected: list[tuple[int, str | None, str | None, str | None]] = []
    for index, call in enumerate((PARIS, TOKYO)):
        expected.append((index, f"toolu_1_{index}", call.name, None))
        expected.append((index, None, None, ""))  # the API's empty first input_json_delta comes through as ""
        expected += [(index, None, None, fragment) for fragment in call.argument_fragments()]
    assert generation.deltas == expected
    # the delta index counts tool_use blocks from 0; the chunk index is the content block's (text is block 0)
    assert [c.index for c in generation.chunks if c.tool_calls] == [d[0] + 1 for d in expected]
    assert_fragments_join(generation, (PARIS, TOKYO))
    assert generation.text == "Let me check."
    assert generation.reply.text == "Let me check."
    assert reply_calls(generation.reply) == [
        ("toolu_1_0", "get_weather", PARIS.arguments),
        ("toolu_1_1", "get_time", TOKYO.arguments),
    ]
    assert generation.reply.meta["finish_reason"] == "tool_calls"  # mapped from stop_reason "tool_use"
    assert [c.finish_reason for c in generation.chunks if c.finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("mode", MODES)
def test_anthropic_calls_without_text_start_at_block_zero(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """With no text the first tool_use block is content block 0."""
    anthropic = endpoint("anthropic")
    anthropic.server.queue(anthropic.calling(LIMA, empty_json_delta=False))

    generation = generate(anthropic.build(), ask(), mode)

    assert generation.deltas[0] == (0, "toolu_1_0", "get_weather", None)
    assert [c.index for c in generation.chunks if c.tool_calls] == [0] * (1 + len(LIMA.argument_fragments()))
    assert generation.text == ""
    assert reply_calls(generation.reply) == [("toolu_1_0", "get_weather", LIMA.arguments)]


# -- Ollama /api/chat ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_ollama_streams_each_call_whole_with_a_one_based_index(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """One NDJSON line per call: one delta each, arguments whole, no id, index counting lines from 1."""
    ollama = endpoint("ollama")
    ollama.server.queue(ollama.calling(PARIS, TOKYO, tool_call_lines="each"))

    generation = generate(ollama.build(), ask(), mode)

    assert generation.deltas == [
        (1, None, "get_weather", PARIS.arguments_json),
        (2, None, "get_time", TOKYO.arguments_json),
    ]
    assert reply_calls(generation.reply) == [
        (None, "get_weather", PARIS.arguments),
        (None, "get_time", TOKYO.arguments),
    ]
    # Ollama reports done_reason "stop" after tool calls, and haystack keeps it
    assert generation.reply.meta["finish_reason"] == "stop"


@pytest.mark.parametrize("mode", MODES)
def test_ollama_drops_an_id_the_server_sends(mode: Mode, endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """The ollama SDK's ToolCall model has no `id` field, so an id on the wire never reaches haystack."""
    ollama = endpoint("ollama")
    with_id = ScriptedToolCall("get_time", {"zone": "UTC"}, id="call_from_ollama")
    ollama.server.queue(ollama.calling(with_id))

    generation = generate(ollama.build(), ask(), mode)

    assert ollama.server.wait_for_response().tool_call_ids == ["call_from_ollama"]
    assert generation.deltas == [(1, None, "get_time", with_id.arguments_json)]
    assert reply_calls(generation.reply) == [(None, "get_time", {"zone": "UTC"})]


@pytest.mark.parametrize("mode", MODES)
def test_ollama_parallel_calls_on_one_line_collapse_into_one(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Pinned ollama-haystack 7.0.2 behaviour: calls sharing one line share one index and become one call.

    `_build_chunk` gives every call of a line the line's counter, and the reply keeps the first call's
    name with the last call's arguments: the other calls are lost without a warning.
    """
    ollama = endpoint("ollama")
    ollama.server.queue(ollama.calling(PARIS, TOKYO, tool_call_lines="one"))

    generation = generate(ollama.build(), ask(), mode)

    assert generation.deltas == [
        (1, None, "get_weather", PARIS.arguments_json),
        (1, None, "get_time", TOKYO.arguments_json),
    ]
    assert reply_calls(generation.reply) == [(None, "get_weather", TOKYO.arguments)]


# -- Gemini streamGenerateContent ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("finish_chunk", [False, True], ids=["finish-with-calls", "finish-own-chunk"])
def test_gemini_streams_function_calls_of_one_chunk_whole(
    mode: Mode, finish_chunk: bool, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """All functionCall parts in one chunk: one delta each, arguments whole, index by part, no id."""
    gemini = endpoint("gemini")
    gemini.server.queue(gemini.calling(PARIS, TOKYO, finish_chunk=finish_chunk))

    generation = generate(gemini.build(), ask(), mode)

    assert generation.deltas == [
        (0, None, "get_weather", PARIS.arguments_json),
        (1, None, "get_time", TOKYO.arguments_json),
    ]
    # the aggregated reply has id "" (not None): haystack's chunk merger starts every id as ""
    assert reply_calls(generation.reply) == [("", "get_weather", PARIS.arguments), ("", "get_time", TOKYO.arguments)]
    # Gemini says STOP; haystack remaps it to tool_calls, also when the finish comes in a chunk of its own
    assert generation.reply.meta["finish_reason"] == "tool_calls"
    assert [c.finish_reason for c in generation.chunks if c.finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("mode", MODES)
def test_gemini_keeps_a_function_call_id(mode: Mode, endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """A functionCall `id` (which the Developer API usually omits) becomes the delta's and the call's id."""
    gemini = endpoint("gemini")
    gemini.server.queue(gemini.calling(ScriptedToolCall("get_time", {"zone": "UTC"}, id="fc-1")))

    generation = generate(gemini.build(), ask(), mode)

    assert generation.deltas == [(0, "fc-1", "get_time", '{"zone": "UTC"}')]
    assert reply_calls(generation.reply) == [("fc-1", "get_time", {"zone": "UTC"})]


@pytest.mark.parametrize("mode", MODES)
def test_gemini_calls_in_separate_chunks_are_lost(mode: Mode, endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """Pinned google-genai-haystack 7.0.0 behaviour: calls in separate chunks all get index 0 and are dropped.

    The per-chunk part counter restarts at 0 in every chunk, so the merger concatenates the names
    ("get_weatherget_time") and the arguments (`{...}{...}`), fails to parse them, logs a warning and
    skips the call: the reply has no tool calls although its finish reason says tool_calls.
    """
    gemini = endpoint("gemini")
    gemini.server.queue(gemini.calling(PARIS, TOKYO, tool_call_chunks="each"))

    generation = generate(gemini.build(), ask(), mode)

    assert generation.deltas == [
        (0, None, "get_weather", PARIS.arguments_json),
        (0, None, "get_time", TOKYO.arguments_json),
    ]
    assert generation.reply.tool_calls == []
    assert generation.reply.meta["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("mode", MODES)
def test_gemini_text_in_the_chunk_of_the_calls_is_lost(
    mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Pinned google-genai-haystack 7.0.0 behaviour: a chunk with function calls streams no text.

    `StreamingChunk` may hold text or tool calls, not both, and the converter keeps the calls.
    """
    gemini = endpoint("gemini")
    gemini.server.queue(gemini.calling(PARIS, pieces=["Let me ", "check."], calls_with_last_piece=True))

    generation = generate(gemini.build(), ask(), mode)

    assert generation.text == "Let me "
    assert generation.reply.text == "Let me "
    assert reply_calls(generation.reply) == [("", "get_weather", PARIS.arguments)]


# -- unstreamed replies --------------------------------------------------------------------------------

UNSTREAMED_IDS: dict[ProviderName, tuple[str | None, str | None]] = {
    "openai": ("call_1_0", "call_1_1"),
    "anthropic": ("toolu_1_0", "toolu_1_1"),
    "ollama": (None, None),
    "gemini": (None, None),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama", "gemini"])
def test_unstreamed_reply_carries_the_calls(
    provider: ProviderName, mode: Mode, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Without a streaming callback the one JSON reply's calls become the reply's ToolCalls."""
    wire = endpoint(provider)
    wire.server.queue(wire.calling(PARIS, TOKYO))

    generation = generate(wire.build(), ask(), mode, stream=False)

    assert generation.chunks == []
    first, second = UNSTREAMED_IDS[provider]
    assert reply_calls(generation.reply) == [
        (first, "get_weather", PARIS.arguments),
        (second, "get_time", TOKYO.arguments),
    ]
    assert not wire.server.wait_for_response().stream


# -- what the SDK sends --------------------------------------------------------------------------------

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "default": "celsius"}},
    "required": ["city"],
}


def second_round(ids: tuple[str | None, str | None]) -> list[ChatMessage]:
    """Round 2: the question, the assistant's two calls, one result and one error result."""
    paris = ToolCall(tool_name="get_weather", arguments=PARIS.arguments, id=ids[0])
    tokyo = ToolCall(tool_name="get_time", arguments=TOKYO.arguments, id=ids[1])
    return [
        *ask(),
        ChatMessage.from_assistant(text="Checking.", tool_calls=[paris, tokyo]),
        ChatMessage.from_tool(get_weather("Paris"), origin=paris),
        ChatMessage.from_tool("ValueError: unknown zone", origin=tokyo, error=True),
    ]


def test_openai_request_carries_tools_calls_and_tool_messages(endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """`tools[].function.parameters`; the assistant's `tool_calls` with JSON-string arguments; `role: tool`."""
    openai = endpoint("openai")
    openai.server.queue(openai.replying("Done."))

    generation = generate(openai.build(), second_round(("call_a", "call_b")), "sync")

    assert generation.reply.text == "Done."
    body = openai.server.wait_for_response().body
    weather = body["tools"][0]
    assert weather["type"] == "function"
    assert weather["function"]["name"] == "get_weather"
    assert weather["function"]["parameters"] == WEATHER_SCHEMA
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assistant, *results = body["messages"][2:]
    assert assistant == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "type": "function",
                "id": "call_a",
                "function": {"name": "get_weather", "arguments": PARIS.arguments_json},
            },
            {"type": "function", "id": "call_b", "function": {"name": "get_time", "arguments": TOKYO.arguments_json}},
        ],
    }
    # the chat completions format has no error flag: an error result is just its text
    assert results == [
        {"role": "tool", "content": get_weather("Paris"), "tool_call_id": "call_a"},
        {"role": "tool", "content": "ValueError: unknown zone", "tool_call_id": "call_b"},
    ]


def test_anthropic_request_carries_tools_tool_use_and_tool_results(
    endpoint: Callable[[ProviderName], Endpoint],
) -> None:
    """`tools[].input_schema`; `tool_use` blocks; every result in one user turn of `tool_result` blocks."""
    anthropic = endpoint("anthropic")
    anthropic.server.queue(anthropic.replying("Done."))

    generate(anthropic.build(), second_round(("toolu_a", "toolu_b")), "sync")

    body = anthropic.server.wait_for_response().body
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"] == WEATHER_SCHEMA
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": PARIS.arguments},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": TOKYO.arguments},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_a",
                    "content": [{"type": "text", "text": get_weather("Paris")}],
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": [{"type": "text", "text": "ValueError: unknown zone"}],
                    "is_error": True,
                },
            ],
        },
    ]


def test_ollama_request_carries_tools_calls_and_tool_messages(endpoint: Callable[[ProviderName], Endpoint]) -> None:
    """`tools` in OpenAI's shape (without defaults); arguments as objects; `role: tool` with only content."""
    ollama = endpoint("ollama")
    ollama.server.queue(ollama.replying("Done."))

    generate(ollama.build(), second_round((None, None)), "sync")

    body = ollama.server.wait_for_response().body
    weather = body["tools"][0]
    assert weather["type"] == "function"
    assert weather["function"]["name"] == "get_weather"
    # the ollama SDK's Tool model has no `default`, so the default value is not sent
    assert weather["function"]["parameters"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    }
    assert body["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": PARIS.arguments}},
                {"function": {"name": "get_time", "arguments": TOKYO.arguments}},
            ],
        },
        # no id, no tool name, no error flag: Ollama matches results to calls by order
        {"role": "tool", "content": get_weather("Paris")},
        {"role": "tool", "content": "ValueError: unknown zone"},
    ]


def test_gemini_request_carries_function_declarations_calls_and_responses(
    endpoint: Callable[[ProviderName], Endpoint],
) -> None:
    """`tools[].functionDeclarations` (OpenAPI-style upper-case types); `functionCall` and `functionResponse`."""
    gemini = endpoint("gemini")
    gemini.server.queue(gemini.replying("Done."))

    generate(gemini.build(), second_round((None, None)), "sync")

    body = gemini.server.wait_for_response().body
    (tool,) = body["tools"]
    weather, time_ = tool["functionDeclarations"]
    assert (weather["name"], time_["name"]) == ("get_weather", "get_time")
    assert weather["parameters"] == {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}, "unit": {"type": "STRING", "default": "celsius"}},
        "required": ["city"],
    }
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": PARIS.arguments}},
                {"functionCall": {"name": "get_time", "args": TOKYO.arguments}},
            ],
        },
        # one user turn per result; the error flag is not sent, the result is wrapped in {"result": ...}
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": get_weather("Paris")}}}],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_time", "response": {"result": "ValueError: unknown zone"}}}],
        },
    ]


# -- several rounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama", "gemini"])
def test_queued_scripts_answer_one_round_each(
    provider: ProviderName, endpoint: Callable[[ProviderName], Endpoint]
) -> None:
    """Three requests get the three queued scripts in order, then the standing script answers."""
    wire = endpoint(provider)
    wire.server.queue(wire.calling(PARIS), wire.calling(TOKYO), wire.replying("All ", "done."))
    built = wire.build()

    first = generate(built, ask(), "sync")
    second = generate(built, ask(), "sync")
    third = generate(built, ask(), "sync")
    fourth = generate(built, ask(), "sync")

    assert [c[1] for c in reply_calls(first.reply)] == ["get_weather"]
    assert [c[1] for c in reply_calls(second.reply)] == ["get_time"]
    assert (third.reply.text, third.reply.tool_calls) == ("All done.", [])
    assert fourth.reply.text == "Hello, world!"
    assert wire.server.queued == 0
    assert [r.number for r in wire.server.requests] == [1, 2, 3, 4]
