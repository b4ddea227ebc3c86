"""Command-line options of `pipeline-ex run` and `batch`, run as subprocesses on scratch projects.

Covers the defaults a run takes from the command line (`--provider`, `--model`, `--set`), the hints for
arguments a command does not take, the log levels (`-v`, `-vv`, `-q`), the shell completion script
(sourced in a real bash) and the JSON object `--json` prints when a run fails.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_kit import TIMEOUT, cli, cli_env, project, read_jsonl, signal_after_lines, write
from openai_sse_server import OpenAISSEServer, StreamScript

from pipeline_ex.completion import SHELLS

__all__ = ["project"]  # the fixture, from cli_kit

# ---------------------------------------------------------------------------------------------------------
# --provider, --model and --set
# ---------------------------------------------------------------------------------------------------------

LOCAL_WORKFLOW = """
    workflow:
      name: local_poem
      defaults:
        provider: local
        model: smollm2
        options: {n_ctx: 2048}
        max_tokens: 100
      steps:
        - id: poem
          prompt: "Write about rivers."
    """


def test_provider_model_and_set_reach_the_provider_as_typed_values(
    project: Path, openai_server: OpenAISSEServer
) -> None:
    openai_server.script(StreamScript(pieces=["Flowing ", "water."]))
    write(project / "poem.yaml", LOCAL_WORKFLOW)
    result = cli(
        "run",
        "poem.yaml",
        "--provider",
        "openai",
        "--model",
        "gpt-test",
        "--set",
        f"options.api_base_url={openai_server.url}",
        "--set",
        "temperature=0.2",
        "--set",
        "stream=false",
        "--set",
        "stop=[END, STOP]",
        "--json",
        cwd=project,
        env=cli_env(OPENAI_API_KEY="sk-test-key"),
    )
    assert result.returncode == 0, result.stderr
    (body,) = openai_server.bodies
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.2 and isinstance(body["temperature"], float)
    assert body["max_tokens"] == 100  # the file's other defaults still hold
    assert body["stop"] == ["END", "STOP"]
    assert not body.get("stream")  # --set stream=false is the boolean false
    data = json.loads(result.stdout)
    assert data["steps"]["poem"]["text"] == "Flowing water."
    assert data["steps"]["poem"]["streamed"] is False
    # the file's model and options were written for 'local', which --provider replaced: said, not silent
    assert "--provider openai replaces the provider of poem.yaml ('local')" in result.stderr
    assert "defaults.options" in result.stderr


GUIDE_STEPS = """
    workflow:
      name: mixed
      defaults:
        provider: local
        temperature: 0.9
      steps:
        - id: inherits
          prompt: "first"
        - id: own
          provider: mock
          temperature: 0.5
          prompt: "second"
          mock_response: "own reply"
    """


def test_a_step_with_its_own_provider_keeps_it_and_the_run_says_so(project: Path) -> None:
    write(project / "mixed.yaml", GUIDE_STEPS)
    result = cli(
        "run", "mixed.yaml", "--provider", "mock", "--set", "temperature=0.1", "--set", "seed=7", "--json", cwd=project
    )
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert steps["inherits"]["provider"] == "mock"  # no local model needed: --provider replaced it
    assert steps["own"]["text"] == "own reply"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any(
        "--set temperature=0.1 does not apply to step 'own' (sets temperature: 0.5, mixed.yaml:11)" in line
        for line in warnings
    ), warnings
    # the step sets the provider --provider names, so that override is not reported; seed applies to both
    assert not any("--provider" in line or "seed" in line for line in warnings), warnings


def test_model_reaching_a_step_of_another_provider_is_said(project: Path) -> None:
    write(
        project / "two.yaml",
        """
        workflow:
          name: two
          defaults: {provider: mock}
          steps:
            - id: main
              prompt: "first"
            - id: aside
              provider: openai
              prompt: "second"
        """,
    )
    result = cli("validate", "two.yaml", "--mock", cwd=project)
    assert result.returncode == 0, result.stderr
    result = cli("run", "two.yaml", "--mock", "--model", "tiny", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "--model tiny is also the model of 'aside' (provider 'openai', two.yaml:8)" in result.stderr
    assert json.loads(result.stdout)["steps"]["main"]["model"] == "tiny"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--set", "temprature=0.2"], "--set temprature=0.2: unknown key 'temprature' (did you mean 'temperature'?)"),
        (["--set", "temperature=hot"], "--set temperature=hot: expected a valid number"),
        (["--set", "max_tokens"], "--set max_tokens: --set expects KEY=VALUE"),
        (["--set", "stream=maybe"], "--set stream=maybe: expected a valid boolean"),
        (["--set", "seed=2024-01-01"], "2024-01-01 is read as a date; quote it to keep it as text"),
        (["--set", "async_stream=true"], "'async_stream' is deprecated; use --set stream=..."),
        (["--set", "temperature=0.1", "--set", "temperature=0.2"], "is also given by --set temperature=0.1"),
        (["--provider", "mokc"], "--provider mokc: unknown provider 'mokc' (did you mean 'mock'?)"),
    ],
)
def test_bad_override_exits_2_naming_the_flag(project: Path, flags: list[str], expected: str) -> None:
    result = cli("run", "workflows/hello.yaml", "--mock", *flags, cwd=project)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert result.stderr.startswith("error: ")


def test_override_resolved_by_the_loader_points_at_the_flag(project: Path) -> None:
    result = cli("validate", "workflows/hello.yaml", cwd=project)  # the file itself is fine
    assert result.returncode == 0, result.stderr
    result = cli("run", "workflows/hello.yaml", "--mock", "--set", "stream_handler=consol", cwd=project)
    assert result.returncode == 2
    assert "--set stream_handler=consol: workflow.defaults.stream_handler: cannot use stream handler 'consol'" in (
        result.stderr
    )


def test_provider_without_its_package_names_the_extra(project: Path, without_anthropic: None) -> None:
    result = cli("run", "workflows/hello.yaml", "--provider", "anthropic", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "--provider anthropic: workflow.defaults.provider:" in result.stderr
    assert "pip install 'pipeline-ex[anthropic]'" in result.stderr


def test_mock_runs_every_step_on_the_mock_whatever_provider_is_given(project: Path) -> None:
    # --mock checks the provider's name and options, not its package or key, and calls the mock
    result = cli(
        "run", "workflows/hello.yaml", "--mock", "--provider", "openai", "--model", "gpt-x", "--json", cwd=project
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["poem"]["provider"] == "mock"


def test_overrides_apply_to_nested_workflows(project: Path) -> None:
    write(project / "inner.yaml", "workflow:\n  name: inner\n  steps:\n    - id: leaf\n      prompt: hi\n")
    write(project / "outer.yaml", "workflow:\n  name: outer\n  steps:\n    - id: nest\n      workflow: inner.yaml\n")
    result = cli("run", "outer.yaml", "--provider", "mock", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["nest"]["steps"]["leaf"]["provider"] == "mock"


def test_batch_takes_the_same_overrides(project: Path) -> None:
    (project / "rows.jsonl").write_text('{"topic": "cats"}\n{"topic": "dogs"}\n', encoding="utf-8")
    result = cli(
        "batch", "workflows/hello.yaml", "--inputs", "rows.jsonl", "--output", "out.jsonl", "--provider", "mock",
        "--set", "max_tokens=10", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(project / "out.jsonl")
    texts = sorted(row["steps"]["poem"] for row in rows)  # the mock's replies: the file's 'local' is replaced
    assert texts == [
        "Mock reply to: Write a four-line poem about cats.",
        "Mock reply to: Write a four-line poem about dogs.",
    ]
    assert "--set max_tokens=10 does not apply to step 'poem' (sets max_tokens: 200" in result.stderr
    bad = cli(
        "batch", "workflows/hello.yaml", "--inputs", "rows.jsonl", "--output", "o.jsonl", "--set", "x=1", cwd=project
    )
    assert bad.returncode == 2 and "--set x=1: unknown key 'x'" in bad.stderr
    remote = cli(
        "batch", "workflows/hello.yaml", "--inputs", "rows.jsonl", "--output", "o.jsonl", "--model", "m",
        "--redis", "redis://127.0.0.1:1", cwd=project,
    )  # fmt: skip
    assert remote.returncode == 2
    assert "the workers of --redis load the workflow file themselves" in remote.stderr


def test_overrides_from_python_are_a_load_option(tmp_path: Path) -> None:
    import warnings

    from pipeline_ex import RunOverrides, load_workflow
    from pipeline_ex.workflow import OverrideError, OverrideWarning

    path = write(tmp_path / "mixed.yaml", GUIDE_STEPS)
    overrides = RunOverrides.from_command_line(provider="mock", settings=["temperature=0.1", "options.delay_ms=5"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_workflow(path, mock=True, overrides=overrides)
    inherits, own = loaded.steps
    assert (inherits.provider, inherits.options["temperature"], inherits.options["delay_ms"]) == ("mock", 0.1, 5)
    assert own.options["temperature"] == 0.5  # the step's own value
    assert loaded.workflow.defaults.provider == "mock"
    (warning,) = [w for w in caught if issubclass(w.category, OverrideWarning)]
    assert "--set temperature=0.1 does not apply to step 'own'" in str(warning.message)
    with pytest.raises(
        OverrideError, match=r"--set max_token=1: unknown key 'max_token' \(did you mean 'max_tokens'\?\)"
    ):
        RunOverrides.from_command_line(settings=["max_token=1"])


# ---------------------------------------------------------------------------------------------------------
# --json when a run fails
# ---------------------------------------------------------------------------------------------------------

ERROR_KEYS = {"type", "message", "step", "run_id", "resume", "issues"}
TOP_KEYS = {"ok", "run_id", "workflow", "steps", "values", "vars", "outputs", "error"}

FAILS_IN_THE_MIDDLE = """
    workflow:
      name: fails_in_the_middle
      steps:
        - id: first
          provider: mock
          prompt: "hello"
          output_to_file: first.md
        - id: flaky
          provider: mock
          prompt: "hello"
          options:
            mock_response: ["one ", "two ", "three"]
            error_after: 2
        - id: never
          provider: mock
          prompt: "not reached"
    """


def test_json_failure_object_has_the_error_and_the_finished_steps(project: Path) -> None:
    write(project / "fail.yaml", FAILS_IN_THE_MIDDLE)
    result = cli("run", "fail.yaml", "--json", "--output-dir", "out", "--set", "temperature=0.3", cwd=project)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)  # one JSON object and nothing else
    assert set(data) == TOP_KEYS and set(data["error"]) == ERROR_KEYS
    assert data["ok"] is False
    assert data["workflow"] == "fails_in_the_middle"
    error = data["error"]
    assert error["type"] == "provider"
    assert error["step"] == "flaky"
    assert "error_after=2" in error["message"]
    assert error["run_id"] == data["run_id"]
    assert error["issues"] == []
    assert list(data["steps"]) == ["first"]  # the finished steps, which a resume does not run again
    assert data["steps"]["first"]["text"] == "Mock reply to: hello"
    assert Path(data["outputs"]["first"]).name == "first.md"
    assert error["resume"] == (
        f"pipeline-ex run fail.yaml --resume {data['run_id']} --output-dir out --set temperature=0.3"
    )
    # the command resumes the run: 'first' is restored, 'flaky' runs again (and fails again)
    again = cli(*shlex.split(error["resume"])[1:], "--json", cwd=project)
    assert again.returncode == 1, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["run_id"] == data["run_id"] and resumed["error"]["step"] == "flaky"
    assert resumed["steps"]["first"] == data["steps"]["first"]
    # without the same --set, the run is not continued with other defaults
    other = cli("run", "fail.yaml", "--resume", data["run_id"], "--output-dir", "out", "--json", cwd=project)
    assert other.returncode == 2
    refused = json.loads(other.stdout)["error"]
    assert refused["type"] == "resume" and "changed since run" in refused["message"]


def test_json_failure_of_a_python_step_names_it_and_keeps_the_traceback(project: Path) -> None:
    (project / "boom.py").write_text("def explode(ctx):\n    raise RuntimeError('kaboom')\n", encoding="utf-8")
    write(
        project / "boom.yaml",
        """
        workflow:
          name: boom
          steps:
            - id: first
              provider: mock
              prompt: hi
            - id: explode
              type: python
              callable: boom:explode
        """,
    )
    result = cli("run", "boom.yaml", "--json", cwd=project)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["error"]["type"] == "step"
    assert data["error"]["step"] == "explode"  # the step the checkpoint has started but not finished
    assert data["error"]["message"] == "RuntimeError: kaboom"
    assert data["error"]["resume"].startswith("pipeline-ex run boom.yaml --resume ")
    assert list(data["steps"]) == ["first"]
    assert "Traceback" in result.stderr  # a python step's own error: its traceback is the user's to read


def test_json_failure_of_a_terminated_run_is_cancelled_and_resumable(project: Path) -> None:
    chunks = ", ".join(f'"w{i} "' for i in range(200))  # 200 x 50 ms: far longer than the test waits
    write(
        project / "slow.yaml",
        f"""
        workflow:
          name: slow
          steps:
            - id: quick
              provider: mock
              prompt: "first"
            - id: slow
              provider: mock
              prompt: "go slowly"
              options: {{delay_ms: 50, mock_response: [{chunks}]}}
              stream_handler: jsonl
              stream_handler_options: {{path: slow.jsonl}}
        """,
    )
    result = signal_after_lines(
        "run", "slow.yaml", "--json", cwd=project, lines_in=project / "slow.jsonl", count=2, signum=signal.SIGTERM
    )
    stdout, stderr = result.stdout, result.stderr
    assert result.returncode == 143, stderr
    data = json.loads(stdout)
    assert data["ok"] is False
    assert data["error"]["type"] == "cancelled" and data["error"]["message"] == "terminated"
    assert data["error"]["step"] == "slow"
    assert data["error"]["resume"] == f"pipeline-ex run slow.yaml --resume {data['run_id']}"
    assert list(data["steps"]) == ["quick"]


def test_json_success_object_has_ok_and_no_error(project: Path) -> None:
    result = cli("run", "workflows/hello.yaml", "--mock", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == TOP_KEYS
    assert data["ok"] is True and data["error"] is None


def test_json_workflow_error_lists_the_issues(project: Path) -> None:
    write(
        project / "bad.yaml", "workflow:\n  name: bad\n  steps:\n    - id: a\n      prompt: hi\n      temprature: 1\n"
    )
    result = cli("run", "bad.yaml", "--mock", "--json", cwd=project)
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["run_id"] is None and data["steps"] == {}
    assert data["error"]["type"] == "workflow"
    (issue,) = data["error"]["issues"]
    assert issue == {
        "file": "bad.yaml",
        "line": 6,
        "column": 7,
        "key": "workflow.steps[0].temprature",
        "message": "unknown key 'temprature' (did you mean 'temperature'?)",
    }
    assert "bad.yaml:6:7" in result.stderr  # the text error still goes to stderr


@pytest.mark.parametrize(
    ("args", "kind", "expected"),
    [
        (["--input", "nope=1"], "input", "unknown input 'nope'"),
        (["--input", "novalue"], "usage", "--input expects NAME=VALUE"),
        (["--set", "temprature=1"], "usage", "did you mean 'temperature'?"),
        (["--resume", "0123abcd"], "resume", "no checkpoint of run 0123abcd"),
        (["topic=cats"], "usage", "inputs are given with --input topic=cats"),
    ],
)
def test_json_errors_before_the_run_are_json_too(project: Path, args: list[str], kind: str, expected: str) -> None:
    result = cli("run", "workflows/hello.yaml", "--mock", "--json", *args, cwd=project)
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == TOP_KEYS and set(data["error"]) == ERROR_KEYS
    assert data["error"]["type"] == kind
    assert expected in data["error"]["message"]


# ---------------------------------------------------------------------------------------------------------
# Hints for arguments a command does not take
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "workflows/hello.yaml", "topic=cats"],
            "pipeline-ex run: error: unexpected argument 'topic=cats'; inputs are given with --input topic=cats",
        ),
        (
            ["run", "topic=cats", "workflows/hello.yaml"],
            "pipeline-ex run: error: unexpected argument 'topic=cats'; inputs are given with --input topic=cats",
        ),
        (
            ["run", "workflows/hello.yaml", "--inputs", "rows.jsonl"],
            "--inputs is pipeline-ex batch's flag (a file of rows); for run, use --input NAME=VALUE",
        ),
        (["run", "workflows/hello.yaml", "--mokc"], "unknown flag '--mokc' (did you mean --mock?)"),
        (
            ["run", "workflows/hello.yaml", "--redis", "redis://x"],
            "--redis is a flag of pipeline-ex batch, serve and worker, not of pipeline-ex run",
        ),
        (["validate", "workflows/hello.yaml", "--jsn"], "pipeline-ex validate: error: unknown flag '--jsn'"),
        (["serve", "--prot", "80"], "unknown flag '--prot' (did you mean --port?)"),
    ],
)
def test_unexpected_arguments_get_a_hint_and_exit_2(project: Path, args: list[str], expected: str) -> None:
    result = cli(*args, cwd=project)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "usage:" not in result.stderr  # the hint, not argparse's bare usage error
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------------------
# -v / -q
# ---------------------------------------------------------------------------------------------------------

INFO_LINE = "info: run "  # which run started, and where its checkpoint is


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_info_lines_hidden_by_default(project: Path, where: str) -> None:
    plain = cli("run", "workflows/hello.yaml", "--mock", cwd=project)
    assert plain.returncode == 0, plain.stderr
    assert INFO_LINE not in plain.stderr
    args = (
        ["-v", "run", "workflows/hello.yaml", "--mock"]
        if where == "before"
        else ["run", "workflows/hello.yaml", "--mock", "--verbose"]
    )
    verbose = cli(*args, cwd=project)
    assert verbose.returncode == 0, verbose.stderr
    assert "info: run " in verbose.stderr and "of 'hello' (workflows/hello.yaml, 1 top-level step(s))" in verbose.stderr
    assert "provider chunk" not in verbose.stderr  # that is -vv's


def test_double_verbose_logs_every_chunk_and_event(project: Path) -> None:
    result = cli("-v", "run", "workflows/hello.yaml", "--mock", "-v", cwd=project)  # counted across both places
    assert result.returncode == 0, result.stderr
    assert "provider chunk" in result.stderr
    assert "[debug" in result.stderr


RETRIED = """
    workflow:
      name: retried
      steps:
        - id: flaky
          provider: mock
          prompt: "hello"
          retries: 1
          options: {error_after: 0}
    """


def test_quiet_hides_warnings_shown_by_default(project: Path) -> None:
    # a Python warning (a legacy key) and a logged warning (a retry) both show by default...
    write(project / "retried.yaml", RETRIED)
    deprecated = cli("run", "workflows/guide_before.yaml", "--mock", cwd=project)
    retried = cli("run", "retried.yaml", cwd=project)
    assert deprecated.returncode == 0, deprecated.stderr
    assert "deprecated:" in deprecated.stderr
    assert retried.returncode == 1
    assert "warning: step 'flaky': attempt 1 of 2 failed before any output" in retried.stderr
    # ...and -q (before or after the command) hides them, but not the errors
    quiet = cli("-q", "run", "workflows/guide_before.yaml", "--mock", cwd=project)
    assert quiet.returncode == 0, quiet.stderr
    assert "deprecated" not in quiet.stderr
    assert "Mock reply to: Write a short report on streaming." in quiet.stdout  # the output itself is untouched
    quiet_retried = cli("run", "retried.yaml", "--quiet", cwd=project)
    assert quiet_retried.returncode == 1
    assert "warning:" not in quiet_retried.stderr
    assert "error: step 'flaky' failed" in quiet_retried.stderr


def test_verbose_and_quiet_together_is_a_usage_error(project: Path) -> None:
    result = cli("-v", "run", "workflows/hello.yaml", "--mock", "-q", cwd=project)
    assert result.returncode == 2
    assert "-v and -q ask for opposite things" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Shell completion
# ---------------------------------------------------------------------------------------------------------


def _bash_completions(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of `words` after sourcing `script`, as the shell's own completion calls it."""
    quoted = " ".join(shlex.quote(word) for word in words)
    program = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
        f'COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}\n'
        f'_shtab_pipeline_ex pipeline-ex "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    return done.stdout.split()


