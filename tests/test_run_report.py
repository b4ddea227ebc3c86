"""What `pipeline-ex run` prints on stderr around the model's text, run as a real subprocess.

- A step that stops at its token limit (`finish_reason == "length"`) gets a hint naming the limit and the
  file and line where `max_tokens` is set (or where to set it).
- The run ends with one total line: status, steps, tokens, wall time and the files written; on failure
  and cancellation too, never on stdout, and not with `quiet`.
- A step cancelled mid-stream (SIGTERM) still reports what is known of its tokens: the chunks it streamed,
  and for the local model (one token per chunk) an output token count labelled as an estimate.
- On a terminal, a status line shows while the local model loads, erased before the first token.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_kit import REPO, cli, cli_env, cli_on_a_pty, read_jsonl, signal_after_lines, slow_workflow, write

from pipeline_ex import load_workflow, run
from pipeline_ex.cli import _cmd_run, build_parser
from pipeline_ex.run_report import RunReport

pytestmark = pytest.mark.streaming

TIMEOUT = 120
TOTAL_TIME = r"\d+\.\d s"

KEEP_EVENTS = '''
class KeepEvents:
    """Appends every event of its step to events.jsonl, as JSON lines."""

    def __init__(self):
        self.file = open("events.jsonl", "a", encoding="utf-8")

    def handle_event(self, event):
        self.file.write(event.model_dump_json() + "\\n")
        self.file.flush()
'''


def test_the_subprocesses_run_this_checkout(tmp_path: Path) -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import pipeline_ex.run_report as m; print(m.__file__)"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(REPO), found


# -- the length hint ---------------------------------------------------------------------------------------

CUT_SHORT = """
workflow:
  name: cut
  defaults:
    provider: mock
    max_tokens: 7
  steps:
    - id: draft
      prompt: "Draft it"
      max_tokens: 5
      options: {mock_response: "one two three four five", finish_reason: length}
    - id: notes
      prompt: "Notes"
      options: {mock_response: "a b c", finish_reason: length}
    - id: items
      for_each: [1, 2]
      steps:
        - id: each
          prompt: "Item {{ item }}"
          options: {mock_response: "x y", finish_reason: length}
    - id: closing
      prompt: "Close"
      options: {mock_response: "all done"}
