"""Running workflows: `run` / `arun`, step kinds, inputs, outputs, failures and the events handlers see."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pipeline_ex.llm.step as step_module
from pipeline_ex import (
    Context,
    Delta,
    Done,
    PipelineError,
    ProviderError,
    StepError,
    StreamingRecorder,
    WorkflowError,
)
from pipeline_ex.events import EVENT_ADAPTER
from pipeline_ex.workflow import InputError, RunResult, arun, load_workflow, parse_workflow, run

REPO = Path(__file__).resolve().parents[1]
MULTI_STEP = REPO / "workflows" / "multi_step.yaml"
GUIDE_AFTER = REPO / "workflows" / "guide_after.yaml"
DRAFT_REPLY = "Mock reply to: Write three sentences about streaming."


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in its own directory, with no PIPELINE_* settings from the outside."""
    for name in ("PIPELINE_TEST_MODE", "PIPELINE_OUTPUT_DIR", "PIPELINE_STREAM_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The rendered prompt of every LLM step, by step id (recorded around `ainvoke`)."""
    seen: dict[str, str] = {}
    original = step_module.ainvoke

    async def recording(*args: Any, **kwargs: Any) -> Any:
        seen[kwargs["step"]] = kwargs["prompt"]
        return await original(*args, **kwargs)

    monkeypatch.setattr(step_module, "ainvoke", recording)
    return seen


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a uniquely named module into the test directory; return its import name."""
    # The directory goes on sys.path explicitly: see test_cli's xfail about python steps imported from cwd.
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> str:
        name = f"mod_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        return name

    return make


def workflow(text: str, *, mock: bool = True, file: str = "wf.yaml") -> Any:
    return parse_workflow(textwrap.dedent(text).lstrip("\n"), file, mock=mock)


def seqs(events: list[Any]) -> list[int]:
    return [e.seq for e in events]


# ---------------------------------------------------------------------------------------------------------
# a multi-step run on the mock
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.streaming
def test_multi_step_mock_run(tmp_path: Path, prompts: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    recorder = StreamingRecorder()
    result = run(MULTI_STEP, mock=True, on_event=recorder, output_dir=tmp_path / "out")

    assert isinstance(result, RunResult)
    assert result.workflow == "draft_and_summarise"
    assert list(result.steps) == ["draft", "summary"]
    draft = result.steps["draft"]
    assert draft.text == DRAFT_REPLY
    assert draft.response.provider == "mock"
    assert draft.done.response is draft.response
    # the summary's prompt was rendered with the draft's full text
    assert prompts["draft"] == "Write three sentences about streaming."
    assert prompts["summary"] == f"Summarise in one sentence: {DRAFT_REPLY}"
    assert result.steps["summary"].response.usage.input_tokens == len(prompts["summary"].split())
    assert result.text == result.steps["summary"].text

    # on_event saw every event of every step, in one run with increasing seq
    recorder.assert_complete()
    assert list(recorder.by_step) == ["draft", "summary"]
    assert {e.run_id for e in recorder.events} == {result.run_id}
    numbers = seqs(recorder.timeline)  # Delta and Done, and the lifecycle events a recorder receives
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    assert [d.response.text for d in recorder.dones] == [draft.text, result.steps["summary"].text]
    assert recorder.dones[0] == draft.done

    # the YAML default handler (console) streamed too
    assert capsys.readouterr().out.startswith(DRAFT_REPLY)

    assert result.outputs == {
        "draft": (tmp_path / "out" / "draft.md").resolve(),
        "summary": (tmp_path / "out" / "summary.md").resolve(),
    }
    assert result.outputs["draft"].read_text(encoding="utf-8") == draft.text

    data = result.to_json()
    json.dumps(data)
    assert data["steps"]["draft"]["text"] == draft.text
    assert data["steps"]["draft"]["usage"]["output_tokens"] == len(DRAFT_REPLY.split())
    assert data["outputs"]["summary"].endswith("summary.md")


@pytest.mark.streaming
def test_yaml_handlers_and_on_event_receive_the_same_events(tmp_path: Path) -> None:
    loaded = workflow(
        """
        workflow:
          name: twice
          steps:
            - id: a
              prompt: "first"
              stream_handler: jsonl
              stream_handler_options: {path: a.jsonl}
            - id: b
              prompt: "second: {{ steps.a.text }}"
              stream_handler: jsonl
              stream_handler_options: {path: b.jsonl}
        """
    )
    first, second = StreamingRecorder(), StreamingRecorder()
    run(loaded, on_event=[first, second], output_dir=tmp_path, mock=True)
    from_files = [
        EVENT_ADAPTER.validate_json(line)
        for name in ("a.jsonl", "b.jsonl")
        for line in (tmp_path / name).read_text(encoding="utf-8").splitlines()
    ]
    dump = [e.model_dump(mode="json") for e in first.events]
    assert [e.model_dump(mode="json") for e in from_files] == dump
    assert [e.model_dump(mode="json") for e in second.events] == dump
    first.assert_complete()


@pytest.mark.streaming
def test_defaults_jsonl_handler_keeps_every_steps_events(tmp_path: Path) -> None:
    loaded = workflow(
        """
        workflow:
          name: shared_file
          defaults:
            stream_handler: jsonl
            stream_handler_options: {path: events.jsonl}
          steps:
            - id: a
              prompt: "first"
            - id: b
              prompt: "second"
        """
    )
    run(loaded, output_dir=tmp_path, mock=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert "a" in steps and "b" in steps


# ---------------------------------------------------------------------------------------------------------
# python and set steps
# ---------------------------------------------------------------------------------------------------------


def test_python_step_gets_the_context_and_its_value_feeds_a_template(
    module: Callable[[str], str], prompts: dict[str, str]
) -> None:
    name = module(
        """
        calls = []

        def fetch(ctx, source, times=1):
            calls.append(ctx)
            return f"{source}:{ctx.inputs['topic']}" * times
        """
    )
    loaded = workflow(
        f"""
        workflow:
          name: py
          inputs:
            topic: {{default: "rivers"}}
          steps:
            - id: fetch
              type: python
              callable: {name}.fetch
              args: {{source: db, times: 2}}
            - id: use
              prompt: "Use {{{{ steps.fetch }}}}"
        """
    )
    result = run(loaded, mock=True)
    assert result.values == {"fetch": "db:riversdb:rivers"}
    assert prompts["use"] == "Use db:riversdb:rivers"
    assert result.steps["use"].text == "Mock reply to: Use db:riversdb:rivers"
    (ctx,) = importlib.import_module(name).calls
    assert isinstance(ctx, Context)
    assert ctx.run_id == result.run_id
    assert ctx.inputs == {"topic": "rivers"}
    assert ctx.steps["fetch"] == "db:riversdb:rivers"  # the context kept the value for later steps
    assert "use" in ctx.steps


def test_python_step_colon_path_and_earlier_results(module: Callable[[str], str]) -> None:
    name = module(
        """
        def count_words(ctx):
            return {"words": len(ctx.steps["draft"].text.split()), "first": ctx.steps["draft"].text.split()[0]}
        """
    )
    loaded = workflow(
        f"""
        workflow:
          name: py
          steps:
            - id: draft
              prompt: "x"
              mock_response: "alpha beta gamma"
            - id: stats
              type: python
              callable: "{name}:count_words"
            - id: report
              prompt: "{{{{ steps.stats.words }}}} words, first {{{{ steps.stats['first'] }}}}"
        """
    )
    result = run(loaded, mock=True)
    assert result.values["stats"] == {"words": 3, "first": "alpha"}
    assert result.steps["report"].text == "Mock reply to: 3 words, first alpha"
    assert result.to_json()["values"] == {"stats": {"words": 3, "first": "alpha"}}


def test_async_python_callable_is_awaited(module: Callable[[str], str]) -> None:
    name = module(
        """
        import asyncio

        async def slow_value(ctx, value):
            await asyncio.sleep(0.01)
            return value.upper()
        """
    )
    loaded = workflow(
        f"""
        workflow:
          name: py_async
          steps:
            - id: value
              type: python
              callable: {name}.slow_value
              args: {{value: shout}}
            - id: use
              prompt: "{{{{ steps.value }}}}"
        """
    )
    result = run(loaded, mock=True)
    assert result.values["value"] == "SHOUT"
    assert result.steps["use"].text == "Mock reply to: SHOUT"


def test_python_step_that_raises_stops_the_run(module: Callable[[str], str]) -> None:
    name = module(
        """
        def boom(ctx):
            raise RuntimeError("no data")
        """
    )
    loaded = workflow(
        f"""
        workflow:
          name: py_fail
          steps:
            - id: boom
              type: python
              callable: {name}.boom
            - id: after
              prompt: "never"
        """
    )
    recorder = StreamingRecorder()
    with pytest.raises(RuntimeError, match="no data"):
        run(loaded, on_event=recorder, mock=True)
    assert recorder.events == []


def test_set_step_renders_vars_for_later_steps(prompts: dict[str, str]) -> None:
    loaded = workflow(
        """
        workflow:
          name: vars
          inputs:
            topic: {default: "tides"}
          steps:
            - id: names
              type: set
              vars:
                subject: "the {{ inputs.topic | upper }}"
                limit: 3
            - id: draft
              prompt: "Write {{ vars.limit }} lines on {{ vars.subject }}"
            - id: more
              type: set
              vars:
                echo: "{{ vars.subject }} / {{ steps.draft.text }}"
        """
    )
    result = run(loaded, mock=True)
    assert prompts["draft"] == "Write 3 lines on the TIDES"
    assert result.vars == {
        "subject": "the TIDES",
        "limit": 3,
        "echo": "the TIDES / Mock reply to: Write 3 lines on the TIDES",
    }
    assert result.to_json()["vars"]["limit"] == 3


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------

INPUTS_WORKFLOW = """
workflow:
  name: inputs
  inputs:
    topic: {default: "rivers"}
    count: {type: integer, default: 2}
    ratio: {type: number, default: 0.5}
    loud: {type: boolean, default: false}
    audience: {description: "required: no default"}
  steps:
    - id: a
      prompt: "{{ inputs.count + 1 }} {{ inputs.ratio * 2 }} {{ inputs.loud }} {{ inputs.topic }} {{ inputs.audience }}"
"""


def test_input_defaults_and_conversions(prompts: dict[str, str]) -> None:
    loaded = workflow(INPUTS_WORKFLOW)
    run(loaded, {"audience": "kids"}, mock=True)
    assert prompts["a"] == "3 1.0 False rivers kids"
    run(loaded, {"audience": "kids", "topic": "lakes", "count": "3", "ratio": "2.5", "loud": "yes"}, mock=True)
    assert prompts["a"] == "4 5.0 True lakes kids"
    run(loaded, {"audience": "kids", "count": 10, "loud": "off"}, mock=True)  # non-strings pass through
    assert prompts["a"] == "11 1.0 False rivers kids"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"count": "three"}, "input 'count' must be an integer, got 'three'"),
        ({"ratio": "half"}, "input 'ratio' must be a number"),
        ({"loud": "maybe"}, "input 'loud' must be a boolean"),
    ],
)
def test_input_conversion_errors(given: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        run(workflow(INPUTS_WORKFLOW), {"audience": "kids", **given}, mock=True)


def test_unknown_input_suggests_the_declared_name() -> None:
    loaded = workflow(INPUTS_WORKFLOW)
    with pytest.raises(InputError) as caught:
        run(loaded, {"audience": "kids", "topc": "x"}, mock=True)
    message = str(caught.value)
    assert "unknown input 'topc'" in message
    assert "did you mean 'topic'?" in message
    assert "declared: topic, count, ratio, loud, audience" in message
    with pytest.raises(InputError, match=r"unknown input 'zzz'; declared"):
        run(loaded, {"audience": "kids", "zzz": "x"}, mock=True)


def test_missing_required_input() -> None:
    loaded = workflow(INPUTS_WORKFLOW, file="inputs.yaml")
    recorder = StreamingRecorder()
    with pytest.raises(InputError) as caught:
        run(loaded, on_event=recorder, mock=True)
    assert isinstance(caught.value, PipelineError)
    message = str(caught.value)
    assert "missing input 'audience'" in message
    assert "inputs.yaml:8" in message
    assert caught.value.missing == "audience"  # the CLI turns it into "pass it with --input audience=VALUE"
    assert recorder.events == []  # nothing ran


# ---------------------------------------------------------------------------------------------------------
# output_to_file
# ---------------------------------------------------------------------------------------------------------

OUTPUT_WORKFLOW = """
workflow:
  name: files
  steps:
    - id: a
      prompt: "x"
      mock_response: "alpha beta"
      output_to_file: {path}
"""


def test_output_to_file_argument_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = workflow(OUTPUT_WORKFLOW.format(path="nested/dir/a.md"))
    result = run(loaded, output_dir=tmp_path / "arg", mock=True)
    assert (tmp_path / "arg" / "nested" / "dir" / "a.md").read_text(encoding="utf-8") == "alpha beta"
    assert result.outputs["a"] == (tmp_path / "arg" / "nested" / "dir" / "a.md").resolve()

    monkeypatch.setenv("PIPELINE_OUTPUT_DIR", str(tmp_path / "env"))
    run(loaded, mock=True)
    assert (tmp_path / "env" / "nested" / "dir" / "a.md").read_text(encoding="utf-8") == "alpha beta"

    monkeypatch.delenv("PIPELINE_OUTPUT_DIR")
    run(loaded, mock=True)
    assert (tmp_path / "outputs" / "nested" / "dir" / "a.md").read_text(encoding="utf-8") == "alpha beta"


@pytest.mark.parametrize("target", ["../x.md", "sub/../../x.md", "/tmp/pipeline_ex_escape_test.md"])
def test_output_to_file_outside_the_output_dir_is_a_load_error(target: str) -> None:
    with pytest.raises(WorkflowError, match=r"output_to_file: .* must be a relative path inside the output directory"):
        workflow(OUTPUT_WORKFLOW.format(path=target))
    assert not Path("/tmp/pipeline_ex_escape_test.md").exists()


# ---------------------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------------------

FAILING_WORKFLOW = """
workflow:
  name: failing
  steps:
    - id: first
      provider: mock
      prompt: "fine"
    - id: flaky
      provider: mock
      prompt: "will fail"
      options:
        mock_response: ["one ", "two ", "three ", "four"]
        error_after: 2
      output_to_file: flaky.md
    - id: never
      provider: mock
      prompt: "must not run"
      output_to_file: never.md
"""


@pytest.mark.streaming
def test_failing_step_delivers_done_then_raises_and_stops_the_run(tmp_path: Path) -> None:
    loaded = workflow(FAILING_WORKFLOW, mock=False)  # provider: mock with options, not mock mode
    order: list[str] = []
    recorder = StreamingRecorder()

    def spy(event: Any) -> None:
        order.append(type(event).__name__)

    with pytest.raises(StepError) as caught:
        run(loaded, on_event=[recorder, spy], output_dir=tmp_path, mock=True)
    error = caught.value
    assert isinstance(error, ProviderError)
    assert error.step == "flaky"
    assert "error_after=2" in str(error)
    assert error.partial_text == "one two "
    assert error.done == recorder.dones[-1]  # the Done was delivered before the raise
    assert error.done.response.finish_reason == "error"
    assert error.done.error is not None and error.done.error.type == "provider"
    assert list(recorder.by_step) == ["first", "flaky"]  # the later step never ran
    recorder.assert_complete()
    assert order[-1] == "Done"
    # output_to_file keeps the partial text of the failed step; the later step wrote nothing
    assert (tmp_path / "flaky.md").read_text(encoding="utf-8") == "one two "
    assert not (tmp_path / "never.md").exists()


@pytest.mark.streaming
def test_failing_step_fails_before_any_chunk(tmp_path: Path) -> None:
    loaded = workflow(
        """
        workflow:
          name: failing
          steps:
            - id: dead
              provider: mock
              prompt: "x"
              options: {error_after: 0}
              output_to_file: dead.md
        """,
        mock=False,
    )
    recorder = StreamingRecorder()
    with pytest.raises(ProviderError):
        run(loaded, on_event=recorder, output_dir=tmp_path, mock=True)
    assert [type(e) for e in recorder.events] == [Done]
    assert recorder.done.response.text == ""
    assert (tmp_path / "dead.md").read_text(encoding="utf-8") == ""


def test_template_error_at_run_time_is_a_workflow_error() -> None:
    loaded = workflow(
        """
        workflow:
          name: template
          steps:
            - id: a
              prompt: "{{ 1 / 0 }}"
        """
    )
    with pytest.raises(WorkflowError, match=r"wf.yaml:\d+:\d+.*template failed: ZeroDivisionError"):
        run(loaded, mock=True)


# ---------------------------------------------------------------------------------------------------------
# run / arun and the event loop
# ---------------------------------------------------------------------------------------------------------


async def test_run_inside_a_running_loop_runs_and_points_at_arun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline_ex.running_loop._warned", set())  # the warning is given once per process
    with pytest.warns(RuntimeWarning, match=r"await pipeline_ex\.arun\(\.\.\.\)"):
        result = run(MULTI_STEP, mock=True)
    assert result.status == "ok"


@pytest.mark.streaming
async def test_arun_runs_on_the_current_loop(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    result = await arun(
        load_workflow(MULTI_STEP, mock=True), {"topic": "lakes"}, mock=True, on_event=recorder, output_dir=tmp_path
    )
    assert result.steps["draft"].text == "Mock reply to: Write three sentences about lakes."
    recorder.assert_complete()
    assert (tmp_path / "summary.md").is_file()


async def test_concurrent_aruns_keep_separate_run_ids(tmp_path: Path) -> None:
    loaded = load_workflow(MULTI_STEP, mock=True)
    recorders = [StreamingRecorder(), StreamingRecorder()]
    results = await asyncio.gather(
        *(
            arun(loaded, {"topic": topic}, on_event=recorder, output_dir=tmp_path / topic, mock=True)
            for topic, recorder in zip(("a", "b"), recorders, strict=True)
        )
    )
    assert results[0].run_id != results[1].run_id
    for result, recorder in zip(results, recorders, strict=True):
        recorder.assert_complete()
        assert {e.run_id for e in recorder.events} == {result.run_id}


@pytest.mark.streaming
def test_class_handler_gets_a_fresh_instance_per_step_run(module: Callable[[str], str], tmp_path: Path) -> None:
    name = module(
        """
        class Counting:
            instances = []

            def __init__(self, label="n"):
                self.label = label
                self.events = []
                Counting.instances.append(self)

            def handle_event(self, event):
                self.events.append(event)
        """
    )
    loaded = workflow(
        f"""
        workflow:
          name: fresh
          defaults:
            stream_handler: {name}.Counting
            stream_handler_options: {{label: counted}}
          steps:
            - id: a
              prompt: "one"
            - id: b
              prompt: "two"
        """
    )
    counting = importlib.import_module(name).Counting
    first = run(loaded, output_dir=tmp_path, mock=True)
    second = run(loaded, output_dir=tmp_path, mock=True)
    assert len(counting.instances) == 4
    assert len({id(instance) for instance in counting.instances}) == 4
    expected = [(first.run_id, "a"), (first.run_id, "b"), (second.run_id, "a"), (second.run_id, "b")]
    for instance, (run_id, step) in zip(counting.instances, expected, strict=True):
        assert instance.label == "counted"
        assert {(e.run_id, e.step) for e in instance.events} == {(run_id, step)}
        assert [type(e) for e in instance.events].count(Done) == 1
        assert isinstance(instance.events[-1], Done)


# ---------------------------------------------------------------------------------------------------------
# streaming shape and mock mode
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.streaming
def test_stream_false_gives_one_delta_and_an_unstreamed_done() -> None:
    loaded = workflow(
        """
        workflow:
          name: whole
          steps:
            - id: a
              prompt: "x"
              stream: false
              mock_response: ["al", "pha ", "beta"]
        """
    )
    recorder = StreamingRecorder()
    result = run(loaded, on_event=recorder, mock=True)
    assert [type(e) for e in recorder.events] == [Delta, Done]
    assert recorder.events[0].content == "alpha beta"
    assert recorder.done.streamed is False
    assert result.steps["a"].done.streamed is False
    assert result.to_json()["steps"]["a"]["streamed"] is False
    recorder.assert_complete()


@pytest.mark.streaming
def test_mock_response_list_gives_exactly_those_chunks() -> None:
    chunks = ["Hel", "lo", ", ", "wor", "ld", "!\n", " trailing "]
    loaded = workflow(
        f"""
        workflow:
          name: chunks
          steps:
            - id: a
              prompt: "x"
              mock_response: {json.dumps(chunks)}
            - id: b
              prompt: "y"
              mock_response: "split into words"
        """
    )
    recorder = StreamingRecorder()
    result = run(loaded, on_event=recorder, mock=True)
    by_step = recorder.by_step
    assert [e.content for e in by_step["a"] if isinstance(e, Delta)] == chunks
    assert result.steps["a"].text == "".join(chunks)
    assert [e.content for e in by_step["b"] if isinstance(e, Delta)] == ["split ", "into ", "words"]
    recorder.assert_complete()


def test_mock_argument_runs_a_real_provider_workflow_on_the_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(WorkflowError, match="provider 'claude' needs"):
        run(GUIDE_AFTER)  # claude needs a key (and anthropic-haystack) that are not here
    result = run(GUIDE_AFTER, mock=True)
    assert result.steps["draft_report"].response.provider == "mock"


TEST_MODE_SCRIPT = """
from pipeline_ex.workflow import run

result = run({workflow!r}, output_dir="out")
for step in result.steps.values():
    print(step.response.provider, step.text)
"""


@pytest.mark.parametrize("value", ["mock", " MOCK "])
def test_test_mode_environment_variable_selects_the_mock(tmp_path: Path, value: str) -> None:
    # A subprocess: the pipeline_ex pytest plugin fixes each test's mode before the test body runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_") and k != "ANTHROPIC_API_KEY"}
    for path, first_line in [
        (GUIDE_AFTER, "mock Mock reply to: Write a short report on streaming."),  # provider claude: no key here
        (MULTI_STEP, f"mock {DRAFT_REPLY}"),  # provider local: no model is loaded
    ]:
        result = subprocess.run(
            [sys.executable, "-c", TEST_MODE_SCRIPT.format(workflow=str(path))],
            cwd=tmp_path,
            env={**env, "PIPELINE_TEST_MODE": value},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert first_line in result.stdout.splitlines()
    without = subprocess.run(
        [sys.executable, "-c", TEST_MODE_SCRIPT.format(workflow=str(GUIDE_AFTER))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert without.returncode != 0
    assert "WorkflowError" in without.stderr and "provider 'claude' needs" in without.stderr


def test_mock_run_of_a_workflow_loaded_from_a_file_without_mock(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(
        textwrap.dedent(
            """
            workflow:
              name: m
              steps:
                - id: a
                  provider: mock
                  prompt: "x"
                  options: {mock_response: "from options"}
                  mock_response: "from mock_response"
            """
        ),
        encoding="utf-8",
    )
    loaded = load_workflow(path)
    assert run(loaded, mock=True).steps["a"].text == "from mock_response", (
        "the step's own mock_response wins over options"
    )
    assert run(loaded, mock=True).steps["a"].text == "from mock_response"


def test_mock_run_of_a_parsed_workflow() -> None:
    loaded = workflow(
        """
        workflow:
          name: m
          steps:
            - id: a
              provider: mock
              prompt: "x"
              options: {mock_response: "from options"}
              mock_response: "from mock_response"
        """,
        mock=False,
    )
    assert run(loaded, mock=True).steps["a"].text == "from mock_response"


def test_run_accepts_str_and_pathlike(tmp_path: Path) -> None:
    shutil.copyfile(MULTI_STEP, tmp_path / "multi.yaml")
    assert run("multi.yaml", mock=True, output_dir=tmp_path).steps["draft"].text == DRAFT_REPLY
    assert run(tmp_path / "multi.yaml", mock=True, output_dir=tmp_path).steps["draft"].text == DRAFT_REPLY
