"""Cassettes of steps with tools: the request records the tools, and a recording replays round by round.

A tool step's cassette holds its tool-call deltas, `ToolCall` and `ToolResult` events with their times.
Read back, it is one round per call of the model; `CassetteChatGenerator` is called once per round and
replays that round's chunks (the same boundaries), ending a round that called tools with finish reason
"tool_calls" and a reply carrying the recorded calls. End to end, tool steps on the mock provider are
recorded and replayed (in-process, and with `pipeline-ex run` subprocesses) and their event streams compared.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from haystack.components.generators.utils import _convert_streaming_chunks_to_chat_message
from haystack.dataclasses import ChatMessage, StreamingChunk
from haystack.dataclasses import ToolCall as HaystackToolCall
from haystack.tools import Tool

import pipeline_ex
from pipeline_ex import StreamingRecorder, ToolRoundsError
from pipeline_ex.events import Delta, Done, ErrorInfo, Partial, Response, StepEvent, ToolCall, ToolResult, Usage
from pipeline_ex.events import ToolCall as ToolCallEvent
from pipeline_ex.llm.providers.mock import MockReply
from pipeline_ex.modes.cassette import Cassette, CassetteError, RecordedStep
from pipeline_ex.modes.cassette_generator import CassetteChatGenerator, ReplayedProviderError
from pipeline_ex.modes.recording import record_line
from pipeline_ex.modes.request import StepRequest
from pipeline_ex.modes.session import TestSession as Session
from pipeline_ex.modes.session import using_session

pytestmark = pytest.mark.streaming
ROOT = Path(__file__).resolve().parent.parent

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
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].meta["usage"]["total_tokens"] == 29
    expected = [
        HaystackToolCall(tool_name="weather", arguments={"city": "Paris"}, id="c1"),
        HaystackToolCall(tool_name="clock", arguments={}, id="c2"),
    ]
    assert reply.tool_calls == expected and reply.text == "Let me check."
    assert _convert_streaming_chunks_to_chat_message(chunks).tool_calls == expected

    chunks, reply = replay(generator, messages_after(reply.tool_calls))
    assert [c.content for c in chunks[:-1]] == ["Sunny ", "at ", "nine."]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].meta["usage"] is None, "the total came first"
    assert reply.text == "Sunny at nine." and not reply.tool_calls and reply.meta["finish_reason"] == "stop"

    # each call replays the next round (a repair adds a user message, so the conversation cannot tell)
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
    events.fragments(0, "c3", "weather", '{"city', '": "Oslo"}')  # past the limit: no ToolCall event
    events.done("", "error", ErrorInfo(type="tool_rounds", message="the model still called tools"))
    recording = record(tmp_path / "tape.jsonl", events, request())
    assert [[c.id for c in r.tool_calls] for r in recording.rounds] == [["c1"], ["c2"], ["c3"]]
    assert recording.rounds[2].tool_calls[0].arguments == {"city": "Oslo"}, "put together from its fragments"
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


# -- end to end: record a tool step on the mock provider, replay it -------------------------------------

FORECAST: dict[str, Any] = {"result": "sunny", "sleep": 0.0, "calls": 0}
"""What the `forecast` tool answers, how long it takes, and how often it ran."""


@pytest.fixture(autouse=True)
def fresh_forecast() -> None:
    FORECAST.update(result="sunny", sleep=0.0, calls=0)


def forecast(city: str, days: int = 1) -> str:
    """The forecast for a city.

    :param city: the city
    :param days: how many days ahead
    """
    FORECAST["calls"] += 1
    time.sleep(FORECAST["sleep"])
    return f"{city}: {FORECAST['result']} for {days} days"


def local_time(zone: str) -> str:
    """The time in a time zone."""
    return f"09:00 in {zone}"


SCRIPT = MockReply(
    tool_calls=[
        [
            {"name": "forecast", "arguments": {"city": "Paris", "days": 2}},
            {"name": "local_time", "arguments": {"zone": "CET"}},
        ],
        [{"name": "forecast", "arguments": {"city": "Rome"}, "id": "rome"}],
    ],
    text="Sunny in Paris, and in Rome.",
)


def run_step(mode: str, path: Path, *, speed: float = 0, run: str = "sync", **options: Any) -> StreamingRecorder:
    """One tool step on the mock provider, in record or replay mode; the events it streamed."""
    recorder = StreamingRecorder()
    session = Session(mode=mode, cassette=Cassette(path, record=mode == "record"), replay_speed=speed)  # type: ignore[arg-type]
    arguments: dict[str, Any] = {
        "prompt": "Weather in Paris and Rome?",
        "system": "Use the tools.",
        "provider": "mock",
        "tools": [forecast, local_time],
        "mock_response": SCRIPT,
        "on_event": recorder,
        "step": "ask",
        **options,
    }
    with using_session(session):
        if run == "sync":
            pipeline_ex.invoke(**arguments)
        else:
            asyncio.run(pipeline_ex.ainvoke(**arguments))
    recorder.assert_complete()
    return recorder


def stream(recorder: StreamingRecorder) -> list[dict[str, Any]]:
    """The events as dicts, without what differs between two runs of one request (run id and timings)."""
    shown = []
    for event in recorder.events:
        data = event.model_dump(mode="json", exclude={"run_id", "ttft_ms", "duration_ms"})
        shown.append(data)
    return shown


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_replayed_tool_step_streams_what_was_recorded_and_runs_its_tools_again(tmp_path: Path, run: str) -> None:
    path = tmp_path / "tape.jsonl"
    recorded = run_step("record", path, run=run)
    assert FORECAST["calls"] == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    types = [line["event"]["type"] for line in lines]
    assert types.count("tool_call") == 3 and types.count("tool_result") == 3 and types[-1] == "done"

    replayed = run_step("replay", path, run=run)
    assert FORECAST["calls"] == 4, "the tools really ran again"
    assert stream(replayed) == stream(recorded)
    fragments = [d for d in replayed.deltas if d.kind == "tool_call"]
    assert {(d.tool_call_id, d.tool_name) for d in fragments} == {
        ("call_1_0", "forecast"),
        ("call_1_1", "local_time"),
        ("rome", "forecast"),
    }
    done = replayed.done
    assert done is not None and done.response.text == "Sunny in Paris, and in Rome."
    assert [c.result for c in done.response.tool_calls] == [
        "Paris: sunny for 2 days",
        "09:00 in CET",
        "Rome: sunny for 1 days",
    ]


def test_the_tools_answer_anew_on_replay_and_the_model_keeps_its_recorded_side(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    recorded = run_step("record", path)
    FORECAST["result"] = "rainy"
    replayed = run_step("replay", path)
    results = [e.result for e in replayed.events if isinstance(e, ToolResult)]
    assert results == ["Paris: rainy for 2 days", "09:00 in CET", "Rome: rainy for 1 days"]
    assert replayed.text == recorded.text == "Sunny in Paris, and in Rome."
    model_side = [e for e in stream(replayed) if e["type"] != "tool_result" and e["type"] != "done"]
    assert model_side == [e for e in stream(recorded) if e["type"] != "tool_result" and e["type"] != "done"]


def test_replay_keeps_the_models_timing_but_not_the_time_the_tools_took(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    FORECAST["sleep"] = 0.25
    recorded = run_step("record", path, delay_ms=15)
    FORECAST["sleep"] = 0.0
    replayed = run_step("replay", path, speed=1, delay_ms=15)

    def gaps(recorder: StreamingRecorder) -> tuple[float, float]:
        """The time the first round's deltas took, and the time from the first round's last result on."""
        events, offsets = recorder.events, recorder.offsets_ms
        first_call = next(i for i, e in enumerate(events) if isinstance(e, ToolCallEvent))
        second_round = next(i for i, e in enumerate(events) if i > first_call and isinstance(e, Delta))
        assert isinstance(events[second_round - 1], ToolResult)
        return offsets[first_call - 1] - offsets[0], offsets[second_round] - offsets[second_round - 1]

    streaming_before, after_tools_before = gaps(recorded)
    streaming_now, after_tools_now = gaps(replayed)
    assert streaming_now >= 0.8 * streaming_before >= 0.8 * 10 * 15
    assert after_tools_now >= 0.8 * after_tools_before and after_tools_now < 200, "no pause for the tool's 250 ms"
    total_before = recorded.offsets_ms[-1]
    assert replayed.offsets_ms[-1] < total_before - 2 * 250 * 0.8, "two slow forecasts are not replayed as pauses"


def test_a_step_that_reached_its_round_limit_fails_the_same_way_on_replay(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    looping = MockReply(tool_calls=[{"name": "forecast", "arguments": {"city": "Oslo"}}])
    dones = []
    for mode in ("record", "replay"):
        with pytest.raises(ToolRoundsError) as caught:
            run_step(mode, path, mock_response=looping, max_tool_rounds=2)
        assert caught.value.done is not None
        dones.append(caught.value.done)
    recorded = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert [e["type"] for e in recorded].count("tool_call") == 2, "the third round's calls never ran"
    for done in dones:
        assert done.error is not None and done.error.type == "tool_rounds"
        assert [c.id for c in done.response.tool_calls] == ["call_1_0", "call_2_0"]
    assert dones[0].response.model_dump(exclude={"meta"}) == dones[1].response.model_dump(exclude={"meta"})


def test_a_step_without_streaming_replays_its_rounds(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    recorded = run_step("record", path, stream=False)
    assert not [d for d in recorded.deltas if d.kind == "tool_call"], "nothing streamed but the reply"
    replayed = run_step("replay", path, stream=False)
    assert stream(replayed) == stream(recorded)
    assert [type(e).__name__ for e in replayed.events].count("ToolCall") == 3


def test_a_cassette_recorded_before_tools_existed_still_replays(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    with using_session(Session(mode="record", cassette=Cassette(path, record=True))):
        pipeline_ex.invoke(prompt="hi", provider="mock", step="plain")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "tools" not in lines[-1]["request"]
    with using_session(Session(mode="replay", cassette=Cassette(path, record=False), replay_speed=0)):
        assert pipeline_ex.invoke(prompt="hi", provider="mock", step="plain").text == "Mock reply to: hi"


def test_a_cassette_recorded_with_other_tools_does_not_replay(tmp_path: Path) -> None:
    path = tmp_path / "tape.jsonl"
    run_step("record", path)
    assert "tools" in json.loads(path.read_text().splitlines()[-1])["request"]
    with pytest.raises(CassetteError, match="tools: forecast, local_time when recorded, forecast now"):
        run_step("replay", path, tools=[forecast])


WORKFLOW = """
workflow:
  name: calculator
  inputs:
    question: {default: "What is 12.5% of 2,480, plus 17?"}
  steps:
    - id: answer
      provider: openai
      model: gpt-4o-mini
      prompt: "{{ inputs.question }}"
      tools: [tools.calculator:evaluate]
      stream_handler: jsonl
      stream_handler_options: {path: EVENTS}
      mock_response:
        tool_calls: [{name: evaluate, arguments: {expression: "2480 * 0.125 + 17"}}]
        text: "12.5% of 2,480, plus 17, is 327."