"""

DRAFT_HINT = (
    "hint: step 'draft' stopped at its max_tokens limit (5) before the reply ended; raise max_tokens at cut.yaml:9"
)
NOTES_HINT = (
    "hint: step 'notes' stopped at its max_tokens limit (7) before the reply ended; raise max_tokens at cut.yaml:5 "
    "(the workflow's defaults), or set it on the step at cut.yaml:11"
)
EACH_HINT = (
    "hint: step 'items[0].each' (and 1 more of its runs) stopped at its max_tokens limit (7) before the reply "
    "ended; raise max_tokens at cut.yaml:5 (the workflow's defaults), or set it on the step at cut.yaml:17"
)


def test_a_step_cut_at_its_token_limit_gets_a_hint_naming_the_limit_and_where_to_raise_it(tmp_path: Path) -> None:
    write(tmp_path / "cut.yaml", CUT_SHORT)
    result = cli("run", "cut.yaml", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    hints = [line for line in lines if line.startswith("hint:")]
    assert hints == [DRAFT_HINT, NOTES_HINT, EACH_HINT]
    assert "[draft] length · 5 tokens" in result.stderr  # the step's own summary says it, before the hint
    assert lines.index(DRAFT_HINT) > max(i for i, line in enumerate(lines) if line.startswith("[closing] stop"))
    assert lines[-1].startswith("run ok · 5 steps ok · ")  # the hints come right before the total line
    assert "hint" not in result.stdout


def test_hints_find_steps_in_groups_loops_and_nested_workflows(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    write(
        tmp_path / "parts/inner.yaml",
        """
        workflow:
          name: inner
          defaults: {provider: mock}
          steps:
            - id: poem
              prompt: "p"
              options: {mock_response: "a b", finish_reason: length}
              max_tokens: 3
        """,
    )
    write(
        tmp_path / "outer.yaml",
        """
        workflow:
          name: outer
          defaults: {provider: mock}
          steps:
            - id: views
              parallel:
                - {id: pros, prompt: "pros", options: {mock_response: "p", finish_reason: length}}
                - {id: cons, prompt: "cons"}
            - id: refine
              loop: {until: "{{ false }}", max_iterations: 2}
              steps:
                - {id: critique, prompt: "c", options: {mock_response: "c c", finish_reason: length}}
            - id: appendix
              workflow: parts/inner.yaml
        """,
    )
    result = cli("run", "outer.yaml", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    unset = "stopped at the model's default output limit (no max_tokens is set) before the reply ended"
    assert [line for line in result.stderr.splitlines() if line.startswith("hint:")] == [
        f"hint: step 'pros' {unset}; set a higher max_tokens on the step at outer.yaml:7, or in the workflow's "
        "defaults:",
        f"hint: step 'refine[0].critique' (and 1 more of its runs) {unset}; set a higher max_tokens on the step at "
        "outer.yaml:12, or in the workflow's defaults:",
        "hint: step 'appendix.poem' stopped at its max_tokens limit (3) before the reply ended; raise max_tokens at "
        "parts/inner.yaml:8",
    ]
    assert result.stderr.splitlines()[-1].startswith("run ok · 5 steps ok · ")


def test_a_step_cut_at_the_providers_default_limit_is_told_where_to_set_one(
    tmp_path: Path, llm_mock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    workflow = write(
        tmp_path / "poem.yaml",
        """
        workflow:
          name: poem
          steps:
            - id: poem
              provider: local
              prompt: "Write a poem."
        """,
    )
    llm_mock.reply("Roses are red, violets", finish_reason="length")
    loaded = load_workflow(workflow, mock=True)
    run(loaded, mock=True, on_event=RunReport(loaded), output_dir=tmp_path / "out")
    hints = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hint:")]
    assert hints == [
        "hint: step 'poem' stopped at the local provider's default max_tokens (256) before the reply ended; set a "
        f"higher max_tokens on the step at {workflow}:4, or in the workflow's defaults:"
    ]


# -- the total line ----------------------------------------------------------------------------------------

TOTALS = """
workflow:
  name: totals
  defaults: {provider: mock}
  steps:
    - id: draft
      prompt: "Draft"
      options: {mock_response: "a b c", usage: {prompt_tokens: 11, completion_tokens: 3}}
      output_to_file: draft.md
    - id: check
      when: "{{ false }}"
      prompt: "never"
    - id: summary
      prompt: "Sum up"
      options: {mock_response: "x y", usage: {prompt_tokens: 20, completion_tokens: 2}, error_after: ERROR_AFTER}
      output_to_file: notes/summary.md