def test_bash_completion_completes_commands_flags_and_workflow_files(project: Path) -> None:
    result = cli("completion", "bash", cwd=project, script=True)
    assert result.returncode == 0, result.stderr
    script = project / "pipeline-ex.bash"
    script.write_text(result.stdout, encoding="utf-8")
    commands = _bash_completions(script, ["pipeline-ex", ""], project)
    assert {"run", "validate", "batch", "serve", "completion"} <= set(commands)
    assert _bash_completions(script, ["pipeline-ex", "va"], project) == ["validate"]
    run_flags = set(_bash_completions(script, ["pipeline-ex", "run", "--"], project))
    assert {"--input", "--mock", "--json", "--provider", "--model", "--set", "--verbose", "--quiet"} <= run_flags
    assert "--inputs" not in run_flags
    (project / "workflows" / "notes.txt").write_text("not a workflow", encoding="utf-8")
    files = _bash_completions(script, ["pipeline-ex", "run", "workflows/h"], project)
    assert files == ["workflows/hello.yaml"]
    assert "workflows/notes.txt" not in _bash_completions(script, ["pipeline-ex", "run", "workflows/"], project)
    assert sorted(_bash_completions(script, ["pipeline-ex", "completion", ""], project)) == sorted(SHELLS)


@pytest.mark.parametrize(
    ("shell", "marker", "flag"),
    [("zsh", "#compdef pipeline-ex", "--provider"), ("tcsh", "complete pipeline-ex", " provider ")],
)
def test_zsh_and_tcsh_completion_scripts(project: Path, shell: str, marker: str, flag: str) -> None:
    result = cli("completion", shell, cwd=project)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert flag in result.stdout
    assert "*.yaml" in result.stdout  # workflow files complete for FILE


def test_completion_needs_a_known_shell(project: Path) -> None:
    result = cli("completion", "fish", cwd=project)
    assert result.returncode == 2
    assert "invalid choice: 'fish'" in result.stderr


def test_help_and_run_do_not_import_shtab(project: Path) -> None:
    # shtab costs tens of milliseconds to import; only `completion` pays for it
    probe = (
        "import contextlib, sys\n"
        "from pipeline_ex.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "main(['run', 'workflows/hello.yaml', '--mock'])\n"
        "print('shtab imported:', 'shtab' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, env=cli_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("shtab imported: False")
