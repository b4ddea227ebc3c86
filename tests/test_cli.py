"""The `pipeline-ex` command line, run as a subprocess in a scratch copy of the project.

Each test runs in a temporary directory holding copies of the repository's workflows/ and handlers/,
so nothing is ever written into the repository.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from cli_kit import SCRIPT, TIMEOUT, cli, cli_env, cli_on_a_pty, project, read_jsonl, signal_after_lines, write

GUIDE_REPLY = "Mock reply to: Write a short report on streaming."
DRAFT_REPLY = "Mock reply to: Write three sentences about streaming."

__all__ = ["project"]  # the fixture, from cli_kit


# ---------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------


def test_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"the pipeline-ex console script is missing next to {sys.executable}"


def test_run_guide_after_with_mock_streams_the_reply(project: Path) -> None:
    result = cli("run", "workflows/guide_after.yaml", "--mock", cwd=project, script=True)
    assert result.returncode == 0, result.stderr
    assert GUIDE_REPLY in result.stdout
    assert "deprecated" not in result.stderr
    assert "[draft_report] stop" in result.stderr  # the console handler's summary line


def test_run_guide_before_with_mock_warns_with_file_and_line(project: Path) -> None:
    result = cli("run", "workflows/guide_before.yaml", "--mock", cwd=project)
    assert result.returncode == 0, result.stderr
    assert GUIDE_REPLY in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("deprecated:")]
    assert any("workflows/guide_before.yaml:6:" in line and "'stream'" in line for line in lines), lines
    assert any(
        "workflows/guide_before.yaml:7:" in line and "'async_handler'" in line and "'stream_handler'" in line
        for line in lines
    ), lines
    assert any(
        "workflows/guide_before.yaml:7:" in line
        and "Pipeline.AsyncStreaming.ConsoleHandler" in line
        and "Pipeline.Streaming.ConsoleHandler" in line
        for line in lines
    ), lines
    assert not any("deprecated" in line for line in result.stdout.splitlines())


def test_run_with_input_override(project: Path) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", "--input", "topic=rivers", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Mock reply to: Write three sentences about rivers." in result.stdout


FAILING_WORKFLOW = """
    workflow:
      name: failing
      steps:
        - id: flaky
          type: llm
          provider: mock
          prompt: "hello"
          options:
            mock_response: ["one ", "two ", "three ", "four"]
            error_after: 2
          stream_handler: {handler}
          stream_handler_options: {{path: {path}}}
        - id: never
          type: llm
          provider: mock
          prompt: "this step must not run"
    """


@pytest.mark.streaming
def test_failing_step_exits_1_and_jsonl_file_keeps_deltas_and_done(project: Path) -> None:
    write(project / "fail.yaml", FAILING_WORKFLOW.format(handler="jsonl", path="events.jsonl"))
    result = cli("run", "fail.yaml", cwd=project)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "step 'flaky' failed" in result.stderr
    assert "MockProviderError" in result.stderr and "error_after=2" in result.stderr
    assert "this step must not run" not in result.stdout + result.stderr

    events = read_jsonl(project / "events.jsonl")
    assert [e["type"] for e in events] == ["delta", "delta", "done"]
    assert [e["content"] for e in events[:2]] == ["one ", "two "]
    done = events[-1]
    assert done["step"] == "flaky"
    assert done["response"]["finish_reason"] == "error"
    assert done["response"]["text"] == "one two "
    assert done["error"]["type"] == "provider"
    assert "error_after=2" in done["error"]["message"]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})


@pytest.mark.streaming
def test_failing_step_text_file_handler_keeps_delivered_text(project: Path) -> None:
    write(project / "fail.yaml", FAILING_WORKFLOW.format(handler="file", path="partial.txt"))
    result = cli("run", "fail.yaml", cwd=project)
    assert result.returncode == 1
    assert (project / "partial.txt").read_text(encoding="utf-8") == "one two "


def test_validation_error_exits_2_with_file_and_line(project: Path) -> None:
    write(
        project / "bad.yaml",
        """
        workflow:
          name: bad
          steps:
            - id: first
              prompt: "about {{ inputs.missing }}"
            - id: second
              prompt: "{{ steps.later.text }}"
            - id: later
              prompt: "x"
        """,
    )
    for command in (["run", "bad.yaml", "--mock"], ["validate", "--mock", "bad.yaml"]):
        result = cli(*command, cwd=project)
        assert result.returncode == 2, command
        assert "bad.yaml:5:" in result.stderr and "inputs.missing" in result.stderr
        assert "bad.yaml:7:" in result.stderr and "runs later" in result.stderr  # every issue, at once
        assert result.stdout == ""


def test_schema_error_on_a_step_key_points_at_that_key(project: Path) -> None:
    write(
        project / "bad.yaml",
        """
        workflow:
          name: bad
          steps:
            - id: a
              prompt: "x"
              max_tokens: 0
        """,
    )
    result = cli("validate", "--mock", "bad.yaml", cwd=project)
    assert result.returncode == 2
    assert "bad.yaml:6:" in result.stderr
    assert ".llm." not in result.stderr


def test_validate_reports_ok_and_exit_0(project: Path) -> None:
    result = cli("validate", "--mock", "workflows/multi_step.yaml", "workflows/guide_after.yaml", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "workflows/multi_step.yaml: ok (2 steps)" in result.stdout
    assert "workflows/guide_after.yaml: ok (1 steps)" in result.stdout


def test_validate_missing_file_exits_2(project: Path) -> None:
    result = cli("validate", "nope.yaml", cwd=project)
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "cannot read" in result.stderr


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("nope=1", "unknown input 'nope'"),
        ("topc=x", "did you mean 'topic'?"),
        ("x", "--input expects NAME=VALUE, got 'x'"),
        ("=value", "--input expects NAME=VALUE"),
    ],
)
def test_bad_input_exits_2(project: Path, pair: str, expected: str) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", "--input", pair, cwd=project)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Mock reply" not in result.stdout  # nothing ran


def test_input_of_the_wrong_type_exits_2(project: Path) -> None:
    write(
        project / "typed.yaml",
        """
        workflow:
          name: typed
          inputs:
            count: {type: integer, default: 1}
          steps:
            - id: a
              prompt: "count {{ inputs.count + 1 }}"
        """,
    )
    bad = cli("run", "typed.yaml", "--mock", "-i", "count=many", cwd=project)
    assert bad.returncode == 2
    assert "input 'count' must be an integer" in bad.stderr
    good = cli("run", "typed.yaml", "--mock", "-i", "count=41", cwd=project)
    assert good.returncode == 0, good.stderr
    assert "Mock reply to: count 42" in good.stdout


def test_missing_required_input_exits_2_and_says_how_to_pass_it(project: Path) -> None:
    write(
        project / "req.yaml",
        """
        workflow:
          name: req
          inputs:
            topic: {description: "no default, so required"}
          steps:
            - id: a
              prompt: "about {{ inputs.topic }}"
        """,
    )
    result = cli("run", "req.yaml", "--mock", cwd=project)
    assert result.returncode == 2
    assert "missing input 'topic'" in result.stderr
    assert "req.yaml:4" in result.stderr
    assert "--input topic=VALUE" in result.stderr


def test_json_output_on_stdout_and_stream_on_stderr(project: Path) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", "--json", "--output-dir", "out", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout is the JSON document and nothing else
    assert data["workflow"] == "draft_and_summarise"
    assert list(data["steps"]) == ["draft", "summary"]
    draft = data["steps"]["draft"]
    assert draft["text"] == DRAFT_REPLY
    assert draft["finish_reason"] == "stop"
    assert draft["provider"] == "mock"
    assert draft["streamed"] is True
    assert draft["usage"] == {"input_tokens": 5, "output_tokens": 8, "total_tokens": 13}
    assert data["steps"]["summary"]["text"].startswith("Mock reply to: Summarise in one sentence:")
    assert Path(data["outputs"]["draft"]).name == "draft.md"
    # the streamed text only went to stderr
    assert DRAFT_REPLY in result.stderr
    assert result.stdout.count(DRAFT_REPLY) == 1  # once, inside the JSON


def test_output_dir_option_places_output_files(project: Path) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", "--json", "--output-dir", "results/run1", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    out = project / "results" / "run1"
    assert (out / "draft.md").read_text(encoding="utf-8") == data["steps"]["draft"]["text"]
    assert (out / "summary.md").read_text(encoding="utf-8") == data["steps"]["summary"]["text"]
    assert not (project / "outputs").exists()


def test_output_dir_from_environment(project: Path) -> None:
    env = cli_env(PIPELINE_OUTPUT_DIR=str(project / "from_env"))
    result = cli("run", "workflows/multi_step.yaml", "--mock", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    assert (project / "from_env" / "draft.md").read_text(encoding="utf-8") == DRAFT_REPLY
    assert (project / "from_env" / "summary.md").is_file()
    assert not (project / "outputs").exists()

    # the option wins over the environment variable
    result = cli("run", "workflows/multi_step.yaml", "--mock", "--output-dir", "opt", cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    assert (project / "opt" / "draft.md").is_file()


def test_output_dir_defaults_to_outputs(project: Path) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "outputs" / "draft.md").read_text(encoding="utf-8") == DRAFT_REPLY
    assert (project / "outputs" / "summary.md").is_file()


def _run_with_tty_stderr(args: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (exit code, stdout, stderr as text)."""
    code, stdout, stderr = cli_on_a_pty(*args, cwd=cwd)
    return code, stdout.decode(), stderr.decode().replace("\r\n", "\n")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_lines_on_a_tty(project: Path) -> None:
    code, stdout, stderr = _run_with_tty_stderr(["run", "workflows/multi_step.yaml", "--mock"], project)
    assert code == 0, stderr
    lines = stderr.splitlines()
    assert "[1/2] draft" in lines and "[2/2] summary" in lines
    assert lines.index("[1/2] draft") < lines.index("[2/2] summary")
    assert "[1/2]" not in stdout