"""


def test_the_run_ends_with_one_total_line_of_steps_tokens_time_and_files(tmp_path: Path) -> None:
    write(tmp_path / "totals.yaml", TOTALS.replace("ERROR_AFTER", "null"))
    result = cli("run", "totals.yaml", "--output-dir", "out", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"run ok · 3 steps: 2 ok, 1 skipped · tokens 31 in / 5 out · {TOTAL_TIME} · wrote out/draft\.md, "
        r"out/notes/summary\.md",
        last,
    ), last
    assert result.stderr.count("run ok") == 1
    assert "run ok" not in result.stdout
    assert (tmp_path / "out" / "notes" / "summary.md").read_text() == "x y"


def test_with_json_stdout_stays_json_and_the_total_line_goes_to_stderr(tmp_path: Path) -> None:
    write(tmp_path / "totals.yaml", TOTALS.replace("ERROR_AFTER", "null"))
    result = cli("run", "totals.yaml", "--output-dir", "out", "--json", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["draft"]["text"] == "a b c"
    assert re.search(r"^run ok · 3 steps: 2 ok, 1 skipped · tokens 31 in / 5 out · ", result.stderr, re.M)


def test_a_failed_run_still_prints_its_total_line_naming_the_failed_step(tmp_path: Path) -> None:
    write(tmp_path / "totals.yaml", TOTALS.replace("ERROR_AFTER", "1"))
    result = cli("run", "totals.yaml", "--output-dir", "out", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    total = next(line for line in lines if line.startswith("run "))
    # The failed step's partial text was written too; it streamed one chunk and reported no usage.
    assert re.fullmatch(
        r"run failed at step 'summary' · 3 steps: 1 ok, 1 failed, 1 skipped · tokens 11 in / 3 out "
        rf"\(1 of 2 LLM steps reported none\) · {TOTAL_TIME} · wrote out/draft\.md, out/notes/summary\.md",
        total,
    ), total
    assert "[summary] error (provider: " in result.stderr and "tokens n/a (1 chunk streamed)" in result.stderr
    assert lines.index(total) < next(i for i, line in enumerate(lines) if line.startswith("error: step 'summary'"))


def test_tokens_unknown_when_no_step_reported_usage_never_zero(tmp_path: Path) -> None:
    write(
        tmp_path / "quiet_provider.yaml",
        """
        workflow:
          name: quiet_provider
          steps:
            - {id: one, provider: mock, prompt: "One", options: {mock_response: "a b", usage: null}}
        """,
    )
    result = cli("run", "quiet_provider.yaml", cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"run ok · 1 step ok · tokens unknown · {TOTAL_TIME}", result.stderr.splitlines()[-1])


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_leaves_the_total_line_out_but_keeps_the_hints(
    quiet: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cut.yaml", CUT_SHORT)
    args = build_parser().parse_args(["run", "cut.yaml", "--output-dir", "out"])
    args.quiet = quiet  # what `-q` sets
    assert _cmd_run(args) == 0
    err = capsys.readouterr().err
    assert DRAFT_HINT in err.splitlines()
    assert ("run ok · 5 steps ok" in err) is not quiet


# -- cancelled steps' tokens -------------------------------------------------------------------------------


def _terminated_run(folder: Path, workflow: Path, lines: int) -> tuple[str, list[dict[str, Any]]]:
    """Run the workflow file in `folder`, SIGTERM it once its step's events file has `lines` lines; return
    stderr and events."""
    (folder / "keep_events.py").write_text(KEEP_EVENTS, encoding="utf-8")
    events_file = folder / "events.jsonl"
    result = signal_after_lines(
        "run",
        workflow.name,
        cwd=folder,
        lines_in=events_file,
        count=lines,
        signum=signal.SIGTERM,
        wait=90,
        timeout=TIMEOUT,
    )
    assert result.returncode == 143, result.stderr
    return result.stderr, read_jsonl(events_file, skip_blank=False)


def test_a_cancelled_mock_step_reports_the_chunks_it_streamed_and_no_invented_usage(tmp_path: Path) -> None:
    workflow = slow_workflow(tmp_path, stream_handler=["console", "keep_events.KeepEvents"])
    stderr, events = _terminated_run(tmp_path, workflow, lines=5)
    done = events[-1]
    streamed = sum(1 for event in events if event["type"] == "delta")
    assert done["response"]["finish_reason"] == "cancelled"
    assert done["response"]["usage"] is None  # the mock reports usage at the end only: nothing to report
    assert done["response"]["meta"] == {"streamed_chunks": streamed}
    assert f"[slow] cancelled (cancelled: the step was cancelled) · tokens n/a ({streamed} chunks streamed)" in stderr
    assert re.search(rf"^run cancelled · 1 step cancelled · tokens unknown · {TOTAL_TIME}$", stderr, re.M), stderr


STORY = """
workflow:
  name: story
  steps:
    - id: story
      provider: local
      prompt: "Write a long story about the sea, the ships and the sailors."
      max_tokens: 400
      stream_handler: [console, keep_events.KeepEvents]
