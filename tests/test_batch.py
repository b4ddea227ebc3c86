"""`pipeline-ex batch`: one workflow run per row of a JSON Lines file, concurrently and resumably.

The command runs as a real subprocess in a scratch project; LLM steps run on the project's own mock
provider, and rows fail for real: a python step raises for some inputs, or a row's input has the wrong type.
A few tests call `pipeline_ex.batch.run_batch` in-process, for the seam a remote row runner plugs into.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_kit import TIMEOUT, cli, cli_env, cli_on_a_pty, read_jsonl, signal_after_lines, write

from pipeline_ex.batch import RowOutcome, run_batch
from pipeline_ex.workflow.loader import load_workflow

ROWS = 200
UNLUCKY = {7, 27, 47, 67, 87, 107, 127, 147}
"""Values of `n` the python step raises for (8 rows); two more rows fail with an `n` that is no integer."""
WRONG_TYPE_ROWS = {50, 150}


def summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("batch: ")]
    assert len(lines) == 1, stderr
    return lines[0]


STEPS_MODULE = '''
import asyncio
import json
import os


def _log(name, text):
    """Append one line with one write (O_APPEND), so concurrent rows never mix their lines."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


def check(ctx):
    """Fails for unlucky numbers; logs every execution with the row's run id."""
    n = ctx.inputs["n"]
    _log("executions.log", f"{n} {ctx.run_id}")
    if n in UNLUCKY:
        raise ValueError(f"{n} is an unlucky number")
    return {"n": n, "double": 2 * n}


async def hold(ctx):
    """Records entering and leaving, with a pause between, to count the rows running at once."""
    _log("spans.log", f"enter {ctx.inputs['n']}")
    await asyncio.sleep(0.05)
    _log("spans.log", f"exit {ctx.inputs['n']}")