def test_no_progress_lines_on_a_pipe(project: Path) -> None:
    result = cli("run", "workflows/multi_step.yaml", "--mock", cwd=project)
    assert result.returncode == 0
    assert "[1/2]" not in result.stderr and "[2/2]" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_no_progress_line_for_a_single_step_on_a_tty(project: Path) -> None:
    code, _, stderr = _run_with_tty_stderr(["run", "workflows/guide_after.yaml", "--mock"], project)
    assert code == 0
    assert "[1/1]" not in stderr


@pytest.mark.streaming
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child process is POSIX-only here")
def test_sigint_during_a_slow_stream_exits_130_and_delivers_cancelled_done(project: Path) -> None:
    chunks = ", ".join(f'"w{i} "' for i in range(200))  # 200 x 50 ms: far longer than the test waits
    write(
        project / "slow.yaml",
        f"""
        workflow:
          name: slow
          steps:
            - id: slow
              type: llm
              provider: mock
              prompt: "go slowly"
              options:
                delay_ms: 50
                mock_response: [{chunks}]
              stream_handler: jsonl
              stream_handler_options: {{path: slow.jsonl}}
        """,
    )
    events_file = project / "slow.jsonl"
    result = signal_after_lines("run", "slow.yaml", cwd=project, lines_in=events_file, count=3, signum=signal.SIGINT)
    stderr = result.stderr
    assert result.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr

    events = read_jsonl(events_file)
    done = events[-1]
    assert done["type"] == "done"
    assert [e["type"] for e in events[:-1]] == ["delta"] * (len(events) - 1)
    assert 3 <= len(events) - 1 < 200
    assert done["response"]["finish_reason"] == "cancelled"
    assert done["error"]["type"] == "cancelled"
    assert done["response"]["text"] == "".join(e["content"] for e in events[:-1])