"""


@pytest.mark.local_model
def test_a_cancelled_local_step_reports_its_streamed_tokens_as_an_estimate(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    stderr, events = _terminated_run(tmp_path, write(tmp_path / "run.yaml", STORY), lines=12)
    done = events[-1]
    streamed = sum(1 for event in events if event["type"] == "delta")
    assert done["response"]["finish_reason"] == "cancelled" and streamed >= 11
    assert done["response"]["usage"] == {"input_tokens": None, "output_tokens": streamed, "total_tokens": None}
    assert done["response"]["meta"] == {
        "streamed_chunks": streamed,
        "usage_source": "estimated: one token per streamed chunk",
    }
    assert f"[story] cancelled (cancelled: the step was cancelled) · ~{streamed} tokens (estimated) · " in stderr
    total = next(line for line in stderr.splitlines() if line.startswith("run "))
    assert re.fullmatch(
        rf"run cancelled · 1 step cancelled · tokens ~{streamed} out \(~ estimated from the streamed chunks of a "
        rf"step that stopped early; input unknown\) · {TOTAL_TIME}",
        total,
    ), total
    assert "loading" not in stderr  # stderr is a pipe here: no status line


# -- the status line while the local model loads -----------------------------------------------------------

LOCAL_POEM = """
workflow:
  name: poem
  steps:
    - id: poem
      provider: local
      prompt: "Write a four-line poem about rivers."
      max_tokens: 60
      output_to_file: poem.md
"""


@pytest.mark.local_model
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("no_color", [True, False])
def test_a_terminal_shows_the_model_loading_then_the_tokens_then_the_total_line(no_color: bool, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    write(tmp_path / "poem.yaml", LOCAL_POEM)
    env = cli_env()
    if not no_color:
        del env["NO_COLOR"]
    code, _, printed = cli_on_a_pty("run", "poem.yaml", cwd=tmp_path, env=env, stdout_too=True, timeout=TIMEOUT)
    assert code == 0, printed
    status = re.search(rb"loading SmolLM2-135M-Instruct \(\d+ MB\)\xe2\x80\xa6", printed)
    assert status is not None, printed
    erased = printed.index(b"\r\x1b[K", status.end())
    poem = (tmp_path / "outputs" / "poem.md").read_text(encoding="utf-8")
    first_words = poem.strip().split("\n")[0][:20].encode()
    assert printed.index(first_words) > erased  # the first token comes after the status line is gone
    assert first_words not in printed[: status.start()]
    assert printed.startswith(b"\x1b[2mloading") is not no_color  # dimmed, unless NO_COLOR
    assert (b"\x1b[" in printed.replace(b"\r\x1b[K", b"")) is not no_color
    text = re.sub(r"\x1b\[[0-9;]*m", "", printed.decode().replace("\r\n", "\n"))
    last = text.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(rf"run ok · 1 step ok · tokens \d+ in / \d+ out · {TOTAL_TIME} · wrote outputs/poem\.md", last)


@pytest.mark.local_model
def test_the_status_line_is_erased_when_the_model_fails_to_load(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from pipeline_ex.errors import ProviderConfigError
    from pipeline_ex.llm.local_model import load_local_model
    from pipeline_ex.llm.model_loading import showing_model_loads
    from pipeline_ex.streaming.status_line import ModelLoadStatus

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model" * 300)
    screen = io.StringIO()
    with showing_model_loads(ModelLoadStatus(screen)), pytest.raises(ProviderConfigError, match="cannot load"):
        load_local_model(str(broken), 512)
    assert screen.getvalue() == "loading broken (3 kB)…\r\x1b[K"
    with pytest.raises(ProviderConfigError):  # outside the block nobody is told
        load_local_model(str(broken), 512)
    assert screen.getvalue() == "loading broken (3 kB)…\r\x1b[K"