def handle_event(event):
    """A module stream handler: log every Done with its run id and finish reason."""
    if event.type == "done":
        _log("dones.log", json.dumps({"run_id": event.run_id, "reason": event.response.finish_reason}))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project with a python step module (`batchsteps`) and a workflow using it."""
    (tmp_path / "batchsteps.py").write_text(f"UNLUCKY = {sorted(UNLUCKY)!r}\n{STEPS_MODULE}", encoding="utf-8")
    write(
        tmp_path / "numbers.yaml",
        """
        workflow:
          name: numbers
          inputs:
            n: {type: integer}
          steps:
            - id: check
              type: python
              callable: batchsteps.check
            - id: reply
              provider: mock
              prompt: "Say {{ inputs.n }} twice"
        """,
    )
    return tmp_path


def write_rows(path: Path, count: int = ROWS, wrong: frozenset[int] | set[int] = frozenset()) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for n in range(1, count + 1):
            file.write(json.dumps({"n": "many" if n in wrong else n}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------
# a whole batch
# ---------------------------------------------------------------------------------------------------------


def test_200_rows_with_10_failing_exits_1_and_records_each_failure(project: Path) -> None:
    write_rows(project / "rows.jsonl", wrong=WRONG_TYPE_ROWS)
    result = cli("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--mock", cwd=project)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = read_jsonl(project / "results.jsonl")
    assert sorted(line["row"] for line in lines) == list(range(1, ROWS + 1))
    by_row = {line["row"]: line for line in lines}
    failed = {row for row, line in by_row.items() if line["status"] == "failed"}
    assert failed == UNLUCKY | WRONG_TYPE_ROWS

    ok = by_row[3]
    assert set(ok) == {"row", "inputs", "status", "run_id", "steps", "error", "usage"}
    assert ok["inputs"] == {"n": 3} and ok["status"] == "ok" and ok["error"] is None
    assert ok["steps"] == {"check": {"n": 3, "double": 6}, "reply": "Mock reply to: Say 3 twice"}
    assert ok["usage"] == {"input_tokens": 3, "output_tokens": 6, "total_tokens": 9}
    assert len({line["run_id"] for line in lines if line["run_id"]}) == ROWS - len(WRONG_TYPE_ROWS)

    raised = by_row[27]
    assert raised["steps"] == {} and raised["run_id"]
    assert raised["error"] == {"type": "step", "message": "ValueError: 27 is an unlucky number", "step": "check"}
    wrong = by_row[50]
    assert wrong["inputs"] == {"n": "many"} and wrong["run_id"] is None
    assert wrong["error"]["type"] == "input"
    assert wrong["error"]["message"].startswith("rows.jsonl:50: input 'n' must be an integer")
    assert "numbers.yaml:4" in wrong["error"]["message"]

    tokens = sum(line["usage"]["total_tokens"] for line in lines if line["usage"])
    prompt = sum(line["usage"]["input_tokens"] for line in lines if line["usage"])
    completion = sum(line["usage"]["output_tokens"] for line in lines if line["usage"])
    summary = summary_line(result.stderr)
    assert re.fullmatch(
        rf"batch: 190 ok, 10 failed, 0 skipped \(already in results\.jsonl\); {tokens:,} tokens "
        rf"\({prompt:,} prompt \+ {completion:,} completion\); \d+\.\d s",
        summary,
    ), summary
    # off a terminal, one quiet line per failed row and then the summary
    assert "row 27 failed at step 'check': ValueError: 27 is an unlucky number" in result.stderr
    assert "row 50 failed (input): rows.jsonl:50: input 'n' must be an integer" in result.stderr
    assert len(result.stderr.splitlines()) == 11, result.stderr


def test_lines_that_are_not_json_objects_are_failed_rows_named_by_line(project: Path) -> None:
    (project / "rows.jsonl").write_text('{"n": 1}\n\nnot json\n[1, 2]\n{"n": 5}\n{"m": 6}\n', encoding="utf-8")
    result = cli("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", cwd=project)
    assert result.returncode == 1, result.stderr
    by_row = {line["row"]: line for line in read_jsonl(project / "results.jsonl")}
    assert sorted(by_row) == [1, 3, 4, 5, 6]  # line 2 is blank: no row, but rows keep their line numbers
    assert by_row[1]["status"] == by_row[5]["status"] == "ok"
    not_json = by_row[3]
    assert not_json["status"] == "failed" and not_json["inputs"] is None and not_json["run_id"] is None
    assert not_json["error"]["type"] == "input"
    assert not_json["error"]["message"].startswith("rows.jsonl:3: not JSON (Expecting value at column 1)")
    assert "one JSON object of inputs" in not_json["error"]["message"]
    assert by_row[4]["error"]["message"].startswith("rows.jsonl:4: a row is a JSON object of inputs")
    assert by_row[4]["error"]["message"].endswith("not an array")
    assert by_row[6]["error"]["message"] == "rows.jsonl:6: unknown input 'm'; declared: n"
    assert "3 failed" in summary_line(result.stderr)


# ---------------------------------------------------------------------------------------------------------
# stopping and resuming
# ---------------------------------------------------------------------------------------------------------

SLOW_WORKFLOW = """
workflow:
  name: slow_numbers
  inputs:
    n: {type: integer}
  steps:
    - id: check
      type: python
      callable: batchsteps.check
    - id: reply
      provider: mock
      prompt: "Say {{ inputs.n }} slowly"
      options:
        delay_ms: 20
        mock_response: [one, " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten"]
      stream_handler: "batchsteps:handle_event"