def test_script_imports_python_step_module_from_current_directory(project: Path) -> None:
    write(project / "mymod_cli.py", "def fetch(ctx, n=1):\n    return 'fetched' * n\n")
    write(
        project / "py.yaml",
        """
        workflow:
          name: py
          steps:
            - id: fetch
              type: python
              callable: mymod_cli.fetch
              args: {n: 2}
            - id: use
              prompt: "Use {{ steps.fetch }}"
        """,
    )
    # python -m puts the current directory on sys.path, so this works ...
    module_run = cli("run", "py.yaml", "--mock", cwd=project)
    assert module_run.returncode == 0, module_run.stderr
    assert "Mock reply to: Use fetchedfetched" in module_run.stdout
    # ... and the installed script should behave the same.
    script_run = cli("run", "py.yaml", "--mock", cwd=project, script=True)
    assert script_run.returncode == 0, script_run.stderr


# ---------------------------------------------------------------------------------------------------------
# handlers, schema, help, version
# ---------------------------------------------------------------------------------------------------------


def test_handlers_lists_builtins_and_aliases(project: Path) -> None:
    result = cli("handlers", cwd=project, script=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name, target in [
        ("console", "pipeline_ex.streaming.console.ConsoleHandler"),
        ("file", "pipeline_ex.streaming.file.FileHandler"),
        ("jsonl", "pipeline_ex.streaming.file.JsonlFileHandler"),
        ("buffer", "pipeline_ex.streaming.buffer.BufferHandler"),
        ("null", "pipeline_ex.streaming.null.NullHandler"),
        ("recorder", "pipeline_ex.testing.recorder.StreamingRecorder"),
    ]:
        assert any(line.split() == [name, target] for line in out.splitlines()), name
    for alias in [
        "Pipeline.Streaming.ConsoleHandler",
        "Pipeline.Streaming.FileHandler",
        "Pipeline.Streaming.JsonlHandler",
        "Pipeline.Streaming.BufferHandler",
        "Pipeline.Streaming.NullHandler",
        "Pipeline.TestMode.StreamingRecorder",
    ]:
        assert alias in out
    assert "Pipeline.AsyncStreaming.ConsoleHandler" in out  # the deprecated names are listed too


def test_schema_prints_json_schema(project: Path) -> None:
    result = cli("schema", cwd=project)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "workflow" in schema["$defs"]["WorkflowFile"]["properties"]
    assert "LLMStep" in schema["$defs"]


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["migrate"], ["handlers"], ["schema"]])
def test_help_for_every_subcommand(project: Path, command: list[str]) -> None:
    result = cli(*command, "--help", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pipeline-ex" + "".join(f" {c}" for c in command))


def test_no_command_prints_help_and_exits_2(project: Path) -> None:
    result = cli(cwd=project)
    assert result.returncode == 2
    assert "usage: pipeline-ex" in result.stderr


def test_unknown_subcommand_exits_2(project: Path) -> None:
    assert cli("frobnicate", cwd=project).returncode == 2


def test_version(project: Path) -> None:
    result = cli("--version", cwd=project)
    assert result.returncode == 0
    assert result.stdout.strip() == "pipeline-ex 0.1.0"


NO_HAYSTACK = """
import sys
from pipeline_ex.cli import main

code = None
try:
    code = main({argv!r})
except SystemExit as stop:
    code = stop.code
assert code == 0, code
loaded = sorted(m for m in sys.modules if m == "haystack" or m.startswith("haystack."))
assert not loaded, loaded
print("no haystack")
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["run", "--help"],
        ["validate", "workflows/hello.yaml", "workflows/multi_step.yaml", "workflows/custom_handler.yaml"],
        ["validate", "--mock", "workflows/guide_before.yaml", "workflows/guide_after.yaml"],
        ["migrate", "--check", "workflows/guide_after.yaml"],
        ["handlers"],
        ["schema"],
    ],
    ids=lambda argv: "-".join(a.split("/")[-1] for a in argv),
)
def test_cheap_commands_do_not_import_haystack(project: Path, argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_HAYSTACK.format(argv=argv)],
        cwd=project,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("no haystack")


def _median_wall_time(command: Sequence[str], cwd: Path, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(
            command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        times.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
    return statistics.median(times)


def test_startup_time_of_help_and_validate(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    help_s = _median_wall_time([str(SCRIPT), "--help"], project)
    validate_s = _median_wall_time([str(SCRIPT), "validate", "workflows/hello.yaml"], project)
    with capsys.disabled():
        print(
            f"\n[startup] median of 7: pipeline-ex --help {help_s * 1000:.0f} ms; "
            f"pipeline-ex validate workflows/hello.yaml {validate_s * 1000:.0f} ms"
        )
    assert help_s < 5
    assert validate_s < 5