"""


def pipeline_ex_run(folder: Path, mode: str, *args: str) -> list[dict[str, Any]]:
    """`pipeline-ex run calculator.yaml ARGS` with PIPELINE_TEST_MODE=mode; the events its step streamed."""
    events = folder / f"{mode}.jsonl"
    (folder / "calculator.yaml").write_text(WORKFLOW.replace("EVENTS", str(events)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_TEST_MODE=mode, PIPELINE_CASSETTE_DIR=str(folder / "cassettes"), PIPELINE_REPLAY_SPEED="0")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pipeline-ex")), "run", "calculator.yaml", *args],
        cwd=folder,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in events.read_text().splitlines()]


def test_a_mock_run_recorded_from_the_command_line_replays_for_the_real_provider(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    recorded = pipeline_ex_run(tmp_path, "record", "--mock")
    replayed = pipeline_ex_run(tmp_path, "replay")  # the workflow's provider is openai: no call is made

    def model_side(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in ("run_id", "ttft_ms", "duration_ms")} for e in events]

    assert model_side(replayed) == model_side(recorded)
    assert [e["type"] for e in recorded if e["type"] != "delta"] == ["tool_call", "tool_result", "done"]
    assert sum(1 for e in recorded if e.get("kind") == "tool_call") > 3
    done = recorded[-1]
    assert done["response"]["text"] == "12.5% of 2,480, plus 17, is 327."
    assert done["response"]["tool_calls"][0]["result"] == "327"


@pytest.mark.live  # the recording calls a loopback OpenAI server
def test_a_structured_reply_that_needed_a_repair_replays_attempt_by_attempt(tmp_path: Path) -> None:
    from openai_sse_server import OpenAISSEServer, StreamScript

    path = tmp_path / "repaired.jsonl"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    server = OpenAISSEServer().start()
    try:
        server.queue(StreamScript.replying('{"n": ', '"seven"}'), StreamScript.replying('{"n": ', "7}"))
        arguments: dict[str, Any] = {
            "prompt": "A number, please.",
            "provider": "openai",
            "api_base_url": server.url,
            "output_schema": schema,
            "step": "number",
        }
        recorded, replayed = StreamingRecorder(), StreamingRecorder()
        with using_session(Session(mode="record", cassette=Cassette(path, record=True))):
            first = pipeline_ex.invoke(on_event=recorded, **arguments)
        requests = len(server.requests)
    finally:
        server.stop()
    with using_session(Session(mode="replay", cassette=Cassette(path, record=False), replay_speed=0)):
        second = pipeline_ex.invoke(on_event=replayed, **arguments)
    assert requests == 2
    assert first.data == second.data == {"n": 7}
    assert [e.content for e in replayed.events if isinstance(e, Delta)] == [
        e.content for e in recorded.events if isinstance(e, Delta)
    ]
    assert [e.attempt for e in replayed.events if isinstance(e, Partial)][-1] == 2
    assert second.response.usage == first.response.usage


def test_a_cassette_made_for_another_output_schema_does_not_replay(tmp_path: Path) -> None:
    path = tmp_path / "schema.jsonl"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    arguments: dict[str, Any] = {"prompt": "A number.", "provider": "mock", "step": "number"}
    with using_session(Session(mode="record", cassette=Cassette(path, record=True))):
        pipeline_ex.invoke(output_schema=schema, **arguments)
    other = {**schema, "required": []}
    with (
        using_session(Session(mode="replay", cassette=Cassette(path, record=False), replay_speed=0)),
        pytest.raises(CassetteError, match="output_schema"),
    ):
        pipeline_ex.invoke(output_schema=other, **arguments)