"""


# about 6 s each: a stopped batch of slow rows, then the rest of it
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_stopped_batch_keeps_whole_lines_and_a_rerun_finishes_only_the_rest(
    project: Path, signum: int, code: int, word: str
) -> None:
    (project / "slow.yaml").write_text(SLOW_WORKFLOW, encoding="utf-8")
    (project / "batchsteps.py").write_text(f"UNLUCKY = []\n{STEPS_MODULE}", encoding="utf-8")
    write_rows(project / "rows.jsonl")
    output = project / "results.jsonl"
    args = ("batch", "slow.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--concurrency", "4")
    result = signal_after_lines(*args, cwd=project, lines_in=output, count=12, signum=signum, timeout=TIMEOUT)
    stdout, stderr = result.stdout, result.stderr
    assert result.returncode == code, stderr
    assert stdout == "" and "Traceback" not in stderr
    assert f"error: {word}; " in stderr and "run the same command to finish" in stderr
    text = output.read_text(encoding="utf-8")
    assert text.endswith("\n")
    first = read_jsonl(output)  # every line is whole JSON
    written = {line["row"]: line["run_id"] for line in first}
    assert len(written) == len(first) and 12 <= len(first) < ROWS
    assert f"error: {word}; {len(first)} rows (0 failed) written to results.jsonl by this run" in stderr

    # the rows that were running when the batch stopped were cancelled: Done(cancelled), not written
    dones = [json.loads(line) for line in (project / "dones.log").read_text().splitlines()]
    assert len({d["run_id"] for d in dones}) == len(dones)  # one Done per run
    cancelled = {d["run_id"] for d in dones if d["reason"] == "cancelled"}
    assert cancelled and not cancelled & set(written.values())
    assert set(written.values()) <= {d["run_id"] for d in dones if d["reason"] == "stop"}

    again = cli(
        "batch", "slow.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--concurrency", "40", cwd=project
    )
    assert again.returncode == 0, again.stderr
    assert f"batch: {ROWS - len(first)} ok, 0 failed, {len(first)} skipped (already in results.jsonl)" in again.stderr
    lines = read_jsonl(output)
    assert sorted(line["row"] for line in lines) == list(range(1, ROWS + 1))  # every row exactly once
    assert lines[: len(first)] == first  # the first run's lines stay as they were
    runs_per_row: dict[int, int] = {}
    for entry in (project / "executions.log").read_text().splitlines():
        n = int(entry.split()[0])
        runs_per_row[n] = runs_per_row.get(n, 0) + 1
    assert sorted(runs_per_row) == list(range(1, ROWS + 1))
    assert all(runs_per_row[row] == 1 for row in written)  # the finished rows did not run again


def test_a_truncated_last_line_is_dropped_with_a_warning_and_its_row_runs_again(project: Path) -> None:
    write_rows(project / "rows.jsonl", count=6)
    output = project / "results.jsonl"
    args = ("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--concurrency", "1")
    assert cli(*args, cwd=project).returncode == 0
    lines = output.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 6
    output.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2], encoding="utf-8")  # as SIGKILL leaves it

    result = cli(*args, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "warning: results.jsonl:5: dropped an incomplete last line" in result.stderr
    assert "no newline at its end" in result.stderr
    assert "batch: 2 ok, 0 failed, 4 skipped" in result.stderr
    repaired = read_jsonl(output)
    assert [line["row"] for line in repaired] == [1, 2, 3, 4, 5, 6]
    assert [json.dumps(line) for line in repaired[:4]] == [json.dumps(json.loads(line)) for line in lines[:4]]

    # a last line that ends but is not JSON is dropped too
    output.write_text("".join(lines[:5]) + "{oops\n", encoding="utf-8")
    result = cli(*args, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "warning: results.jsonl:6: dropped an incomplete last line (6 bytes, not JSON)" in result.stderr
    assert [line["row"] for line in read_jsonl(output)] == [1, 2, 3, 4, 5, 6]


def test_rows_that_failed_earlier_are_skipped_and_still_make_the_exit_code_1(project: Path) -> None:
    write_rows(project / "rows.jsonl", count=8)
    args = ("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl")
    assert cli(*args, cwd=project).returncode == 1  # row 7 is unlucky
    result = cli(*args, cwd=project)
    assert result.returncode == 1
    assert "batch: 0 ok, 0 failed, 8 skipped (already in results.jsonl; 1 failed in an earlier run)" in result.stderr
    # to retry a failed row, delete its line
    output = project / "results.jsonl"
    output.write_text("".join(line + "\n" for line in output.read_text().splitlines() if '"row": 7,' not in line))
    (project / "batchsteps.py").write_text(f"UNLUCKY = []\n{STEPS_MODULE}", encoding="utf-8")
    result = cli(*args, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "batch: 1 ok, 0 failed, 7 skipped" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# concurrency, output files, progress
# ---------------------------------------------------------------------------------------------------------


def test_concurrency_bounds_the_rows_running_at_once(project: Path) -> None:
    write(
        project / "hold.yaml",
        """
        workflow:
          name: hold
          inputs:
            n: {type: integer}
          steps:
            - id: hold
              type: python
              callable: batchsteps.hold
        """,
    )
    write_rows(project / "rows.jsonl", count=24)
    args = ["batch", "hold.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--concurrency", "3"]
    result = cli(*args, cwd=project)
    assert result.returncode == 0, result.stderr
    running = most = 0
    spans = (project / "spans.log").read_text().splitlines()
    assert len(spans) == 48
    for span in spans:
        running += 1 if span.startswith("enter") else -1
        most = max(most, running)
    assert most == 3


def test_output_dir_holds_each_rows_files_and_a_shared_file_name_is_warned_about(project: Path) -> None:
    write(
        project / "files.yaml",
        """
        workflow:
          name: files
          inputs:
            n: {type: integer}
          steps:
            - id: own
              provider: mock
              prompt: "row {{ inputs.n }}"
              output_to_file: "row-{{ inputs.n }}.md"
            - id: shared
              provider: mock
              prompt: "row {{ inputs.n }} again"
              output_to_file: shared.md
        """,
    )
    write_rows(project / "rows.jsonl", count=5)
    result = cli(
        "batch", "files.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", "--output-dir", "out", cwd=project
    )
    assert result.returncode == 0, result.stderr
    for n in range(1, 6):
        assert (project / "out" / f"row-{n}.md").read_text(encoding="utf-8") == f"Mock reply to: row {n}"
    assert (project / "out" / "shared.md").is_file() and not (project / "outputs").exists()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr  # said once per batch
    assert "shared.md (output_to_file of step 'shared')" in warnings[0]
    assert "put an input in the file name" in warnings[0]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal(project: Path) -> None:
    write_rows(project / "rows.jsonl", count=20)
    args = ("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl")
    code, out, tty = cli_on_a_pty(*args, cwd=project, env=cli_env(TERM="xterm", COLUMNS="120"))
    stdout, stderr = out.decode(), tty.decode(errors="replace")
    assert code == 1, stderr  # row 7 is unlucky
    assert stdout == ""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr)
    assert re.search(r"batch .*20/20 19 ok, 1 failed \d:\d\d:\d\d", plain), plain
    assert "\x1b[" in stderr  # the bar is redrawn in place
    assert "row 7 failed at step 'check': ValueError: 7 is an unlucky number" in plain
    assert "batch: 19 ok, 1 failed, 0 skipped" in plain


def test_no_progress_bar_off_a_terminal(project: Path) -> None:
    write_rows(project / "rows.jsonl", count=3)
    result = cli("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", cwd=project)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [summary_line(result.stderr)]
    assert "\x1b[" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# usage errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["numbers.yaml", "--inputs", "nope.jsonl"], "error: no inputs file at nope.jsonl (in "),
        (["nope.yaml", "--inputs", "rows.jsonl"], "nope.yaml"),
        (["numbers.yaml", "--inputs", "rows.jsonl", "--concurrency", "0"], "must be at least 1, got 0"),
        (["numbers.yaml", "--inputs", "rows.jsonl", "--output", "rows.jsonl"], "are the same file (rows.jsonl)"),
        (["numbers.yaml", "--output", "results.jsonl"], "the following arguments are required: --inputs"),
    ],
    ids=["missing-inputs", "missing-workflow", "concurrency-0", "same-file", "no-inputs-option"],
)
def test_usage_errors_exit_2_with_a_clear_message(project: Path, args: list[str], expected: str) -> None:
    write_rows(project / "rows.jsonl", count=2)
    if "--output" not in args:
        args = [*args, "--output", "results.jsonl"]
    result = cli("batch", *args, cwd=project)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert result.stdout == ""
    assert not (project / "results.jsonl").exists()
    if "nope.yaml" in args:
        assert "cannot read" in result.stderr


def test_an_invalid_workflow_exits_2_with_file_and_line(project: Path) -> None:
    write(project / "bad.yaml", "workflow:\n  name: bad\n  steps:\n    - id: a\n      prompt: '{{ inputs.nope }}'\n")
    write_rows(project / "rows.jsonl", count=2)
    result = cli("batch", "bad.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", cwd=project)
    assert result.returncode == 2
    assert "bad.yaml:5:" in result.stderr and "inputs.nope" in result.stderr


def test_an_output_file_with_a_foreign_line_exits_2_naming_it(project: Path) -> None:
    write_rows(project / "rows.jsonl", count=2)
    (project / "results.jsonl").write_text('{"row": 1, "status": "ok"}\nhello\n{"row": 2, "status": "ok"}\n')
    result = cli("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", cwd=project)
    assert result.returncode == 2
    assert "error: results.jsonl:2: not a line of batch results ('hello')" in result.stderr
    assert "Delete or fix that line, or give another --output" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_batch_on_the_same_output_exits_2(project: Path) -> None:
    import fcntl

    write_rows(project / "rows.jsonl", count=2)
    with (project / "results.jsonl").open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as a running batch holds it
        result = cli("batch", "numbers.yaml", "--inputs", "rows.jsonl", "--output", "results.jsonl", cwd=project)
    assert result.returncode == 2
    assert "error: results.jsonl is being written by another batch" in result.stderr
    assert (project / "results.jsonl").read_bytes() == b""


def test_batch_help_and_it_does_not_import_haystack(project: Path) -> None:
    code = (
        "import sys\nfrom pipeline_ex.cli import main\n"
        "try:\n    main(['batch', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('haystack', 'rich')], 'heavy imports'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pipeline-ex batch")
    for flag in ("--inputs", "--output", "--concurrency", "--mock", "--output-dir"):
        assert flag in result.stdout


# ---------------------------------------------------------------------------------------------------------
# the Python API: run_batch and its row runner
# ---------------------------------------------------------------------------------------------------------

GROUPS_WORKFLOW = """
workflow:
  name: groups
  inputs:
    topic: {default: tides}
  steps:
    - id: both
      parallel:
        - {id: left, prompt: "left {{ inputs.topic }}"}
        - {id: right, prompt: "right {{ inputs.topic }}"}
    - id: each
      for_each: "{{ ['a', 'b'] }}"
      as: letter
      steps:
        - {id: say, prompt: "say {{ letter }}"}
    - id: again
      loop: {max_iterations: 2}
      steps:
        - {id: echo, prompt: "echo {{ inputs.topic }}"}
    - id: never
      when: "{{ false }}"
      prompt: "not asked"
    - {id: remember, type: set, vars: {seen: "yes"}}
