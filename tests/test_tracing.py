"""OpenTelemetry spans of runs, steps, LLM calls and tools, checked with the SDK's in-memory exporter.

The global tracer provider can be set once per process: this module sets one SDK provider with an
in-memory exporter for its tests (cleared before each) and resets the API's globals afterwards, as
OpenTelemetry's own test utilities do, so the modules that run later are not traced. What must hold
without an SDK runs in subprocesses; the worker test runs a real Redis and a real `pipeline-ex worker`
whose SDK (set up by a `sitecustomize` module) writes its spans to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_sse_server import OpenAISSEServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import pipeline_ex
from pipeline_ex import Done, StepError
from pipeline_ex.workflow.iterate import astream

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"


def _reset_trace_globals() -> None:
    """Forget the global tracer provider (what `opentelemetry.test.globals_test.reset_trace_globals` does)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()


@pytest.fixture(scope="module")
def module_exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_trace_globals()


@pytest.fixture
def exporter(module_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    module_exporter.clear()
    return module_exporter


class Tree:
    """The finished spans of one test, by name and parent."""

    def __init__(self, spans: tuple[ReadableSpan, ...]) -> None:
        self.spans = list(spans)
        self.by_id = {span.context.span_id: span for span in spans}

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent is not None else None

    def parent_name(self, span: ReadableSpan) -> str | None:
        parent = self.parent(span)
        return parent.name if parent is not None else None

    def chat_of(self, path: str) -> ReadableSpan:
        found = [s for s in self.spans if s.name.startswith("chat") and s.attributes["pipeline_ex.step.path"] == path]
        assert len(found) == 1, path
        return found[0]


def _dones(events: list[Any]) -> dict[str, Done]:
    return {event.step: event for event in events if isinstance(event, Done)}


@pytest.mark.streaming
def test_a_run_has_a_span_tree_of_run_steps_groups_and_chat_calls(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    events: list[Any] = []
    result = pipeline_ex.run(WORKFLOWS / "fan_out_report.yaml", mock=True, on_event=events.append, output_dir=tmp_path)
    tree = Tree(exporter.get_finished_spans())

    run = tree.one("invoke_workflow fan_out_report")
    assert run.parent is None and run.kind == SpanKind.INTERNAL
    assert run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.attributes["gen_ai.workflow.name"] == "fan_out_report"
    assert run.attributes["pipeline_ex.run.id"] == result.run_id
    assert run.attributes["pipeline_ex.run.status"] == "ok"
    assert {span.context.trace_id for span in tree.spans} == {run.context.trace_id}

    expected_parents = {
        "step outline": "invoke_workflow fan_out_report",
        "step views": "invoke_workflow fan_out_report",
        "step pros": "step views",
        "step cons": "step views",
        "step sections": "invoke_workflow fan_out_report",
        "step sections[0].section": "step sections",
        "step sections[1].section": "step sections",
        "step sections[2].section": "step sections",
        "step summary": "invoke_workflow fan_out_report",
    }
    for name, parent in expected_parents.items():
        span = tree.one(name)
        assert tree.parent_name(span) == parent, name
        assert span.attributes["pipeline_ex.step.status"] == "ok"
    assert tree.one("step views").attributes["pipeline_ex.step.kind"] == "parallel"
    assert tree.one("step sections").attributes["pipeline_ex.step.kind"] == "for_each"

    dones = _dones(events)
    assert len(tree.named("chat mock")) == len(dones) == 7
    for path in dones:
        chat = tree.chat_of(path)
        assert tree.parent_name(chat) == f"step {path}"  # each LLM call under its own step, none crossed
        assert chat.kind == SpanKind.CLIENT


def _group_of(path: str) -> str | None:
    """The path of the group a step path is in (`refine[1].critique` -> `refine`, `appendix.poem` -> `appendix`)."""
    head, dot, _ = path.rpartition(".")
    if not dot:
        return None
    return head[: head.rindex("[")] if head.endswith("]") else head


@pytest.mark.streaming
@pytest.mark.parametrize("name", ["refine_loop", "with_appendix"])
def test_loop_iterations_and_nested_workflow_steps_are_children_of_their_group(
    exporter: InMemorySpanExporter, tmp_path: Path, name: str
) -> None:
    events: list[Any] = []
    pipeline_ex.run(WORKFLOWS / f"{name}.yaml", mock=True, on_event=events.append, output_dir=tmp_path)
    tree = Tree(exporter.get_finished_spans())
    steps = [span for span in tree.spans if span.name.startswith("step ")]
    nested = [span for span in steps if _group_of(str(span.attributes["pipeline_ex.step.path"])) is not None]
    assert nested, [span.name for span in steps]
    (run,) = [span for span in tree.spans if span.parent is None]
    assert run.name.startswith("invoke_workflow ")
    for span in steps:
        group = _group_of(str(span.attributes["pipeline_ex.step.path"]))
        assert tree.parent_name(span) == (f"step {group}" if group is not None else run.name), span.name
    for path in _dones(events):
        assert tree.parent(tree.chat_of(path)) is tree.one(f"step {path}")


@pytest.mark.streaming
def test_chat_spans_carry_the_gen_ai_attributes_of_the_steps_done_events(exporter: InMemorySpanExporter) -> None:
    events: list[Any] = []
    pipeline_ex.run(WORKFLOWS / "multi_step.yaml", mock=True, on_event=events.append)
    tree = Tree(exporter.get_finished_spans())
    dones = _dones(events)
    assert dones
    for path, done in dones.items():
        chat = tree.chat_of(path)
        response = done.response
        attributes = chat.attributes
        assert chat.name == f"chat {response.model}"
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == response.provider == "mock"
        assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == response.model
        assert attributes["gen_ai.request.stream"] is True
        assert attributes["gen_ai.response.finish_reasons"] == (response.finish_reason,)
        assert response.usage is not None
        assert attributes["gen_ai.usage.input_tokens"] == response.usage.input_tokens
        assert attributes["gen_ai.usage.output_tokens"] == response.usage.output_tokens
        assert done.ttft_ms is not None
        assert attributes["gen_ai.response.time_to_first_chunk"] == pytest.approx(done.ttft_ms / 1000)
        assert chat.status.status_code == StatusCode.UNSET


PARALLEL = """
workflow:
  name: branches
  steps:
    - id: both
      parallel:
        - {id: left, provider: mock, prompt: "Left", mock_response: ["l1 ", "l2 ", "l3"], options: {delay_ms: 20}}
        - {id: right, provider: mock, prompt: "Right", mock_response: ["r1 ", "r2 ", "r3"], options: {delay_ms: 20}}
    - id: each
      for_each: ["a", "b"]
      as: letter
      max_parallel: 2
      steps:
        - {id: say, provider: mock, prompt: "Say {{ letter }}", options: {delay_ms: 20, max_tokens: 7}}
"""


@pytest.mark.streaming
def test_parallel_branches_are_children_of_their_group_with_no_cross_talk(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    workflow = tmp_path / "branches.yaml"
    workflow.write_text(PARALLEL, encoding="utf-8")
    events: list[Any] = []
    pipeline_ex.run(workflow, on_event=events.append)
    tree = Tree(exporter.get_finished_spans())
    left, right = tree.one("step left"), tree.one("step right")
    assert tree.parent_name(left) == tree.parent_name(right) == "step both"
    assert left.start_time is not None and right.end_time is not None and left.end_time is not None
    assert left.start_time < right.end_time and right.start_time < left.end_time  # they really overlapped
    items = [tree.one("step each[0].say"), tree.one("step each[1].say")]
    assert all(tree.parent_name(item) == "step each" for item in items)
    for path, done in _dones(events).items():
        chat = tree.chat_of(path)
        assert tree.parent(chat) is tree.one(f"step {path}")
        assert chat.attributes["gen_ai.usage.output_tokens"] == done.response.usage.output_tokens  # type: ignore[union-attr]
    assert tree.chat_of("each[0].say").attributes["gen_ai.request.max_tokens"] == 7


def _openai_workflow(folder: Path, server: OpenAISSEServer) -> Path:
    workflow = folder / "failing.yaml"
    body = {
        "workflow": {
            "name": "failing",
            "steps": [
                {
                    "id": "answer",
                    "provider": "openai",
                    "model": "gpt-test-mini",
                    "prompt": "Hello",
                    "options": {"api_base_url": server.url, "max_retries": 0},
                }
            ],
        }
    }
    workflow.write_text(json.dumps(body), encoding="utf-8")
    return workflow


@pytest.mark.streaming
@pytest.mark.live  # the loopback OpenAI server
def test_a_step_failing_on_an_http_500_records_the_error_on_its_spans(
    exporter: InMemorySpanExporter, openai_server: OpenAISSEServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    openai_server.script(reject_status=500, reject_message="the server fell over")
    events: list[Any] = []
    with pytest.raises(StepError) as raised:
        pipeline_ex.run(_openai_workflow(tmp_path, openai_server), on_event=events.append)
    done = _dones(events)["answer"]
    assert done.error is not None and done.response.finish_reason == "error"
    tree = Tree(exporter.get_finished_spans())
    chat = tree.one("chat gpt-test-mini")
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.status.status_code == StatusCode.ERROR
    assert chat.attributes["error.type"] == done.error.type
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("error",)
    assert [event.name for event in chat.events] == ["exception"]
    error_class = type(raised.value)
    assert chat.events[0].attributes["exception.type"] == f"{error_class.__module__}.{error_class.__qualname__}"
    assert "500" in str(chat.events[0].attributes["exception.message"])
    assert "500" in str(chat.status.description)
    step, run = tree.one("step answer"), tree.one("invoke_workflow failing")
    for span in (step, run):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == done.error.type
    assert step.attributes["pipeline_ex.step.status"] == "failed"
    assert run.attributes["pipeline_ex.run.status"] == "failed"
    assert openai_server.requests  # the call really reached the server


CONTINUE = """
workflow:
  name: keep_going
  steps:
    - id: group
      on_error: continue
      parallel:
        - {id: fine, provider: mock, prompt: "Fine"}
        - {id: broken, provider: mock, prompt: "Broken", mock_response: ["a ", "b"], options: {error_after: 1}}
"""


@pytest.mark.streaming
def test_a_failure_kept_by_on_error_continue_marks_only_its_step(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    workflow = tmp_path / "keep_going.yaml"
    workflow.write_text(CONTINUE, encoding="utf-8")
    result = pipeline_ex.run(workflow)
    assert result.status == "ok"
    tree = Tree(exporter.get_finished_spans())
    broken = tree.one("step broken")
    assert broken.status.status_code == StatusCode.ERROR
    assert broken.attributes["pipeline_ex.step.status"] == "failed"
    assert broken.attributes["error.type"] == "provider"
    assert tree.one("step fine").status.status_code == StatusCode.UNSET
    assert tree.one("step group").attributes["pipeline_ex.step.status"] == "ok"
    assert tree.one("invoke_workflow keep_going").status.status_code == StatusCode.UNSET


SLOW = """
workflow:
  name: slow
  steps:
    - id: only
      provider: mock
      prompt: "Slowly"
      mock_response: ["s0 ", "s1 ", "s2 ", "s3 ", "s4 ", "s5 ", "s6 ", "s7 ", "s8 ", "s9"]
      options: {delay_ms: 50}
"""


@pytest.mark.streaming
async def test_a_cancelled_run_records_the_cancellation(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    workflow = tmp_path / "slow.yaml"
    workflow.write_text(SLOW, encoding="utf-8")
    events = astream(workflow)
    seen: list[Any] = []
    async for event in events:
        seen.append(event)
        if len(seen) == 2:
            events.cancel()
    done = _dones(seen)["only"]
    assert done.response.finish_reason == "cancelled"
    tree = Tree(exporter.get_finished_spans())
    chat, step, run = tree.one("chat mock"), tree.one("step only"), tree.one("invoke_workflow slow")
    for span in (chat, step, run):
        assert span.status.status_code == StatusCode.ERROR, span.name
        assert span.attributes["error.type"] == "cancelled", span.name
        assert [event.name for event in span.events] == ["exception"]
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("cancelled",)
    assert step.attributes["pipeline_ex.step.status"] == "cancelled"
    assert run.attributes["pipeline_ex.run.status"] == "cancelled"


@pytest.mark.streaming
def test_tool_calls_get_execute_tool_spans_under_the_chat_span(exporter: InMemorySpanExporter) -> None:
    events: list[Any] = []
    pipeline_ex.run(WORKFLOWS / "calculator.yaml", mock=True, on_event=events.append)
    tree = Tree(exporter.get_finished_spans())
    tool = tree.one("execute_tool evaluate")
    assert tree.parent_name(tool) == "chat gpt-4o-mini"
    assert tool.kind == SpanKind.INTERNAL
    call = _dones(events)["answer"].response.tool_calls[0]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == call.name == "evaluate"
    assert tool.attributes["gen_ai.tool.call.id"] == call.id
    assert tool.status.status_code == StatusCode.UNSET
    assert not any("2480" in str(value) for span in tree.spans for value in span.attributes.values())  # no content


def _forecast(city: str) -> str:
    """The weather of a city.

    :param city: the city.
    """
    if city == "Atlantis":
        raise LookupError("no such city")
    return f"Sunny in {city}"


@pytest.mark.streaming
def test_a_sync_steps_tool_calls_get_spans_and_a_raising_tool_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    from pipeline_ex.llm.providers.mock import MockReply

    reply = MockReply(
        tool_calls=[
            {"name": "_forecast", "arguments": {"city": "Oslo"}},
            {"name": "_forecast", "arguments": {"city": "Atlantis"}},
        ],
        text="Sunny in Oslo; Atlantis is not a city.",
    )
    result = pipeline_ex.invoke(prompt="Weather?", provider="mock", model="m2", tools=[_forecast], mock_response=reply)
    tree = Tree(exporter.get_finished_spans())
    chat = tree.one("chat m2")
    tools = tree.named("execute_tool _forecast")
    assert [tree.parent(span) for span in tools] == [chat, chat]
    by_call = {span.attributes["gen_ai.tool.call.id"]: span for span in tools}
    calls = {call.id: call for call in result.tool_calls}
    assert set(by_call) == set(calls)
    for call_id, span in by_call.items():
        failed = calls[call_id].error
        assert span.status.status_code == (StatusCode.ERROR if failed else StatusCode.UNSET)
        assert span.attributes.get("error.type") == ("tool_error" if failed else None)
    assert sum(calls[i].error for i in calls) == 1
    assert chat.status.status_code == StatusCode.UNSET  # the model saw the error result and answered


SYNC_ONLY = '''
from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk


@component
class SyncOnlyChatGenerator:
    """A chat generator with no run_async: a step runs it on a worker thread (hybrid)."""

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages, streaming_callback=None, generation_kwargs=None):
        for piece in ("one ", "two"):
            if streaming_callback is not None:
                streaming_callback(StreamingChunk(content=piece))
        final = StreamingChunk(content="", finish_reason="stop")
        if streaming_callback is not None:
            streaming_callback(final)
        return {"replies": [ChatMessage.from_assistant("one two", meta={"finish_reason": "stop"})]}
'''


@pytest.fixture
def haystack_traced() -> Iterator[None]:
    from haystack import tracing
    from haystack_integrations.tracing.opentelemetry import OpenTelemetryTracer

    tracing.enable_tracing(OpenTelemetryTracer(trace.get_tracer("haystack")))
    try:
        yield
    finally:
        tracing.disable_tracing()


@pytest.mark.streaming
@pytest.mark.live  # a generator class given by its dotted path
@pytest.mark.usefixtures("haystack_traced")
def test_haystacks_component_span_fires_under_the_chat_span_native_and_on_a_worker_thread(
    exporter: InMemorySpanExporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sync_only.py").write_text(SYNC_ONLY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    workflow = tmp_path / "two.yaml"
    body = {
        "workflow": {
            "name": "two",
            "steps": [
                {"id": "native", "provider": "mock", "prompt": "Hi"},
                {"id": "hybrid", "prompt": "Hi", "generator": {"type": "sync_only.SyncOnlyChatGenerator"}},
            ],
        }
    }
    workflow.write_text(json.dumps(body), encoding="utf-8")
    result = pipeline_ex.run(workflow)
    assert result.steps["hybrid"].text == "one two"
    tree = Tree(exporter.get_finished_spans())
    components = tree.named("haystack.component.run")
    assert len(components) == 2
    parents = sorted(str(tree.parent(span).attributes["pipeline_ex.step.path"]) for span in components)  # type: ignore[union-attr]
    assert parents == ["hybrid", "native"]
    for span in components:
        assert tree.parent_name(span).startswith("chat")  # type: ignore[union-attr]
        assert span.context.trace_id == tree.one("invoke_workflow two").context.trace_id
    types = {span.attributes["haystack.component.type"] for span in components}
    assert types == {"ScriptedChatGenerator", "SyncOnlyChatGenerator"}
    assert not any("haystack.component.input" in span.attributes for span in components)  # content is opt-in

    from haystack import tracing

    # what HAYSTACK_CONTENT_TRACING_ENABLED=true sets when haystack is imported
    monkeypatch.setattr(tracing.tracer, "is_content_tracing_enabled", True)
    exporter.clear()
    pipeline_ex.run(workflow)
    opted_in = Tree(exporter.get_finished_spans()).named("haystack.component.run")
    assert len(opted_in) == 2
    for span in opted_in:
        assert "Hi" in str(span.attributes["haystack.component.input"])
        assert "replies" in str(span.attributes["haystack.component.output"])


@pytest.mark.streaming
def test_invoke_without_a_run_gets_a_chat_span_under_the_callers_span(exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("caller")
    with tracer.start_as_current_span("caller") as caller:
        result = pipeline_ex.invoke(prompt="Hello", provider="mock", model="m1")
    tree = Tree(exporter.get_finished_spans())
    chat = tree.one("chat m1")
    assert chat.parent is not None and chat.parent.span_id == caller.get_span_context().span_id
    assert chat.attributes["gen_ai.usage.output_tokens"] == result.response.usage.output_tokens  # type: ignore[union-attr]


@pytest.mark.streaming
async def test_invoke_inside_a_running_loop_keeps_the_callers_span_on_its_worker_thread(
    exporter: InMemorySpanExporter,
) -> None:
    import warnings

    tracer = trace.get_tracer("caller")
    with tracer.start_as_current_span("cell") as cell, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the one-time hint to use ainvoke
        result = pipeline_ex.invoke(prompt="Hello", provider="mock", model="m3", timeout=5)  # a timeout needs a loop
    chat = Tree(exporter.get_finished_spans()).one("chat m3")
    assert chat.parent is not None and chat.parent.span_id == cell.get_span_context().span_id
    assert chat.attributes["gen_ai.usage.output_tokens"] == result.response.usage.output_tokens  # type: ignore[union-attr]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_an_sdk_a_run_imports_no_opentelemetry_and_makes_no_tracer(tmp_path: Path) -> None:
    completed = _python(
        f"""
        import sys
        import pipeline_ex
        assert pipeline_ex.__file__.startswith({str(ROOT)!r}), pipeline_ex.__file__
        result = pipeline_ex.run({str(WORKFLOWS / "fan_out_report.yaml")!r}, mock=True, on_event="null")
        assert result.status == "ok"
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert not loaded, loaded

        import opentelemetry.trace  # the API alone, no SDK configured: still nothing is traced
        from pipeline_ex.tracing import active_tracer
        assert active_tracer() is None
        events = []
        pipeline_ex.run({str(WORKFLOWS / "multi_step.yaml")!r}, mock=True, on_event=events.append)
        assert "opentelemetry.sdk" not in sys.modules
        print("ok", len(events))
        """,
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1].startswith("ok "), completed.stdout


def test_the_trace_context_survives_the_run_record_round_trip() -> None:
    from pipeline_ex.distributed.run_records import RunRecord

    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    record = RunRecord("r1", "three", "digest", {}, trace_context=carrier)
    raw = {key.encode(): value.encode() for key, value in record.fields().items()}
    assert RunRecord.from_fields("r1", raw).trace_context == carrier  # every delivery of the task reads this
    untraced = RunRecord("r2", "three", "digest", {})
    assert "trace" not in untraced.fields()
    assert (
        RunRecord.from_fields("r2", {k.encode(): v.encode() for k, v in untraced.fields().items()}).trace_context == {}
    )


SPANS_TO_FILE = """
import json
import os

path = os.environ.get("PIPELINE_TEST_SPAN_FILE")
if path:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    def line(span):
        parent = span.parent
        return json.dumps({
            "name": span.name,
            "trace_id": format(span.context.trace_id, "032x"),
            "span_id": format(span.context.span_id, "016x"),
            "parent_id": format(parent.span_id, "016x") if parent is not None else None,
            "remote_parent": bool(parent is not None and parent.is_remote),
            "attributes": dict(span.attributes),
        }) + "\\n"

    provider = TracerProvider()
    out = open(path, "a", buffering=1, encoding="utf-8")
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=line)))
    trace.set_tracer_provider(provider)
"""

THREE = """
workflow:
  name: three
  steps:
    - {id: one, provider: mock, prompt: "One", mock_response: ["a ", "b"]}
    - {id: two, provider: mock, prompt: "Two after {{ steps.one.text }}"}
"""


@pytest.mark.streaming
async def test_a_worker_continues_the_trace_of_the_span_that_enqueued_the_run(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    from deployment_kit import WorkerProcess
    from redis_kit import RedisServer

    from pipeline_ex.distributed import Deployment
    from pipeline_ex.distributed.remote_runs import RemoteRunRegistry
    from pipeline_ex.workflow.loader import load_workflow

    project = tmp_path / "project"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows" / "three.yaml").write_text(THREE, encoding="utf-8")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SPANS_TO_FILE, encoding="utf-8")
    span_file = tmp_path / "worker-spans.jsonl"
    server = RedisServer().start()
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), str(project), str(ROOT)]),
        "PIPELINE_TEST_SPAN_FILE": str(span_file),
    }
    worker = WorkerProcess(server.url, project, "traced", "--concurrency", "2", env=env)
    registry = None
    try:
        worker.start()
        registry = RemoteRunRegistry(Deployment(server.url))
        loaded = load_workflow(project / "workflows" / "three.yaml", mock=True)
        with trace.get_tracer("client").start_as_current_span("submit") as submit:
            log = await registry.start(loaded, {}, mock=True, run_id="traced-run", max_active=10)
        async for _ in log.follow():
            pass
        assert log.status == "ok"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = span_file.read_text(encoding="utf-8").splitlines() if span_file.exists() else []
            spans = [json.loads(line) for line in lines]
            if any(span["name"] == "invoke_workflow three" for span in spans):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the worker wrote no run span:\n{worker.text()}")
    finally:
        if registry is not None:
            await registry.close()
        worker.stop()
        server.stop()
    context = submit.get_span_context()
    run = next(span for span in spans if span["name"] == "invoke_workflow three")
    assert run["trace_id"] == format(context.trace_id, "032x")
    assert run["parent_id"] == format(context.span_id, "016x") and run["remote_parent"]
    assert run["attributes"]["pipeline_ex.run.id"] == "traced-run"
    by_id = {span["span_id"]: span for span in spans}
    for name, parent in (("step one", run), ("step two", run)):
        step = next(span for span in spans if span["name"] == name)
        assert step["parent_id"] == parent["span_id"]
        chat = next(
            s for s in spans if s["name"] == "chat mock" and s["attributes"]["pipeline_ex.step.path"] == name[5:]
        )
        assert by_id[chat["parent_id"]] is step
    assert {span["trace_id"] for span in spans if span["name"] != "submit"} == {run["trace_id"]}


@pytest.mark.streaming
async def test_a_redelivered_run_still_continues_the_submitters_trace(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    from redis_kit import RedisServer

    from pipeline_ex.distributed import Deployment
    from pipeline_ex.distributed.run_records import RunRecord
    from pipeline_ex.distributed.worker import RunHost
    from pipeline_ex.tracing import trace_carrier
    from pipeline_ex.workflow.checkpoints import workflow_digest

    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "three.yaml").write_text(THREE, encoding="utf-8")
    server = RedisServer().start()
    deployment = Deployment(server.url, key_prefix="redelivered")
    host = RunHost(deployment, tmp_path / "workflows", name="second")
    client = deployment.async_client()
    try:
        host.start()
        store = deployment.run_store(client)
        digest = workflow_digest(host._catalogs[True].workflows["three"])
        with trace.get_tracer("client").start_as_current_span("submit") as submit:
            carrier = trace_carrier()
        assert carrier["traceparent"].split("-")[1] == format(submit.get_span_context().trace_id, "032x")
        await store.admit(RunRecord("r-again", "three", digest, {}, mock=True, trace_context=carrier), 10)
        assert await store.started("r-again", "first-worker") == 1  # a first worker took it, then died
        exporter.clear()  # only the second delivery's spans from here
        assert await asyncio.to_thread(host.execute, "r-again") == "ok"  # runs on the host's own loop thread
        record = await store.get("r-again")
        assert record is not None and record.attempt == 2
    finally:
        await client.aclose()
        host.stop()
        server.stop()
    tree = Tree(exporter.get_finished_spans())
    run = tree.one("invoke_workflow three")
    assert run.parent is not None and run.parent.is_remote
    assert run.parent.span_id == submit.get_span_context().span_id
    assert run.context.trace_id == submit.get_span_context().trace_id
    assert {span.context.trace_id for span in tree.spans} == {run.context.trace_id}
    assert len(tree.named("chat mock")) == 2
