"""Handler options: per item of a `stream_handler:` list, with `stream_handler_options:`, and `--describe`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pipeline_ex import BufferHandler, invoke
from pipeline_ex.errors import HandlerResolutionError, WorkflowError
from pipeline_ex.streaming.options import documented_options, options_model
from pipeline_ex.streaming.resolve import resolve_handler
from pipeline_ex.workflow import json_schema, parse_workflow
from pipeline_ex.workflow.migrate import audit, rewrite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


def load(text: str) -> Any:
    return parse_workflow(textwrap.dedent(text), "wf.yaml", mock=True)


def issues(text: str) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(WorkflowError) as info:
        load(text)
    return {str(issue.location.key): (issue.location.line, issue.message) for issue in info.value.issues}


def instance(spec: Any) -> Any:
    return spec.bind().fn.__self__


# ---------------------------------------------------------------------------------------------------------
# A list item carries its own options
# ---------------------------------------------------------------------------------------------------------


def test_list_items_carry_their_own_options_in_steps_and_defaults(tmp_path: Path) -> None:
    loaded = load(
        f"""\
        workflow:
          name: n
          defaults:
            stream_handler:
              - {{handler: console, options: {{to: stderr, summary: false}}}}
              - {{handler: jsonl, options: {{path: "{tmp_path / "all.jsonl"}"}}}}
          steps:
            - {{id: a, prompt: hi}}
            - id: b
              prompt: hi
              stream_handler:
                - buffer
                - handler: file
                  options: {{path: "{tmp_path / "b.txt"}", append: true}}
        """
    )
    first, second = loaded.steps
    console, jsonl = (instance(spec) for spec in first.handlers)
    assert (console._out, console.summary) == (sys.stderr, False)
    assert (jsonl.path, jsonl.format) == (tmp_path / "all.jsonl", "jsonl")
    assert [spec.name for spec in second.handlers] == ["buffer", "file"]
    assert (instance(second.handlers[1]).path, instance(second.handlers[1]).append) == (tmp_path / "b.txt", True)


def test_one_handler_may_be_written_with_its_options_without_a_list(tmp_path: Path) -> None:
    (step,) = load(
        f'- {{id: a, prompt: hi, stream_handler: {{handler: jsonl, options: {{path: "{tmp_path}/e.jsonl"}}}}}}\n'
    ).steps
    assert instance(step.handlers[0]).path == tmp_path / "e.jsonl"


def test_an_invalid_item_option_names_its_line_key_path_fix_and_the_valid_options() -> None:
    found = issues(
        """\
        - id: a
          prompt: hi
          stream_handler:
            - console
            - {handler: jsonl, options: {pth: run.jsonl}}
        """
    )
    line, message = found["[0].stream_handler[1].options.pth"]
    assert line == 5
    assert "unknown option 'pth' (did you mean 'path'?)" in message
    assert "JsonlFileHandler takes: path, format, append" in message
    line, message = found["[0].stream_handler[1].options"]
    assert line == 5 and "option 'path': Field required" in message


def test_a_workflow_mapping_names_the_full_key_path() -> None:
    found = issues(
        """\
        workflow:
          name: n
          steps:
            - id: a
              prompt: hi
              stream_handler: [console, {handler: console, options: {colour: true}}]
        """
    )
    line, message = found["workflow.steps[0].stream_handler[1].options.colour"]
    assert line == 6 and "did you mean 'color'?" in message


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ("{handler: jsonl, optons: {path: x}}", "[0].stream_handler[1].optons", "did you mean 'options'?"),
        ("{options: {path: x}}", "[0].stream_handler[1]", "missing required key 'handler'"),
        ("{handler: jsonl, options: [path]}", "[0].stream_handler[1].options", "valid dictionary"),
        ("[nested]", "[0].stream_handler[1]", "expected a handler name, {handler: NAME, options: {...}}"),
        ("{handler: consol}", "[0].stream_handler[1]", "did you mean console?"),
        ("{handler: handlers.shout, options: {x: 1}}", "[0].stream_handler[1].options", "only accepted by class"),
    ],
    ids=["unknown-item-key", "no-handler", "options-not-a-mapping", "nested-list", "unknown-name", "module-options"],
)
def test_malformed_items_are_reported_at_the_item(entry: str, key: str, words: str, at_repo_root: Path) -> None:
    found = issues(f"- {{id: a, prompt: hi, stream_handler: [console, {entry}]}}\n")
    assert key in found, found
    assert words in found[key][1]


# ---------------------------------------------------------------------------------------------------------
# ... and stream_handler_options
# ---------------------------------------------------------------------------------------------------------


def test_stream_handler_options_with_a_list_says_to_move_them_into_the_items() -> None:
    found = issues(
        """\
        - id: a
          prompt: hi
          stream_handler: [console, buffer]
          stream_handler_options: {to: stderr}
        """
    )
    line, message = found["[0].stream_handler_options"]
    assert line == 4
    assert "options need a single stream_handler, not a list" in message
    assert "{handler: console, options: {to: stderr}}" in message


def test_stream_handler_options_next_to_an_item_with_options_is_an_error() -> None:
    found = issues(
        """\
        - id: a
          prompt: hi
          stream_handler: {handler: console, options: {to: stderr}}
          stream_handler_options: {summary: false}
        """
    )
    assert "keep them in one place, under its 'options:'" in found["[0].stream_handler_options"][1]


def test_a_step_cannot_give_options_to_a_list_it_inherits_from_defaults() -> None:
    found = issues(
        """\
        workflow:
          name: n
          defaults: {stream_handler: [console, buffer]}
          steps:
            - {id: a, prompt: hi, stream_handler_options: {to: stderr}}
        """
    )
    line, message = found["workflow.steps[0].stream_handler_options"]
    assert line == 5 and "give this step its own stream_handler list" in message


def test_a_single_named_handler_still_takes_stream_handler_options() -> None:
    (step,) = load("- {id: a, prompt: hi, stream_handler: [console], stream_handler_options: {to: stderr}}\n").steps
    assert instance(step.handlers[0])._out is sys.stderr


# ---------------------------------------------------------------------------------------------------------
# The Python API, the JSON Schema and migrate
# ---------------------------------------------------------------------------------------------------------


def test_on_event_takes_the_same_mapping(tmp_path: Path) -> None:
    buffer = BufferHandler()
    events = tmp_path / "events.jsonl"
    invoke(
        prompt="go",
        provider="mock",
        mock_response=["a ", "b"],
        on_event=[buffer, {"handler": "jsonl", "options": {"path": str(events)}}],
    )
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [event.seq for event in buffer.events]


@pytest.mark.parametrize(
    ("entry", "options", "words"),
    [
        ({"handler": "jsonl", "options": {"pth": "x"}}, None, "unknown option 'pth' (did you mean 'path'?)"),
        ({"handler": "jsonl", "option": {}}, None, "unknown key 'option'"),
        ({"options": {}}, None, "the mapping has no 'handler'"),
        ({"handler": "console", "options": {"to": "stderr"}}, {"summary": False}, "options are given twice"),
    ],
)
def test_a_malformed_mapping_in_python_is_a_clear_error(entry: dict[str, Any], options: Any, words: str) -> None:
    with pytest.raises(HandlerResolutionError, match="cannot use stream handler") as info:
        resolve_handler(entry, options)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "console",
        ["console", {"handler": "jsonl", "options": {"path": "run.jsonl"}}],
        {"handler": "webhook", "options": {"url": "http://127.0.0.1:9/h"}},
    ],
    ids=["name", "list-with-options", "one-with-options"],
)
def test_the_schema_takes_both_forms(value: Any) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    document = {
        "name": "w",
        "defaults": {"stream_handler": value},
        "steps": [{"id": "a", "prompt": "x", "stream_handler": value}],
    }
    assert list(validator.iter_errors(document)) == []
    parse_workflow(json.dumps(document), "forms.yaml", mock=True)


@pytest.mark.parametrize(
    "value",
    [[{"handler": "jsonl", "optons": {}}], [{"options": {}}], [["console"]], {"handler": ""}, 3],
    ids=["item-typo", "no-handler", "nested-list", "empty-name", "number"],
)
def test_the_schema_refuses_what_the_loader_refuses(value: Any) -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    document = [{"id": "a", "prompt": "x", "stream_handler": value}]
    assert list(validator.iter_errors(document)) != []
    with pytest.raises(WorkflowError):
        parse_workflow(json.dumps(document), "refused.yaml", mock=True)


def test_migrate_rewrites_legacy_names_inside_items_and_leaves_the_rest() -> None:
    text = textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler:
            - console
            - {handler: Pipeline.AsyncStreaming.FileHandler, options: {path: out.txt}}
            - handler: "Pipeline.AsyncStreaming.NullHandler"  # quiet
        """
    )
    uses, conflicts = audit(text, "items.yaml")
    assert conflicts == []
    assert [(use.line, use.found) for use in uses] == [
        (5, "Pipeline.AsyncStreaming.FileHandler"),
        (6, "Pipeline.AsyncStreaming.NullHandler"),
    ]
    out = rewrite(text, uses)
    assert out == text.replace("AsyncStreaming", "Streaming")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        (step,) = parse_workflow(out, "items.yaml", mock=True).steps
    assert [spec.name for spec in step.handlers] == ["console", "file", "null"]


