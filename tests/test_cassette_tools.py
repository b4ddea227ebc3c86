"""Cassettes of steps with tools: the request records the tools, and a recording replays round by round.

A tool step's cassette holds its tool-call deltas, `ToolCall` and `ToolResult` events with their times.
Read back, it is one round per call of the model; `CassetteChatGenerator` is called once per round and
replays that round's chunks (the same boundaries), ending a round that called tools with finish reason
"tool_calls" and a reply carrying the recorded calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from haystack.components.generators.utils import _convert_streaming_chunks_to_chat_message
from haystack.dataclasses import ChatMessage, StreamingChunk
from haystack.dataclasses import ToolCall as HaystackToolCall
from haystack.tools import Tool

from pipeline_ex.events import Delta, Done, ErrorInfo, Partial, Response, StepEvent, ToolCall, ToolResult, Usage
from pipeline_ex.modes.cassette import Cassette, CassetteError, RecordedStep
from pipeline_ex.modes.cassette_generator import CassetteChatGenerator, ReplayedProviderError
from pipeline_ex.modes.recording import record_line
from pipeline_ex.modes.request import StepRequest

pytestmark = pytest.mark.streaming

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL = Tool(name="weather", description="The forecast for a city.", parameters=WEATHER_PARAMETERS, function=str)
CLOCK = {"name": "clock", "description": "The time now.", "parameters": {"type": "object", "properties": {}}}


def request(**changes: Any) -> StepRequest:
    arguments: dict[str, Any] = {
        "provider": "mock",
        "model": "m",
        "messages": [("user", "Weather in Paris?")],
        "options": {},
        "tools": [WEATHER_TOOL],
    }
    arguments.update(changes)
    return StepRequest.of("ask", **arguments)


# -- the request ----------------------------------------------------------------------------------------


def test_the_request_records_each_tool_and_matches_only_the_same_tools() -> None:
    recorded = request()
    assert recorded.to_json()["tools"] == [
        {"name": "weather", "description": "The forecast for a city.", "parameters": WEATHER_PARAMETERS}
    ]
    as_mapping = {"name": "weather", "description": "The forecast for a city.", "parameters": WEATHER_PARAMETERS}
    assert request(tools=[as_mapping]).matches(recorded)
    assert StepRequest.from_json(json.loads(json.dumps(recorded.to_json()))).matches(recorded)

    more = request(tools=[WEATHER_TOOL, CLOCK])
    assert not more.matches(recorded)
    assert more.differences(recorded) == ["tools: weather when recorded, weather, clock now"]
    assert request(tools=[]).differences(recorded) == ["tools: weather when recorded, none now"]

    changed = {**as_mapping, "parameters": {**WEATHER_PARAMETERS, "required": ["city", "days"]}}
    (difference,) = request(tools=[changed]).differences(recorded)
    assert difference == "tool 'weather' parameters:\n" + '    -     "city"\n    +     "city",\n    +     "days"'
    (difference,) = request(tools=[{**as_mapping, "description": "Rain or shine."}]).differences(recorded)
    assert difference == "tool 'weather' description:\n    - The forecast for a city.\n    + Rain or shine."


def test_a_request_without_tools_reads_and_writes_as_before() -> None:
    old = {"step": "s", "provider": "openai", "model": None, "messages": [], "options": {"temperature": 0.2}}
    read = StepRequest.from_json(old)
    assert read.tools == [] and read.to_json() == old
    plain = StepRequest.of("s", provider="openai", model=None, messages=[], options={"temperature": 0.2})
    assert plain.matches(read) and "tools" not in plain.to_json()


def test_the_messages_of_a_messages_step_are_recorded_as_given() -> None:
    history = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
    ]
    recorded = request(messages=history)
    assert recorded.messages == history
    now = request(messages=[*history[:3], {"role": "user", "content": "Time?"}])
    assert now.differences(recorded) == ["prompt:\n    - Weather?\n    + Time?"]
    with pytest.raises(ValueError, match="give it a role and a content"):
        request(messages=[{"role": "user"}])


def test_a_tool_without_a_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="has no name; a tool is given as a haystack Tool or as"):
        request(tools=[{"description": "nameless"}])


# -- recordings read back as rounds ---------------------------------------------------------------------


class Events:
    """The events one step run emits, numbered as a run numbers them, each 10 ms after the one before."""

    def __init__(self, step: str = "ask", run_id: str = "r1") -> None:
        self.step, self.run_id, self.seq, self.now = step, run_id, 0, 0.0
        self.timed: list[tuple[float, StepEvent]] = []

    def _next(self) -> dict[str, Any]:
        self.seq += 1
        return {"step": self.step, "run_id": self.run_id, "seq": self.seq}

    def _add(self, event: StepEvent) -> None:
        self.now += 10
        self.timed.append((self.now, event))

    def wait(self, ms: float) -> Events:
        self.now += ms
        return self

    def text(self, *pieces: str) -> Events:
        for piece in pieces:
            self._add(Delta(content=piece, **self._next()))
        return self

    def fragments(self, index: int, call_id: str, name: str, *pieces: str) -> Events:
        for piece in pieces:
            fields = {"index": index, "tool_call_id": call_id, "tool_name": name}
            self._add(Delta(content=piece, kind="tool_call", **fields, **self._next()))
        return self

    def call(self, call_id: str, name: str, **arguments: Any) -> Events:
        self._add(ToolCall(id=call_id, name=name, arguments=arguments, **self._next()))
        return self

    def result(self, call_id: str, name: str, result: str) -> Events:
        self._add(ToolResult(id=call_id, name=name, result=result, **self._next()))
        return self

    def partial(self, data: Any) -> Events:
        self._add(Partial(data=data, **self._next()))
        return self

    def done(self, text: str, finish: str = "stop", error: ErrorInfo | None = None) -> Events:
        response = Response(
            text=text,
            model="m",
            provider="mock",
            finish_reason=finish,  # type: ignore[arg-type]
            usage=Usage(input_tokens=20, output_tokens=9, total_tokens=29),
            meta={"finish_reason_raw": finish} if error is None else {},
        )
        self._add(Done(response=response, error=error, ttft_ms=3.0, duration_ms=self.now, **self._next()))
        return self


def record(path: Path, events: Events, asked: StepRequest) -> RecordedStep:
    """Write the events as a cassette (the request on the Done line) and read back the recording."""
    with open(path, "w", encoding="utf-8") as out:
        for offset, event in events.timed:
            out.write(record_line(offset, event, asked.to_json() if isinstance(event, Done) else None))
    return Cassette(path, record=False).next_recording(asked)


def two_rounds() -> Events:
    """Round 1 calls two tools (their fragments streamed), round 2 answers; a Partial in between."""
    events = Events()
    events.text("Let me ", "check.")
    events.fragments(0, "c1", "weather", '{"', "city", '": "', "Paris", '"}')
    events.fragments(1, "c2", "clock", "{}")
    events.call("c1", "weather", city="Paris").call("c2", "clock")
    events.wait(500).result("c1", "weather", "sunny").result("c2", "clock", "09:00")  # the tools took 500 ms
    events.wait(30).text("Sunny ", "at ", "nine.").partial({"x": 1})
    return events.done("Let me check.Sunny at nine.")


def test_a_recording_is_read_back_as_one_round_per_model_call(tmp_path: Path) -> None:
    recording = record(tmp_path / "tape.jsonl", two_rounds(), request())
    first, second = recording.rounds
    assert [d.content for _, d in first.deltas] == ["Let me ", "check.", '{"', "city", '": "', "Paris", '"}', "{}"]
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [
        ("c1", "weather", {"city": "Paris"}),
        ("c2", "clock", {}),
    ]
    assert [r.result for r in first.tool_results] == ["sunny", "09:00"]
    assert [d.content for _, d in second.deltas] == ["Sunny ", "at ", "nine."] and not second.tool_calls
    assert [pause for pause, _ in first.deltas] == [3.0] + [10.0] * 7, "the time to first token, then the gaps"
    assert [pause for pause, _ in second.deltas] == [40.0, 10.0, 10.0], "round 2 waits from the last tool result"
    assert len(recording.deltas) == 11


def messages_after(*rounds: list[HaystackToolCall]) -> list[ChatMessage]:
    """The conversation a step sends after the given rounds of tool calls (each with a result)."""
    messages = [ChatMessage.from_user("Weather in Paris?")]
    for calls in rounds:
        messages.append(ChatMessage.from_assistant(tool_calls=calls))
        messages.extend(ChatMessage.from_tool("replayed result", origin=c) for c in calls)
    return messages


def replay(generator: CassetteChatGenerator, messages: list[ChatMessage]) -> tuple[list[StreamingChunk], ChatMessage]:
    chunks: list[StreamingChunk] = []
    reply = generator.run(messages=messages, streaming_callback=chunks.append, tools=[WEATHER_TOOL])["replies"][0]
    return chunks, reply


def test_each_call_replays_its_round_with_the_recorded_boundaries_and_calls(tmp_path: Path) -> None:
    generator = CassetteChatGenerator(record(tmp_path / "tape.jsonl", two_rounds(), request()), speed=0)
    chunks, reply = replay(generator, messages_after())
    assert [c.content for c in chunks[:2]] == ["Let me ", "check."]
    fragments = [c.tool_calls[0] for c in chunks if c.tool_calls]
    assert [f.arguments for f in fragments] == ['{"', "city", '": "', "Paris", '"}', "{}"]
    assert [(f.index, f.id, f.tool_name) for f in fragments if f.id] == [(0, "c1", "weather"), (1, "c2", "clock")]
    assert all(f.id is None and f.tool_name is None for f in fragments[1:5])
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].meta["usage"] is None
    expected = [
        HaystackToolCall(tool_name="weather", arguments={"city": "Paris"}, id="c1"),
        HaystackToolCall(tool_name="clock", arguments={}, id="c2"),
    ]
    assert reply.tool_calls == expected and reply.text == "Let me check."
    assert _convert_streaming_chunks_to_chat_message(chunks).tool_calls == expected

    chunks, reply = replay(generator, messages_after(reply.tool_calls))
    assert [c.content for c in chunks[:-1]] == ["Sunny ", "at ", "nine."]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].meta["usage"]["total_tokens"] == 29
    assert reply.text == "Sunny at nine." and not reply.tool_calls and reply.meta["finish_reason"] == "stop"

    chunks, reply = replay(generator, messages_after(expected))  # the same round again (a retry): the same
    assert reply.text == "Sunny at nine."
    with pytest.raises(CassetteError, match=r"asked its model for round 3 of its tool loop, but the recording has 2"):
        replay(generator, messages_after(expected, expected))


def test_rounds_without_deltas_split_at_the_next_call_after_results(tmp_path: Path) -> None:
    events = Events().call("a", "weather", city="Paris").result("a", "weather", "sunny")
    events.call("b", "weather", city="Rome").result("b", "weather", "rain").text("Sunny and rain.")
    rounds = record(tmp_path / "tape.jsonl", events.done("Sunny and rain."), request()).rounds
    assert [[c.id for c in r.tool_calls] for r in rounds] == [["a"], ["b"], []]
    assert [d.content for _, d in rounds[2].deltas] == ["Sunny and rain."]


def test_a_model_failure_after_a_tool_round_replays_in_the_next_round(tmp_path: Path) -> None:
    events = Events().fragments(0, "a", "weather", '{"city": "Paris"}').call("a", "weather", city="Paris")
    events.result("a", "weather", "sunny")
    events.done("", "error", ErrorInfo(type="provider", message="server went away", exception="x.Boom"))
    recording = record(tmp_path / "tape.jsonl", events, request())
    assert len(recording.rounds) == 2 and not recording.rounds[1].deltas
    generator = CassetteChatGenerator(recording, speed=0)
    _, reply = replay(generator, messages_after())
    assert [c.id for c in reply.tool_calls] == ["a"]
    with pytest.raises(ReplayedProviderError, match="server went away"):
        replay(generator, messages_after(reply.tool_calls))


def test_a_step_that_ran_out_of_tool_rounds_replays_its_last_calls(tmp_path: Path) -> None:
    events = Events()
    for n in (1, 2):
        events.fragments(0, f"c{n}", "weather", "{}").call(f"c{n}", "weather").result(f"c{n}", "weather", "?")
    events.fragments(0, "c3", "weather", "{}").call("c3", "weather")
    events.done("", "error", ErrorInfo(type="tool_rounds", message="the model still called tools"))
    recording = record(tmp_path / "tape.jsonl", events, request())
    assert [[c.id for c in r.tool_calls] for r in recording.rounds] == [["c1"], ["c2"], ["c3"]]
    generator = CassetteChatGenerator(recording, speed=0)
    done_rounds: list[list[HaystackToolCall]] = []
    for expected in ("c1", "c2", "c3"):
        chunks, reply = replay(generator, messages_after(*done_rounds))
        assert [c.id for c in reply.tool_calls] == [expected] and chunks[-1].finish_reason == "tool_calls"
        done_rounds.append(reply.tool_calls)


def test_a_cassette_with_lifecycle_events_is_refused(tmp_path: Path) -> None:
    from pipeline_ex.events import StepStarted

    path = tmp_path / "tape.jsonl"
    cassette = Cassette(path, record=True)
    cassette.append(StepStarted(step="ask", run_id="r", seq=1, kind="llm"))  # type: ignore[arg-type]
    with pytest.raises(CassetteError, match="record 1 is a step_started event; a cassette holds only the events"):
        Cassette(path, record=False).next_recording(request())
