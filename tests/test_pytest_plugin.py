"""The pytest plugin, tested the way pytest plugins are: in throwaway projects run by `pytester`.

Each throwaway project only installs pipeline-ex (the plugin loads from its `pytest11` entry point);
it has no conftest and no configuration.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from openai_sse_server import OpenAISSEServer

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent

USER_PROJECT_TEST = """
import pytest

from pipeline_ex import Delta, Done, run


@pytest.mark.streaming
def test_report_streams_through_the_custom_handler(stream_recorder, llm_mock, capsys):
    llm_mock.reply(["Rivers ", "carry ", "silt."], match="report", usage={"prompt_tokens": 4, "completion_tokens": 3})
    result = run("workflow.yaml")
    stream_recorder.assert_complete()
    assert [d.content for d in stream_recorder.deltas] == ["Rivers ", "carry ", "silt."]
    assert result.steps["draft"].text == "Rivers carry silt."
    assert stream_recorder.done.response.usage.output_tokens == 3
    assert capsys.readouterr().out == "RIVERS CARRY SILT.\\n[draft: stop]\\n"
    assert llm_mock.prompts == ["Write a report on rivers."]


def test_not_streaming():
    assert True
"""

USER_WORKFLOW = """
workflow:
  name: report
  inputs: {topic: {default: rivers}}
  steps:
    - id: draft
      type: llm
      provider: openai
      prompt: "Write a report on {{ inputs.topic }}."
      stream_handler: shout_handler
"""

SHOUT_HANDLER = """
import sys

def handle_event(event):
    if event.type == "delta":
        sys.stdout.write(event.content.upper())
    else:
        sys.stdout.write(f"\\n[{event.step}: {event.response.finish_reason}]\\n")
"""


def _user_project(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", workflow=USER_WORKFLOW)
    pytester.makepyfile(shout_handler=SHOUT_HANDLER, test_report=USER_PROJECT_TEST)


@pytest.mark.streaming
def test_a_fresh_project_uses_the_fixtures_with_no_configuration(pytester: pytest.Pytester) -> None:
    _user_project(pytester)
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.streaming
def test_the_streaming_marker_selects_only_streaming_tests(pytester: pytest.Pytester) -> None:
    _user_project(pytester)
    result = pytester.runpytest_subprocess("-m", "streaming", "--strict-markers", "-v")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_report_streams_through_the_custom_handler PASSED*"])
    assert "test_not_streaming PASSED" not in result.stdout.str()


@pytest.mark.streaming
def test_the_guard_stops_a_real_provider_call_and_says_how_to_allow_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_guard="""
        from pipeline_ex import llm

        def test_calls_a_real_provider():
            llm.invoke(prompt="hi", provider="openai", api_base_url="http://127.0.0.1:9/v1")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LiveCallBlocked: test 'test_guard.py::test_calls_a_real_provider' tried a real call to provider "
            "'openai'*@pytest.mark.live or pytest --pipeline-live*llm_mock*"
        ]
    )


@pytest.mark.streaming
@pytest.mark.parametrize("allow", ["marker", "option"])
def test_live_marker_and_option_allow_real_calls(
    pytester: pytest.Pytester, openai_server: OpenAISSEServer, allow: str
) -> None:
    marker = "@pytest.mark.live" if allow == "marker" else ""
    pytester.makepyfile(
        test_live=f"""
        import pytest
        from pipeline_ex import llm

        {marker}
        def test_calls_the_loopback_server():
            result = llm.invoke(prompt="hi", provider="openai", api_base_url="{openai_server.url}")
            assert result.text == "Hello, world!"
        """
    )
    args = ["--pipeline-live"] if allow == "option" else []
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)


CASSETTE_TEST = """
import pytest
from pipeline_ex import llm

URL = "{url}"


@pytest.mark.cassette("greeting")
def test_greeting(stream_recorder):
    result = llm.invoke(prompt="Say hello", provider="openai", api_base_url=URL, step="greet")
    stream_recorder.assert_complete()
    print("CHUNKS=" + "|".join(d.content for d in stream_recorder.deltas))
    print("USAGE=" + repr(result.response.usage))
    print("FINISH=" + result.response.finish_reason)
"""