# ---------------------------------------------------------------------------------------------------------
# The options model, and `pipeline-ex handlers --describe`
# ---------------------------------------------------------------------------------------------------------


def test_option_descriptions_come_from_the_docstring_options_section() -> None:
    class Sample:
        """A sample.

        Options:
            size: how big it is,
                on two lines.
            name: what it is called.
        """

        def __init__(self, size: int = 3, name: str = "x") -> None:
            pass

        def handle_event(self, event: Any) -> None:
            pass

    assert documented_options(Sample) == {"size": "how big it is, on two lines.", "name": "what it is called."}
    fields = options_model(Sample).model_fields
    assert fields["size"].description == "how big it is, on two lines." and fields["size"].default == 3


def describe(name: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline_ex", "handlers", "--describe", name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_describe_prints_a_builtins_options_from_its_model() -> None:
    result = describe("webhook")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("webhook: class pipeline_ex.streaming.webhook.WebhookHandler")
    assert "POSTs a step run's events as JSON to a URL" in out
    model = options_model(__import__("pipeline_ex").WebhookHandler)
    for option, info in model.model_fields.items():
        assert f"\n  {option}: " in out
        assert info.description is not None and info.description in out
    assert "  batch_size: int (>= 1, <= 10000)  (default: 100)\n" in out
    assert "  url: str | {env: str}  (required)\n" in out


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        (
            "Pipeline.Streaming.FileHandler",
            [
                "Pipeline.Streaming.FileHandler (the built-in 'file'): class pipeline_ex.streaming.file.FileHandler "
                "(a new instance for every step run)",
                "  path: str | path  (required)",
                '  format: "text" | "jsonl" | null  (default: null)',
            ],
        ),
        (
            "console",
            ['  to: "stdout" | "stderr"  (default: "stdout")', "      write the summary line on Done (default true)."],
        ),
        ("pipeline_ex.streaming.buffer:BufferHandler", ["Stores every event it receives.", "Options: none"]),
        ("handlers.word_counter:WordCounter", ['  label: str  (default: "words")', "  min_length: int  (default: 1)"]),
        (
            "handlers.shout",
            [
                "handlers.shout: module handlers.shout (its handle_event, shared by every step run)",
                "Options: none (only class handlers take options)",
            ],
        ),
    ],
    ids=["elixir-alias", "short-name", "dotted-path", "project-class", "module"],
)
def test_describe_works_for_aliases_dotted_paths_and_project_handlers(name: str, lines: list[str]) -> None:
    result = describe(name)
    assert result.returncode == 0, result.stderr
    for line in lines:
        assert line in result.stdout.splitlines(), result.stdout


def test_describing_an_unknown_name_lists_the_names_and_exits_2() -> None:
    result = describe("consol")
    assert result.returncode == 2 and result.stdout == ""
    assert "no handler has this short name" in result.stderr and "did you mean console?" in result.stderr
    assert "short names: console, file, jsonl, buffer, null, recorder, webhook" in result.stderr
    assert "every name: pipeline-ex handlers" in result.stderr


def test_the_list_shows_the_webhook_handler() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_ex", "handlers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "  webhook    pipeline_ex.streaming.webhook.WebhookHandler" in result.stdout.splitlines()


def test_describe_imports_neither_haystack_nor_httpx() -> None:
    code = (
        "import sys\nfrom pipeline_ex.cli import main\n"
        "assert main(['handlers', '--describe', 'webhook']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('haystack', 'httpx')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("[]")
