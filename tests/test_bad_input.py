"""Hostile or broken workflow files: each gives a clear `WorkflowError` at its line, quickly, never a crash.

Files are written into a scratch directory and loaded with `load_workflow`, and the same files go through
real `pipeline-ex` subprocesses (`validate`, `migrate --check`, `run`). The subprocesses run under a
timeout and an address-space limit, so a regression (an alias bomb expanding again) fails the test
instead of taking the machine's memory.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from cli_kit import write
from server_kit import serving

from pipeline_ex.errors import PipelineError, StepError, WorkflowError
from pipeline_ex.server.catalog import WorkflowCatalog
from pipeline_ex.workflow import InputError, load_workflow, parse_workflow, run
from pipeline_ex.workflow.yaml_source import MAX_ALIAS_VALUES

SCRIPT = Path(sys.executable).with_name("pipeline-ex")
MEMORY_LIMIT = 2 << 30  # bytes of address space for a child process; a fixed loader needs far less
TIMEOUT = 60  # seconds; a fixed loader answers in about one


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `pipeline-ex ARGS` with a timeout and a memory limit, and capture its output."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pipeline_ex"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_limit_memory,
        check=False,
    )


def only_issue(error: WorkflowError) -> tuple[int | None, int | None, str | None, str]:
    assert len(error.issues) == 1, str(error)
    issue = error.issues[0]
    return issue.location.line, issue.location.column, issue.location.key, issue.message


# ---------------------------------------------------------------------------------------------------------
# YAML alias bombs
# ---------------------------------------------------------------------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """ "Billion laughs": each level is a list of `width` aliases of the level before it."""
    lines = ["workflow:", "  name: bomb", "  description:", '    - &l0 ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"    - &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines.append("  steps: [{id: a, prompt: hi}]")
    return "\n".join(lines) + "\n"


def test_the_bomb_is_small_and_would_expand_to_hundreds_of_millions_of_values() -> None:
    text = alias_bomb()
    assert len(text.encode()) < 600
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:  # composing shares aliased nodes, so this is cheap
        if id(node) not in sizes:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    assert expanded(yaml.compose(text, Loader=yaml.SafeLoader)) > 200_000_000


def _alias_line_past_the_limit(text: str) -> int:
    """The line of the level whose aliases take the expansion past the limit (the level sizes are known)."""
    size, total = 7, 0  # level 0: a sequence of six scalars
    for index, line in enumerate(text.splitlines(), start=1):
        if line.startswith("    - &l") and not line.startswith("    - &l0"):
            total += 9 * size  # every alias of this line repeats the level before it
            size = 1 + 9 * size
            if total > MAX_ALIAS_VALUES:
                return index
    raise AssertionError("the bomb stays under the limit")


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_at_the_alias_that_passes_the_limit(levels: int) -> None:
    text = alias_bomb(levels)
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "bomb.yaml", mock=True)
    line, column, _, message = only_issue(caught.value)
    assert line == _alias_line_past_the_limit(text)
    assert column is not None and text.splitlines()[line - 1][column - 1] == "*"
    assert f"more than {MAX_ALIAS_VALUES:,} values" in message
    assert "write the repeated values out" in message
    assert str(caught.value).startswith(f"bomb.yaml:{line}:{column}: ")


def test_aliases_below_the_limit_still_load() -> None:
    text = alias_bomb(levels=4)  # 9**3 * 6 scalars: far below the limit, so the description is checked
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "small.yaml", mock=True)
    (issue,) = caught.value.issues
    assert issue.location.key == "workflow.description" and "expected a valid string" in issue.message
    shared = "- {id: a, prompt: &p hello, stop: &s [x, y]}\n- {id: b, prompt: *p, stop: *s}\n"
    (first, second) = parse_workflow(shared, "shared.yaml", mock=True).steps
    assert first.spec.stop == second.spec.stop == ["x", "y"]


def test_a_recursive_alias_names_its_line() -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow("- id: a\n  prompt: hi\n  stop: &s [x, *s]\n", "loop.yaml", mock=True)
    line, column, _, message = only_issue(caught.value)
    assert (line, column) == (3, 16)
    assert "alias *s is inside the value it names" in message


@pytest.mark.parametrize("command", [["validate"], ["validate", "--mock"], ["migrate", "--check"]])
def test_the_cli_refuses_an_alias_bomb_quickly(command: list[str], tmp_path: Path) -> None:
    write(tmp_path / "bomb.yaml", alias_bomb())
    result = cli(*command, "bomb.yaml", cwd=tmp_path)  # the timeout and memory limit catch an expansion
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout == ""
    line = _alias_line_past_the_limit(alias_bomb())
    assert result.stderr.startswith(f"bomb.yaml:{line}:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr


def test_a_served_folder_reports_the_bomb_and_serves_the_rest(tmp_path: Path) -> None:
    write(tmp_path / "bomb.yaml", alias_bomb())
    write(tmp_path / "good.yaml", "workflow:\n  name: good\n  steps: [{id: a, prompt: hi}]\n")
    catalog = WorkflowCatalog.from_folder(tmp_path, mock=True)
    assert list(catalog.workflows) == ["good"]
    (problem,) = catalog.problems.values()
    assert f"more than {MAX_ALIAS_VALUES:,} values" in problem


# ---------------------------------------------------------------------------------------------------------
# Files that are not UTF-8
# ---------------------------------------------------------------------------------------------------------

LATIN_1 = "workflow:\n  name: menu\n  steps:\n    - {id: a, prompt: 'Un café ☕ crème'}\n"


def latin_1(text: str) -> bytes:
    return text.replace("☕ ", "").encode("latin-1")


def one_bad_byte(text: str) -> bytes:
    """UTF-8 (the cup is three bytes), except for one Latin-1 byte in place of the è."""
    return text.replace("è", "\udce8").encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("encode", "column", "byte"),
    [(latin_1, 30, "0xe9"), (one_bad_byte, 36, "0xe8")],
    ids=["latin-1", "after-multibyte-text"],
)
def test_a_file_that_is_not_utf8_names_the_first_bad_byte(
    encode: Callable[[str], bytes], column: int, byte: str, tmp_path: Path
) -> None:
    path = tmp_path / "menu.yaml"
    path.write_bytes(encode(LATIN_1))
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path, mock=True)
    line, issue_column, _, message = only_issue(caught.value)
    assert (line, issue_column) == (4, column)  # columns count characters, not bytes
    assert f"byte {byte}" in message and "not UTF-8" in message and "save the file as UTF-8" in message
    assert str(caught.value).startswith(f"{path}:4:{column}: ")


def test_a_utf16_file_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_bytes(LATIN_1.encode("utf-16"))
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path, mock=True)
    line, column, _, message = only_issue(caught.value)
    assert (line, column) == (1, 1)
    assert "UTF-16" in message and "save the file as UTF-8" in message


@pytest.mark.parametrize("command", [["validate", "--mock"], ["migrate", "--check"], ["run", "--mock"]])
def test_the_cli_names_the_line_of_a_bad_byte(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "menu.yaml").write_bytes(latin_1(LATIN_1))
    result = cli(*command, "menu.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("menu.yaml:4:30: "), result.stderr
    assert "save the file as UTF-8" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# output_to_file that names no file
# ---------------------------------------------------------------------------------------------------------

OUTPUT = """\
workflow:
  name: files
  steps:
    - id: draft
      prompt: "Write."
      mock_response: "some text"
      output_to_file: {target}