@pytest.mark.streaming
def test_cassette_records_a_live_loopback_run_and_replays_identical_chunks(
    pytester: pytest.Pytester, openai_server: OpenAISSEServer
) -> None:
    openai_server.script(pieces=("Hel", "lo", ", str", "eam", "!"), delay_s=0.02)
    pytester.makepyfile(test_cassette=CASSETTE_TEST.format(url=openai_server.url))

    missing = pytester.runpytest_subprocess("-s")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*no cassette at *cassettes/greeting.jsonl*--pipeline-record*"])

    recorded = pytester.runpytest_subprocess("-s", "--pipeline-record")
    recorded.assert_outcomes(passed=1)
    assert len(openai_server.requests) == 1
    cassette = pytester.path / "cassettes" / "greeting.jsonl"
    lines = [json.loads(line) for line in cassette.read_text().splitlines()]
    assert [line["event"]["content"] for line in lines[:-1]] == ["Hel", "lo", ", str", "eam", "!"]
    assert lines[-1]["event"]["type"] == "done"
    assert "no-key-needed" not in cassette.read_text()

    openai_server.stop()  # replay must not need the server
    replayed = pytester.runpytest_subprocess("-s")
    replayed.assert_outcomes(passed=1)

    def facts(output: str) -> list[str]:
        return [line for line in output.splitlines() if line.startswith(("CHUNKS=", "USAGE=", "FINISH="))]

    assert facts(replayed.stdout.str()) == facts(recorded.stdout.str())
    assert "CHUNKS=Hel|lo|, str|eam|!" in replayed.stdout.str()
    assert "FINISH=stop" in replayed.stdout.str()


@pytest.mark.streaming
def test_replay_in_tests_is_instant_unless_a_speed_is_set(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_timing="""
        import pytest
        from pipeline_ex import llm

        @pytest.mark.cassette("slow")
        def test_slow(stream_recorder):
            llm.invoke(prompt="p", provider="mock", mock_response=["a ", "b ", "c ", "d"], delay_ms=60, step="s")
            first_to_last_delta = stream_recorder.offsets_ms[-2] - stream_recorder.offsets_ms[0]
            print(f"ELAPSED={first_to_last_delta / 1000:.3f}")
        """
    )
    monkeypatch.delenv("PIPELINE_REPLAY_SPEED", raising=False)
    pytester.runpytest_subprocess("--pipeline-record").assert_outcomes(passed=1)

    def elapsed(result: pytest.RunResult) -> float:
        result.assert_outcomes(passed=1)
        return float(result.stdout.str().split("ELAPSED=")[1].split()[0])

    assert elapsed(pytester.runpytest_subprocess("-s")) < 0.05, "under pytest a replay is instant by default"
    monkeypatch.setenv("PIPELINE_REPLAY_SPEED", "1")
    assert elapsed(pytester.runpytest_subprocess("-s")) >= 0.17, "four chunks recorded 60 ms apart keep their pauses"


@pytest.mark.streaming
@pytest.mark.parametrize("error_after", [0, 1, 5])
def test_fault_injection_keeps_every_delivered_delta(
    error_after: int, llm_mock: object, tmp_path: Path, stream_recorder: object
) -> None:
    """A stream failing after N chunks: one Done with the error and the partial text, nothing lost."""
    from pipeline_ex import ProviderError, run
    from pipeline_ex.modes.mock_script import MockScript
    from pipeline_ex.testing import StreamingRecorder

    assert isinstance(llm_mock, MockScript) and isinstance(stream_recorder, StreamingRecorder)
    chunks = [f"part{i} " for i in range(8)]
    llm_mock.reply(chunks, error_after=error_after)
    workflow = tmp_path / "flaky.yaml"
    events_file = tmp_path / "events.jsonl"
    workflow.write_text(
        "workflow:\n  name: flaky\n  steps:\n    - id: draft\n      type: llm\n      prompt: go\n"
        f"      stream_handler: jsonl\n      stream_handler_options: {{path: {events_file}}}\n"
    )
    with pytest.raises(ProviderError) as caught:
        run(workflow)
    stream_recorder.assert_complete()
    done = stream_recorder.done
    assert done is not None and done == caught.value.done
    assert done.error is not None and done.error.type == "provider"
    assert done.response.text == "".join(chunks[:error_after])
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [line["content"] for line in lines if line["type"] == "delta"] == chunks[:error_after]
    assert lines[-1]["type"] == "done" and lines[-1]["error"]["type"] == "provider"


@pytest.mark.streaming
@pytest.mark.parametrize("error_after", [0, 1, 5])
def test_fault_injection_makes_the_runner_exit_1(pytester: pytest.Pytester, error_after: int) -> None:
    shutil.copy(ROOT / "workflows" / "hello.yaml", pytester.path / "hello.yaml")
    pytester.makepyfile(
        test_cli=f"""
        from pipeline_ex.cli import main

        def test_exit_code(llm_mock, capsys):
            llm_mock.reply(["a ", "b ", "c ", "d ", "e ", "f ", "g"], error_after={error_after})
            assert main(["run", "hello.yaml"]) == 1
            err = capsys.readouterr().err
            assert "step 'poem' failed" in err and "MockProviderError" in err
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