"""


async def test_steps_hold_text_for_llm_steps_and_groups(tmp_path: Path) -> None:
    (tmp_path / "groups.yaml").write_text(GROUPS_WORKFLOW, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text('{"topic": "rivers"}\n', encoding="utf-8")
    loaded = load_workflow(tmp_path / "groups.yaml", mock=True)
    summary = await run_batch(loaded, tmp_path / "rows.jsonl", tmp_path / "out.jsonl", mock=True, output_dir=tmp_path)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 0, 0)
    (line,) = read_jsonl(tmp_path / "out.jsonl")
    assert line["steps"] == {
        "both": ["left", "right"],
        "left": "Mock reply to: left rivers",
        "right": "Mock reply to: right rivers",
        "each": [{"say": "Mock reply to: say a"}, {"say": "Mock reply to: say b"}],
        "again": [{"echo": "Mock reply to: echo rivers"}] * 2,
        "never": None,
    }


async def test_a_custom_row_runner_decides_each_rows_outcome(tmp_path: Path) -> None:
    (tmp_path / "groups.yaml").write_text(GROUPS_WORKFLOW, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(1, 11)))
    loaded = load_workflow(tmp_path / "groups.yaml", mock=True)
    calls: list[tuple[int, dict[str, Any]]] = []
    running = most = 0

    async def remote(row: int, inputs: dict[str, Any]) -> RowOutcome:
        nonlocal running, most
        calls.append((row, inputs))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        if row == 4:
            return RowOutcome("failed", run_id=f"r{row}", error={"type": "provider", "message": "worker said no"})
        return RowOutcome("ok", run_id=f"r{row}", steps={"both": inputs["topic"]}, usage={"total_tokens": 2})

    seen: list[int] = []
    summary = await run_batch(
        loaded,
        tmp_path / "rows.jsonl",
        tmp_path / "out.jsonl",
        concurrency=2,
        run_row=remote,
        on_progress=lambda s, line: seen.append(s.done),
    )
    assert sorted(calls) == [(i, {"topic": f"t{i}"}) for i in range(1, 11)]
    assert most == 2 and seen == list(range(1, 11))
    assert (summary.ok, summary.failed, summary.total_tokens, summary.any_failed) == (9, 1, 18, True)
    lines = {line["row"]: line for line in read_jsonl(tmp_path / "out.jsonl")}
    assert lines[4]["error"] == {"type": "provider", "message": "worker said no"}
    assert lines[5] == {
        "row": 5,
        "inputs": {"topic": "t5"},
        "status": "ok",
        "run_id": "r5",
        "steps": {"both": "t5"},
        "error": None,
        "usage": {"total_tokens": 2},
    }


async def test_a_runner_that_raises_stops_the_batch_and_rows_in_flight_are_not_written(tmp_path: Path) -> None:
    (tmp_path / "groups.yaml").write_text(GROUPS_WORKFLOW, encoding="utf-8")
    (tmp_path / "rows.jsonl").write_text("{}\n" * 10)
    loaded = load_workflow(tmp_path / "groups.yaml", mock=True)
    cancelled: list[int] = []

    async def flaky(row: int, inputs: dict[str, Any]) -> RowOutcome:
        try:
            await asyncio.sleep(0 if row != 3 else 0.05)
            if row == 3:
                raise ConnectionError("the workers went away")
            if row > 3:
                await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(row)
            raise
        return RowOutcome("ok")

    with pytest.raises(ConnectionError, match="the workers went away"):
        await run_batch(loaded, tmp_path / "rows.jsonl", tmp_path / "out.jsonl", concurrency=3, run_row=flaky)
    assert [line["row"] for line in read_jsonl(tmp_path / "out.jsonl")] == [1, 2]
    assert sorted(cancelled) == [4, 5]