"""


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (".", "names the output directory itself"),
        ("./", "names the output directory itself"),
        ("out/", "names a directory"),
        ("out/.", "names a directory"),
        ("out\\\\", "names a directory"),
        ("out/draft\\0.md", "control character"),
        ("out/\\tdraft.md", "control character"),
    ],
)
def test_an_output_path_that_names_no_file_is_a_load_error(target: str, words: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(OUTPUT.format(target=f'"{target}"'), "files.yaml", mock=True)
    line, column, key, message = only_issue(caught.value)
    assert (line, column, key) == (7, 23, "workflow.steps[0].output_to_file")
    assert words in message
    assert "give a file name" in message


def test_validate_and_run_refuse_an_output_path_of_dot(tmp_path: Path) -> None:
    write(tmp_path / "dot.yaml", OUTPUT.format(target='"."'))
    checked = cli("validate", "--mock", "dot.yaml", cwd=tmp_path)
    assert checked.returncode == 2 and checked.stderr.startswith("dot.yaml:7:23: workflow.steps[0].output_to_file: ")
    ran = cli("run", "--mock", "dot.yaml", cwd=tmp_path)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert not (tmp_path / "outputs").exists()  # no output folder made into a file


def test_an_existing_directory_at_the_output_path_fails_the_run_before_any_step(tmp_path: Path) -> None:
    write(tmp_path / "files.yaml", OUTPUT.format(target="report"))
    (tmp_path / "outputs" / "report").mkdir(parents=True)
    result = cli("run", "--mock", "files.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: step 'draft': output_to_file 'report' is a directory")
    assert "outputs/report" in result.stderr and "give a file name" in result.stderr
    assert "some text" not in result.stdout  # the step never ran
    assert (tmp_path / "outputs" / "report").is_dir()


def test_an_output_dir_that_is_a_file_is_a_clean_error(tmp_path: Path) -> None:
    write(tmp_path / "files.yaml", OUTPUT.format(target="report.md"))
    (tmp_path / "taken").write_text("not a folder", encoding="utf-8")
    result = cli("run", "--mock", "files.yaml", "--output-dir", "taken", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: step 'draft': output_to_file 'report.md' cannot be written" in result.stderr
    assert "taken is a file, not a directory" in result.stderr
    assert (tmp_path / "taken").read_text(encoding="utf-8") == "not a folder"


def test_an_output_file_that_is_another_steps_folder_is_a_load_error() -> None:
    text = OUTPUT.format(target="notes/a.md") + (
        '    - id: second\n      prompt: "More."\n      output_to_file: notes\n'
    )
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "files.yaml", mock=True)
    line, _, key, message = only_issue(caught.value)
    assert (line, key) == (10, "workflow.steps[1].output_to_file")
    assert "'notes' is the folder that steps[0] ('draft') writes into" in message


def test_a_directory_made_during_the_run_is_a_pipeline_error_naming_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "makedir.py").write_text("import os\n\ndef make(ctx, path):\n    os.makedirs(path)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    text = OUTPUT.format(target="first.md") + (
        f"    - {{id: mkdir, type: python, callable: makedir.make, args: {{path: '{out / 'notes'}'}}}}\n"
        '    - id: second\n      prompt: "More."\n      output_to_file: notes\n'
    )
    with pytest.raises(PipelineError) as caught:
        run(parse_workflow(text, "files.yaml", mock=True), mock=True, output_dir=out)
    assert not isinstance(caught.value, StepError | WorkflowError)
    assert str(caught.value).startswith("step 'second': output_to_file 'notes' is a directory")
    assert "give a file name" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Lone surrogates
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "key"),
    [
        ('- id: a\n  prompt: "hi \\ud800 there"\n', 2, 11, "[0].prompt"),
        ('- id: a\n  prompt: hi\n  options: {"\\udfff": 1}\n', 3, 13, "[0].options"),
        ('- id: a\n  prompt: "pair the wrong way round: \\ude00\\ud83d"\n', 2, 11, "[0].prompt"),
    ],
    ids=["in-a-value", "in-a-key", "reversed-pair"],
)
def test_a_lone_surrogate_in_the_file_is_a_load_error(text: str, line: int, column: int, key: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "wf.yaml", mock=True)
    issue_line, issue_column, issue_key, message = only_issue(caught.value)
    assert (issue_line, issue_column, issue_key) == (line, column, key)
    assert "lone surrogate" in message and "\\u" in message
    assert "write the character itself" in message
    str(caught.value).encode("utf-8")  # the message itself is printable text


def test_a_surrogate_pair_escape_is_read_as_its_character() -> None:
    loaded = parse_workflow('- id: a\n  prompt: "smile \\ud83d\\ude00"\n', "wf.yaml", mock=True)
    assert loaded.steps[0].spec.prompt == "smile \U0001f600"


def test_run_refuses_a_file_with_a_lone_surrogate_without_a_traceback(tmp_path: Path) -> None:
    write(tmp_path / "wf.yaml", '- id: a\n  prompt: "hi \\ud800"\n')
    result = cli("run", "--mock", "wf.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("wf.yaml:2:11: [0].prompt: ") and "Traceback" not in result.stderr


TOPIC = """\
workflow:
  name: topic
  inputs:
    topic: {default: owls}
  steps:
    - {id: a, prompt: "{{ inputs.topic }}"}
"""


def test_a_lone_surrogate_from_the_command_line_is_an_input_error(tmp_path: Path) -> None:
    write(tmp_path / "topic.yaml", TOPIC)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pipeline_ex"]
    result = subprocess.run(
        [*command, "run", "--mock", "topic.yaml", "--input", b"topic=caf\xe9"],  # not UTF-8
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: input 'topic' is not text: character 4 is a lone surrogate (\\udce9)" in result.stderr


@pytest.mark.parametrize("value", ["\ud800", "ok \udc00", "x\udbff"], ids=["high", "low", "high-at-the-end"])
def test_a_lone_surrogate_from_python_is_an_input_error(value: str) -> None:
    loaded = parse_workflow(TOPIC, "topic.yaml", mock=True)
    with pytest.raises(InputError, match=r"input 'topic' is not text: character \d+ is a lone surrogate \(\\ud"):
        run(loaded, {"topic": value}, mock=True)


def test_a_lone_surrogate_made_by_a_python_step_is_caught_before_the_prompt_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "surrogates.py").write_text("def broken(ctx):\n    return 'x\\ud800'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = "- {id: p, type: python, callable: surrogates.broken}\n- {id: a, prompt: '{{ steps.p }}'}\n"
    with pytest.raises(WorkflowError) as caught:
        run(parse_workflow(text, "wf.yaml", mock=True))
    line, _, key, message = only_issue(caught.value)
    assert (line, key) == (2, "[1].prompt")
    assert "the rendered prompt has a lone surrogate (\\ud800)" in message


# ---------------------------------------------------------------------------------------------------------
# Values that are not JSON values (YAML dates, .nan, .inf, !!binary)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("2024-01-01", "2024-01-01 is read as a date; quote it to keep it as text"),
        ("2024-01-01 10:30:00", "2024-01-01 10:30:00 is read as a date; quote it to keep it as text"),
        (".nan", ".nan is not a finite number"),
        (".inf", ".inf is not a finite number"),
        ("-.Inf", "-.Inf is not a finite number"),
        ("!!binary aGk=", "binary data (!!binary) is not a workflow value"),
    ],
)
@pytest.mark.parametrize(
    ("template", "line", "column", "key"),
    [
        (
            "workflow:\n  name: v\n  inputs:\n    when: {{default: {value}}}\n  steps: [{{id: a, prompt: hi}}]\n",
            4,
            21,
            "workflow.inputs.when.default",
        ),
        ("- id: a\n  prompt: {value}\n", 2, 11, "[0].prompt"),
        ("- id: a\n  prompt: hi\n  options: {{seed_date: {value}}}\n", 3, 24, "[0].options.seed_date"),
    ],
    ids=["input-default", "prompt", "option"],
)
def test_a_value_json_cannot_hold_is_a_load_error(
    value: str, words: str, template: str, line: int, column: int, key: str
) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(template.format(value=value), "values.yaml", mock=True)
    issue_line, issue_column, issue_key, message = only_issue(caught.value)
    assert (issue_line, issue_column, issue_key) == (line, column, key)
    assert words in message
    assert "workflow values are JSON values" in message


def test_quoted_dates_and_numbers_stay_text() -> None:
    text = '- {id: a, prompt: "2024-01-01", stop: [".nan", "2024-01-01 10:30:00"]}\n'
    (step,) = parse_workflow(text, "values.yaml", mock=True).steps
    assert (step.spec.prompt, step.spec.stop) == ("2024-01-01", [".nan", "2024-01-01 10:30:00"])


SERVED_BAD_DEFAULTS = {
    "date": "2024-01-01",
    "nan": ".nan",
    "inf": ".inf",
    "binary": "!!binary aGk=",
}


@pytest.mark.parametrize("value", SERVED_BAD_DEFAULTS.values(), ids=SERVED_BAD_DEFAULTS.keys())
def test_one_bad_workflow_does_not_break_the_catalog(
    value: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write(
        folder / "bad.yaml",
        f"workflow:\n  name: bad\n  inputs:\n    when: {{default: {value}}}\n  steps:\n"
        "    - {id: a, prompt: 'on {{ inputs.when }}'}\n",
    )
    write(folder / "good.yaml", TOPIC)
    with caplog.at_level("WARNING", logger="pipeline_ex.server"), serving(folder) as server:
        response = httpx.get(f"{server.url}/workflows", timeout=20)
        problems = server.app.state.pipeline.catalog.problems
    assert response.status_code == 200, response.text
    listing = response.json()["workflows"]
    assert [workflow["name"] for workflow in listing] == ["topic"]
    assert listing[0]["inputs"]["topic"]["default"] == "owls"
    (problem,) = problems.values()
    assert problem.startswith(f"{folder / 'bad.yaml'}:4:21: workflow.inputs.when.default: ")
    assert "workflow values are JSON values" in problem
    assert any(
        "not serving" in record.getMessage() and "bad.yaml:4:21" in record.getMessage() for record in caplog.records
    )


@pytest.mark.parametrize("text", ["workflow:\n", "workflow: ~\n", "workflow: null\n"])
def test_an_empty_workflow_key_is_an_issue_at_its_line(text: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "empty.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "empty.yaml:1:1: workflow: 'workflow:' is empty; give it a name and steps"
    ]
