"""The workflow loader on valid input: example files, file shapes, defaults, handlers, legacy keys, templates,
python steps, the JSON Schema and mock mode. Error wording is pinned by tests/test_workflow_errors.py."""

from __future__ import annotations

import contextlib
import io
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
import yaml

from pipeline_ex import run
from pipeline_ex.errors import ProviderNotInstalledError, WorkflowError
from pipeline_ex.llm.providers import check_provider
from pipeline_ex.streaming.resolve import HandlerSpec
from pipeline_ex.workflow import LoadedWorkflow, json_schema, load_workflow, loader, parse_workflow
from pipeline_ex.workflow.schema import LLMStep, PythonStep, SetStep

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.name for path in (REPO / "workflows").glob("*.yaml"))
REAL_RUN_EXAMPLES = ["hello.yaml", "multi_step.yaml", "custom_handler.yaml"]
LEGACY_EXAMPLES = ["guide_before.yaml"]


def _local_installed() -> bool:
    try:
        check_provider("local", {})
    except ProviderNotInstalledError:
        return False
    return True


def _mode_forced() -> bool:
    """Whether the whole test run is in a mode (PIPELINE_TEST_MODE=mock/replay) that makes mock=False moot."""
    offline = loader.offline_mode_requested
    return bool(offline(False))


needs_real_mode = pytest.mark.skipif(_mode_forced(), reason="the test run is in mock or replay mode")
needs_local = pytest.mark.skipif(not _local_installed(), reason="the 'local' extra is not installed")


def load(text: str, *, mock: bool = True, file: str = "wf.yaml") -> LoadedWorkflow:
    """Parse dedented YAML text; DeprecationWarnings are left to the caller."""
    if not mock and _mode_forced():
        pytest.skip("the test run is in mock or replay mode, so a real-run load cannot be checked")
    return parse_workflow(textwrap.dedent(text), file, mock=mock)


def load_error(text: str, *, mock: bool = True, file: str = "wf.yaml") -> WorkflowError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(WorkflowError) as caught:
            load(text, mock=mock, file=file)
    return caught.value


def only_issue(error: WorkflowError) -> tuple[int | None, str | None, str]:
    assert len(error.issues) == 1, str(error)
    issue = error.issues[0]
    return issue.location.line, issue.location.key, issue.message


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


# ---------------------------------------------------------------------------------------------------------
# The example workflows
# ---------------------------------------------------------------------------------------------------------


def test_the_examples_this_module_relies_on_exist() -> None:
    assert {*REAL_RUN_EXAMPLES, *LEGACY_EXAMPLES, "guide_after.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_loads_for_a_mock_run(name: str, at_repo_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # guide_before.yaml uses the legacy keys on purpose
        loaded = load_workflow(f"workflows/{name}", mock=True)
    assert loaded.checked_offline is True  # loaded for a mock run: packages and keys were not checked
    assert loaded.file == f"workflows/{name}"
    assert loaded.steps
    every = loaded.all_steps()
    assert len({step.id for step in every}) == len(every)
    for step in every:
        if isinstance(step.spec, LLMStep):
            assert step.provider is not None  # the provider the file names: a mock run is decided when it starts
            assert all(isinstance(spec, HandlerSpec) for spec in step.handlers)


@needs_real_mode
@needs_local
@pytest.mark.parametrize("name", REAL_RUN_EXAMPLES)
def test_local_examples_load_for_a_real_run(name: str, at_repo_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # current examples use no legacy key
        loaded = load_workflow(f"workflows/{name}", mock=False)
    assert loaded.checked_offline is False
    llm_steps = [step for step in loaded.all_steps() if isinstance(step.spec, LLMStep)]
    assert {step.provider for step in llm_steps} == {"local"}
    assert all(step.handlers for step in llm_steps)


@needs_real_mode
@pytest.mark.usefixtures("without_anthropic")
@pytest.mark.parametrize("name", ["guide_after.yaml", "guide_before.yaml"])
def test_claude_examples_need_the_anthropic_extra_for_a_real_run(name: str, at_repo_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(WorkflowError) as caught:
            load_workflow(f"workflows/{name}", mock=False)
    line, key, message = only_issue(caught.value)
    assert line == 4 and key is not None and key.endswith("[0].provider")
    assert "pip install 'pipeline-ex[anthropic]'" in message


def test_multi_step_example_reads_the_first_steps_text(at_repo_root: Path) -> None:
    loaded = load_workflow("workflows/multi_step.yaml", mock=True)
    assert [step.id for step in loaded.steps] == ["draft", "summary"]
    assert loaded.workflow.inputs["topic"].default == "streaming"
    assert [step.options["max_tokens"] for step in loaded.steps] == [120, 120]
    assert loaded.steps[1].spec.prompt == "Summarise in one sentence: {{ steps.draft.text }}"


# ---------------------------------------------------------------------------------------------------------
# The three shapes of a workflow file
# ---------------------------------------------------------------------------------------------------------

WRAPPED = """\
workflow:
  name: shapes
  steps:
    - id: one
      prompt: "Say one."
    - id: two
      prompt: "Repeat: {{ steps.one.text }}"
"""
PLAIN = """\
name: shapes
steps:
  - id: one
    prompt: "Say one."
  - id: two
    prompt: "Repeat: {{ steps.one.text }}"
"""
BARE = """\
- id: one
  prompt: "Say one."
- id: two
  prompt: "Repeat: {{ steps.one.text }}"
"""


@pytest.mark.parametrize(
    ("text", "prefix", "prompt_line"),
    [(WRAPPED, ("workflow",), 7), (PLAIN, (), 6), (BARE, None, 4)],
    ids=["workflow-mapping", "plain-mapping", "bare-list"],
)
def test_the_three_shapes_load_the_same_steps(text: str, prefix: tuple[str, ...] | None, prompt_line: int) -> None:
    loaded = parse_workflow(text, "somewhere/shapes.yaml", mock=True)
    assert loaded.name == "shapes"  # a bare list is named after its file
    assert loaded.prefix == prefix
    assert [step.id for step in loaded.steps] == ["one", "two"]
    assert [step.spec.prompt for step in loaded.steps] == ["Say one.", "Repeat: {{ steps.one.text }}"]
    assert all(isinstance(step.spec, LLMStep) for step in loaded.steps)  # `type` defaults to llm
    assert loaded.location("steps", 1, "prompt").line == prompt_line
    assert loaded.steps[1].path == ("steps", 1)


@pytest.mark.parametrize(
    ("text", "key"),
    [(WRAPPED, "workflow.steps[1].prompt"), (PLAIN, "steps[1].prompt"), (BARE, "[1].prompt")],
    ids=["workflow-mapping", "plain-mapping", "bare-list"],
)
def test_issues_point_into_each_shape(text: str, key: str) -> None:
    error = load_error(text.replace("steps.one.text", "steps.zero.text"))
    line, issue_key, message = only_issue(error)
    assert issue_key == key
    assert line == text.splitlines().index(next(s for s in text.splitlines() if "Repeat" in s)) + 1
    assert "no earlier step has id 'zero'" in message


def test_a_key_next_to_workflow_is_an_error() -> None:
    error = load_error(WRAPPED + "steps: []\n")
    line, key, message = only_issue(error)
    assert (line, key) == (8, "steps")
    assert "everything goes under 'workflow:'" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "the file is empty"), ("just text\n", "expected a mapping with 'workflow:' or a list of steps")],
)
def test_a_file_that_is_no_workflow_is_an_error(text: str, words: str) -> None:
    line, _, message = only_issue(load_error(text))
    assert line == 1 and words in message


def test_load_workflow_reports_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(WorkflowError) as caught:
        load_workflow(missing)
    assert caught.value.issues[0].location.file == str(missing)
    assert "cannot read the workflow" in str(caught.value)


def test_load_workflow_names_issues_by_the_path_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wf.yaml").write_text(BARE.replace("steps.one", "steps.zero"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkflowError) as caught:
        load_workflow("wf.yaml", mock=True)
    assert str(caught.value).startswith("wf.yaml:4:")


# ---------------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------------

DEFAULTS = """\
workflow:
  name: inherit
  defaults:
    provider: mock
    model: base-model
    stream: false
    stream_handler: buffer
    system: "Be brief."
    temperature: 0.25
    max_tokens: 50
    top_p: 0.9
    stop: ["END"]
    seed: 7
    options: {delay_ms: 5}
  steps:
    - id: inherits
      prompt: "a"
    - id: overrides
      prompt: "b"
      provider: openai
      model: own-model
      stream: true
      stream_handler: recorder
      system: "Be long."
      temperature: 0.5
      max_tokens: 10
      options: {api_base_url: "http://127.0.0.1:9/v1"}
    - id: same_provider
      prompt: "c"
      provider: mock
      options: {finish_reason: length}
"""
GENERATION = {"temperature": 0.25, "max_tokens": 50, "top_p": 0.9, "stop": ["END"], "seed": 7}


def test_steps_inherit_defaults_and_provider_options_only_on_the_default_provider() -> None:
    inherits, overrides, same = load(DEFAULTS, mock=False).steps
    assert (inherits.provider, inherits.model, inherits.stream, inherits.system) == (
        "mock",
        "base-model",
        False,
        "Be brief.",
    )
    assert [spec.name for spec in inherits.handlers] == ["buffer"]
    assert inherits.options == {"delay_ms": 5, **GENERATION}

    assert (overrides.provider, overrides.model, overrides.stream, overrides.system) == (
        "openai",
        "own-model",
        True,
        "Be long.",
    )
    assert [spec.name for spec in overrides.handlers] == ["recorder"]
    # another provider gets the generation fields but not the default provider's options
    assert overrides.options == {
        **GENERATION,
        "temperature": 0.5,
        "max_tokens": 10,
        "api_base_url": "http://127.0.0.1:9/v1",
    }

    assert same.provider == "mock"  # naming the default provider again keeps its options
    assert same.options == {"delay_ms": 5, "finish_reason": "length", **GENERATION}


def test_a_mock_run_keeps_generation_fields_and_drops_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    loaded = load(DEFAULTS, mock=True)
    # loading for a mock run changes no step: the run decides its mode when it starts
    assert [step.provider for step in loaded.steps] == ["mock", "openai", "mock"]
    seen: list[Any] = []
    result = run(loaded, mock=True, on_event=seen.append)
    # the openai step ran on the mock provider; its api_base_url (a dead port) was never used
    assert [result.steps[step.id].response.provider for step in loaded.steps] == ["mock", "mock", "mock"]
    assert [step.model for step in loaded.steps] == ["base-model", "own-model", "base-model"]


def test_without_defaults_a_step_streams_with_no_handler_and_no_options() -> None:
    (step,) = load("- {id: a, prompt: hi}\n").steps
    assert (step.stream, step.handlers, step.options, step.model, step.system) == (True, [], {}, None, None)


@needs_local
def test_the_default_provider_is_local() -> None:
    (step,) = load("- {id: a, prompt: hi}\n", mock=False).steps
    assert step.provider == "local"


def test_a_step_may_give_options_for_the_defaults_handler() -> None:
    loaded = load(
        """\
        name: n
        defaults: {stream_handler: console, stream_handler_options: {to: stderr}}
        steps:
          - {id: a, prompt: hi}
          - {id: b, prompt: hi, stream_handler_options: {summary: false}}
        """
    )
    first = loaded.steps[0].handlers[0].bind().fn.__self__  # type: ignore[attr-defined]
    second = loaded.steps[1].handlers[0].bind().fn.__self__  # type: ignore[attr-defined]
    assert (first._out, first.summary) == (sys.stderr, True)
    assert second.summary is False


# ---------------------------------------------------------------------------------------------------------
# Stream handlers are resolved when the workflow loads
# ---------------------------------------------------------------------------------------------------------


def test_custom_handlers_resolve_at_load_and_a_class_gets_a_fresh_instance_per_bind(at_repo_root: Path) -> None:
    loaded = load_workflow("workflows/custom_handler.yaml", mock=True)
    shouted, counted = loaded.steps
    (module_spec,) = shouted.handlers
    (class_spec,) = counted.handlers
    assert module_spec.name == "handlers.shout"
    assert class_spec.name == "handlers.word_counter:WordCounter"

    first, second = class_spec.bind(), class_spec.bind()
    counter_one, counter_two = first.fn.__self__, second.fn.__self__  # type: ignore[attr-defined]
    assert counter_one is not counter_two
    assert type(counter_one).__name__ == "WordCounter"
    assert (counter_one.label, counter_one.min_length) == ("river words", 3)
    assert counter_one.parts == [] and counter_two.parts == []

    assert module_spec.bind().fn is module_spec.bind().fn  # a module handler is stateless and shared


def test_a_builtin_class_handler_is_also_fresh_per_bind() -> None:
    (step,) = load("- {id: a, prompt: hi, stream_handler: buffer}\n").steps
    assert step.handlers[0].bind().fn.__self__ is not step.handlers[0].bind().fn.__self__  # type: ignore[attr-defined]


def test_a_list_of_handlers_resolves_each() -> None:
    (step,) = load("- {id: a, prompt: hi, stream_handler: [console, buffer, Pipeline.Streaming.NullHandler]}\n").steps
    assert [spec.name for spec in step.handlers] == ["console", "buffer", "null"]


def test_handler_problems_are_found_at_load_with_the_line_of_the_reference() -> None:
    error = load_error(
        """\
        - id: a
          prompt: hi
          stream_handler: [console, consol]
        - id: b
          prompt: hi
          stream_handler: console
          stream_handler_options: {to: printer}
        """
    )
    first, second = error.issues
    assert (first.location.line, first.location.column, first.location.key) == (3, 29, "[0].stream_handler[1]")
    assert "no handler has this short name" in first.message and "did you mean console" in first.message
    assert second.location.line in (6, 7) and "option 'to'" in second.message


def test_a_handler_that_cannot_be_imported_names_the_fix() -> None:
    error = load_error("- {id: a, prompt: hi, stream_handler: no_such_package_xyz.Handler}\n")
    line, key, message = only_issue(error)
    assert (line, key) == (1, "[0].stream_handler")
    assert "import failed" in message and "pip install no_such_package_xyz" in message


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ("{id: a, prompt: hi, stream_handler_options: {to: stderr}}", "given without a stream_handler"),
        (
            "{id: a, prompt: hi, stream_handler: [console, buffer], stream_handler_options: {to: stderr}}",
            "options need a single stream_handler",
        ),
        ("{id: a, prompt: hi, stream_handler: handlers.shout, stream_handler_options: {x: 1}}", "only accepted by"),
    ],
)
def test_misplaced_handler_options_are_errors(step: str, words: str, at_repo_root: Path) -> None:
    _, key, message = only_issue(load_error(f"- {step}\n"))
    assert key is not None and key.startswith("[0].stream_handler")
    assert words in message


# ---------------------------------------------------------------------------------------------------------
# Legacy keys
# ---------------------------------------------------------------------------------------------------------


def test_legacy_step_keys_are_renamed_with_warnings_naming_file_and_line() -> None:
    text = """\
    workflow:
      name: legacy
      steps:
        - id: a
          prompt: hi
          async_stream: false
          async_handler: buffer
    """
    with pytest.warns(DeprecationWarning) as record:
        loaded = load(text, file="legacy.yaml")
    messages = [str(w.message) for w in record]
    assert "legacy.yaml:6: 'async_stream' is deprecated; rename it to 'stream'" in messages
    assert "legacy.yaml:7: 'async_handler' is deprecated; rename it to 'stream_handler'" in messages
    assert {w.filename for w in record} == {__file__}  # attributed to the caller, not to pipeline_ex
    (step,) = loaded.steps
    assert step.stream is False
    assert [spec.name for spec in step.handlers] == ["buffer"]
    assert step.spec.stream is False and step.spec.async_stream is None


def test_legacy_defaults_keys_are_renamed_with_warnings() -> None:
    text = """\
    name: legacy
    defaults:
      async_stream: false
      async_handler: buffer
    steps:
      - {id: a, prompt: hi}
    """
    with pytest.warns(DeprecationWarning) as record:
        loaded = load(text)
    assert [str(w.message) for w in record] == [
        "wf.yaml:3: 'async_stream' is deprecated; rename it to 'stream'",
        "wf.yaml:4: 'async_handler' is deprecated; rename it to 'stream_handler'",
    ]
    assert loaded.steps[0].stream is False
    assert [spec.name for spec in loaded.steps[0].handlers] == ["buffer"]


def test_legacy_key_with_the_same_value_as_the_current_one_only_warns() -> None:
    with pytest.warns(DeprecationWarning, match="'async_stream' is deprecated"):
        (step,) = load("- {id: a, prompt: hi, stream: false, async_stream: false}\n").steps
    assert step.stream is False


def test_the_migration_guides_before_file_still_loads_with_warnings(at_repo_root: Path) -> None:
    with pytest.warns(DeprecationWarning) as record:
        loaded = load_workflow("workflows/guide_before.yaml", mock=True)
    messages = [str(w.message) for w in record]
    assert any(m.startswith("workflows/guide_before.yaml:6: 'async_stream'") for m in messages)
    assert any(m.startswith("workflows/guide_before.yaml:7: 'async_handler'") for m in messages)
    assert any(
        m.startswith("workflows/guide_before.yaml:7: stream handler 'Pipeline.AsyncStreaming.ConsoleHandler'")
        for m in messages
    )
    (step,) = loaded.steps
    assert step.stream is True
    assert [spec.name for spec in step.handlers] == ["console"]


def test_the_migration_guides_after_file_loads_without_warnings(at_repo_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        (step,) = load_workflow("workflows/guide_after.yaml", mock=True).steps
    assert step.stream is True and [spec.name for spec in step.handlers] == ["console"]


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ("- {id: a, prompt: hi, stream: true, async_stream: false}\n", 1, "[0].async_stream", "'stream' (true vs"),
        (
            "- id: a\n  prompt: hi\n  stream_handler: console\n  async_handler: buffer\n",
            4,
            "[0].async_handler",
            "conflicts with 'stream_handler' ('console' vs 'buffer')",
        ),
        (
            "name: n\ndefaults:\n  async_stream: true\n  stream: false\nsteps: [{id: a, prompt: hi}]\n",
            3,
            "defaults.async_stream",
            "conflicts with 'stream'",
        ),
    ],
)
def test_a_legacy_key_that_disagrees_with_the_current_one_is_an_error(
    text: str, line: int, key: str, words: str
) -> None:
    issue_line, issue_key, message = only_issue(load_error(text))
    assert (issue_line, issue_key) == (line, key)
    assert words in message and "keep only" in message


def test_an_invalid_legacy_value_is_reported_where_it_is_written() -> None:
    error = load_error("name: n\ndefaults:\n  async_stream: maybe\nsteps: [{id: a, prompt: hi}]\n")
    line, _, message = only_issue(error)
    assert line == 3 and "got 'maybe'" in message


# ---------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------

TEMPLATES = """\
workflow:
  name: templates
  inputs:
    topic: {default: rivers}
  steps:
    - id: draft
      prompt: "About {{ inputs.topic }}"
    - id: names
      type: set
      vars: {who: "{{ steps.draft.text }}", count: 3}
    - id: final
      prompt: "{{ vars.who }} x{{ vars.count }}: {{ steps.draft.text }} {{ steps['names'] }}"
      system: "{% for w in inputs.topic.split() %}{{ w }}{% endfor %}"
"""


def test_templates_may_read_declared_inputs_earlier_steps_and_earlier_vars() -> None:
    loaded = load(TEMPLATES)
    assert [step.id for step in loaded.steps] == ["draft", "names", "final"]
    assert isinstance(loaded.steps[1].spec, SetStep)


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "words"),
    [
        ("About {{ inputs.topic }}", "About {{ inputs.subject }}", 7, "steps[0].prompt", "declares no input 'subject'"),
        ("{{ vars.who }} x", "{{ vars.whom }} x", 12, "steps[2].prompt", "vars.whom, but no earlier 'set' step"),
        ("{{ steps.draft.text }} {{", "{{ steps.draf.text }} {{", 12, "steps[2].prompt", "did you mean 'draft'?"),
        ('"{{ steps.draft.text }}", count', '"{{ steps.final.text }}", count', 10, "steps[1].vars.who", "runs later"),
        ("{% for w in", "{% for w in nothing + ", 13, "steps[2].system", "template reads 'nothing'"),
        ("About {{ inputs.topic }}", "About {{ inputs.topic ", 7, "steps[0].prompt", "template syntax error"),
    ],
    ids=["unknown-input", "unknown-var", "misspelt-step", "later-step-in-set", "unknown-root", "syntax"],
)
def test_template_problems_are_reported_at_the_templates_line(
    old: str, new: str, line: int, key: str, words: str
) -> None:
    assert old in TEMPLATES
    issue_line, issue_key, message = only_issue(load_error(TEMPLATES.replace(old, new, 1)))
    assert (issue_line, issue_key) == (line, f"workflow.{key}")
    assert words in message


def test_a_var_set_by_a_later_step_is_an_error() -> None:
    error = load_error(
        """\
        - {id: a, prompt: "{{ vars.later }}"}
        - {id: b, type: set, vars: {later: x}}
        """
    )
    line, key, message = only_issue(error)
    assert (line, key) == (1, "[0].prompt")
    assert "no earlier 'set' step sets it" in message


def test_a_syntax_error_in_a_block_prompt_names_the_prompts_line_and_the_template_line() -> None:
    error = load_error(
        """\
        - id: a
          prompt: |
            line one
            {% if %}
        """
    )
    line, key, message = only_issue(error)
    assert (line, key) == (2, "[0].prompt")
    assert "template syntax error on template line 2" in message


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    error = load_error(
        """\
        - {id: a, prompt: "{{ steps.zz }}"}
        - {id: a, prompt: hi, stream_handler: consol}
        - {id: c, prompt: "{{ inputs.q }}", provider: nope}
        """
    )
    lines = [issue.location.line for issue in error.issues]
    assert lines == sorted(lines) and set(lines) == {1, 2, 3}
    assert len(error.issues) == 5
    assert str(error).count("\n") >= len(error.issues) - 1


# ---------------------------------------------------------------------------------------------------------
# Python steps
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["json.dumps", "json:dumps"])
def test_a_python_steps_callable_is_resolved_at_load(path: str) -> None:
    (step,) = load(f"- {{id: p, type: python, callable: '{path}', args: {{indent: 2}}}}\n").steps
    assert isinstance(step.spec, PythonStep)
    assert step.function is json.dumps
    assert step.spec.args == {"indent": 2}


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("no_such_module_xyz.run", "cannot import 'no_such_module_xyz.run': ModuleNotFoundError"),
        ("json.no_such_function", "cannot import 'json.no_such_function': AttributeError"),
        ("os.sep", "'os.sep' is not a callable"),
        ("justaname", "'justaname' is not a callable; give 'package.module.function'"),
    ],
)
def test_a_bad_callable_is_an_error_at_the_callable_line(path: str, words: str) -> None:
    error = load_error(f"- id: p\n  type: python\n  callable: {path}\n")
    line, key, message = only_issue(error)
    assert (line, error.issues[0].location.column, key) == (3, 13, "[0].callable")
    assert words in message


# ---------------------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------------------


def test_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert json.loads(json.dumps(schema)) == schema


MAPPING_EXAMPLES = [
    name for name in EXAMPLES if isinstance(yaml.safe_load((REPO / "workflows" / name).read_text()), dict)
]


def test_some_examples_are_in_mapping_form() -> None:
    assert set(REAL_RUN_EXAMPLES) <= set(MAPPING_EXAMPLES)


@pytest.mark.parametrize("name", MAPPING_EXAMPLES)
def test_json_schema_accepts_the_mapping_form_examples(name: str) -> None:
    data = yaml.safe_load((REPO / "workflows" / name).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(json_schema())
    assert [error.message for error in validator.iter_errors(data)] == []


@pytest.mark.parametrize(
    "step",
    [
        {"id": "a", "prompt": "p", "promt": "q"},
        {"id": "a", "prompt": "p", "max_tokens": 0},
        {"id": "a", "type": "bogus", "prompt": "p"},
        {"id": "a", "type": "python"},
        {"id": "1a", "prompt": "p"},
    ],
)
def test_json_schema_rejects_what_the_loader_rejects(step: dict[str, object]) -> None:
    data = {"workflow": {"name": "n", "steps": [step]}}
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(data)
    with pytest.raises(WorkflowError):
        parse_workflow(yaml.safe_dump(data), "wf.yaml", mock=True)


def test_the_schema_command_prints_json_schema() -> None:
    from pipeline_ex.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    assert json.loads(out.getvalue()) == json_schema()


# ---------------------------------------------------------------------------------------------------------
# Mock mode
# ---------------------------------------------------------------------------------------------------------

CLAUDE = "- {id: a, prompt: hi, provider: claude, mock_response: [he, llo]}\n"


@pytest.mark.usefixtures("without_anthropic")
def test_without_mock_a_missing_provider_package_is_an_error() -> None:
    line, key, message = only_issue(load_error(CLAUDE, mock=False))
    assert (line, key) == (1, "[0].provider")
    assert "pip install 'pipeline-ex[anthropic]'" in message


def test_mock_turns_every_provider_into_mock_and_skips_install_checks() -> None:
    loaded = load(CLAUDE, mock=True)
    assert loaded.checked_offline is True
    (step,) = loaded.steps
    assert step.mock_response == ["he", "llo"]
    assert run(loaded, mock=True).steps["a"].text == "hello"  # no anthropic package, no key, no call


_LOAD_IN_CHILD = """
import sys, warnings
from pipeline_ex.workflow import parse_workflow
from pipeline_ex import run
loaded = parse_workflow(sys.stdin.read(), "wf.yaml")
print(loaded.checked_offline, run(loaded).steps["a"].text)
"""


def _load_in_child(text: str, mode: str) -> subprocess.CompletedProcess[str]:
    """Load `text` (mock=False) in a fresh interpreter with PIPELINE_TEST_MODE=mode.

    A child process, because the pytest plugin fixes each test's mode when the test starts.
    """
    env = {**os.environ, "PIPELINE_TEST_MODE": mode}
    return subprocess.run(
        [sys.executable, "-c", _LOAD_IN_CHILD], input=text, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("value", ["mock", " MOCK ", "Mock"])
def test_pipeline_test_mode_mock_is_the_same_as_mock_true(value: str) -> None:
    result = _load_in_child(CLAUDE, value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True hello"


@pytest.mark.usefixtures("without_anthropic")
def test_pipeline_test_mode_live_is_not_mock() -> None:
    result = _load_in_child(CLAUDE, "live")
    assert result.returncode != 0
    assert "WorkflowError" in result.stderr and "pipeline-ex[anthropic]" in result.stderr


def test_validate_honours_pipeline_test_mode_mock(tmp_path: Path) -> None:
    (tmp_path / "claude.yaml").write_text(CLAUDE, encoding="utf-8")
    script = Path(sys.executable).with_name("pipeline-ex")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline_ex"]
    result = subprocess.run(
        [*command, "validate", "claude.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PIPELINE_TEST_MODE": "mock"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout) == (0, "claude.yaml: ok (1 steps)\n"), result.stderr


def test_without_mock_a_missing_api_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    line, key, message = only_issue(load_error("- {id: a, prompt: hi, provider: openai}\n", mock=False))
    assert (line, key) == (1, "[0].provider") and "set the OPENAI_API_KEY environment variable" in message


def test_mock_skips_the_api_key_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    loaded = load("- {id: a, prompt: hi, provider: openai}\n", mock=True)
    assert loaded.checked_offline and loaded.steps[0].provider == "openai"
    with pytest.raises(WorkflowError, match="OPENAI_API_KEY"):  # a live run of it checks the key first
        run(loaded)


def test_a_mock_response_is_kept_for_mock_runs_and_the_mock_provider_only() -> None:
    on_mock = "- {id: a, prompt: hi, provider: mock, mock_response: canned}\n"
    assert run(load(on_mock, mock=False)).steps["a"].text == "canned"
    assert run(load(on_mock, mock=True), mock=True).steps["a"].text == "canned"
    on_local = "- {id: a, prompt: hi, provider: local, mock_response: canned}\n"
    assert load(on_local, mock=True).steps[0].options == {}  # never sent to a real provider
    assert run(load(on_local, mock=True), mock=True).steps["a"].text == "canned"


def test_mock_still_rejects_an_unknown_provider() -> None:
    line, key, message = only_issue(load_error("- {id: a, prompt: hi, provider: opnai}\n", mock=True))
    assert (line, key) == (1, "[0].provider")
    assert "unknown provider 'opnai' (did you mean 'openai'?)" in message


def test_provider_options_are_checked_for_a_real_run() -> None:
    error = load_error("- {id: a, prompt: hi, provider: mock, options: {dealy_ms: 5}}\n", mock=False)
    _, key, message = only_issue(error)
    assert key == "[0].provider"
    assert "unknown option 'dealy_ms' (did you mean 'delay_ms'?)" in message


# ---------------------------------------------------------------------------------------------------------
# YAML details
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("- id: a\n  prompt: hi\n  prompt: again\n", 3, "duplicate key 'prompt'"),
        ("- &s {id: a, prompt: hi}\n- <<: *s\n  id: b\n", 2, "merge keys (<<) are not supported"),
        ("- ? [a, b]\n  : c\n", 1, "keys must be plain text"),
        ("- {id: a, prompt: hi}\n---\n- {id: b, prompt: hi}\n", 2, "invalid YAML"),
    ],
    ids=["duplicate-key", "merge-key", "non-text-key", "two-documents"],
)
def test_yaml_the_loader_refuses(text: str, line: int, words: str) -> None:
    issue_line, _, message = only_issue(load_error(text))
    assert issue_line == line and words in message


def test_yaml_anchors_and_aliases_still_work() -> None:
    (first, second) = load("- {id: a, prompt: &p hi}\n- {id: b, prompt: *p}\n").steps
    assert first.spec.prompt == second.spec.prompt == "hi"


# ---------------------------------------------------------------------------------------------------------
# Known library bugs (strict xfails: they start failing when the bug is fixed)
# ---------------------------------------------------------------------------------------------------------


def test_a_bad_input_type_names_the_input_types() -> None:
    error = load_error("name: n\ninputs:\n  x: {type: float}\nsteps: [{id: a, prompt: hi}]\n")
    line, key, message = only_issue(error)
    assert (line, key) == (3, "inputs.x.type")
    assert "step" not in message and "integer" in message


def test_a_default_system_prompt_cannot_read_step_results() -> None:
    error = load_error('name: n\ndefaults:\n  system: "{{ steps.a.text }}"\nsteps: [{id: a, prompt: hi}]\n')
    line, key, _ = only_issue(error)
    assert (line, key) == (3, "defaults.system")


def test_a_bad_default_handler_is_reported_once() -> None:
    error = load_error("name: n\ndefaults: {stream_handler: consol}\nsteps: [{id: a, prompt: x}, {id: b, prompt: y}]\n")
    assert len(error.issues) == 1, str(error)


def test_a_step_that_is_not_a_mapping_says_so() -> None:
    line, key, message = only_issue(load_error("- just a string\n"))
    assert (line, key) == (1, "[0]")
    assert "mapping" in message


@pytest.mark.parametrize(
    "step",
    ["{id: a, prompt: hi, stream_handler: ''}", "{id: a, prompt: hi, mock_response: 3}", "{id: a, type: python}"],
    ids=["empty-handler", "mock-response-int", "python-without-callable"],
)
def test_union_types_give_one_issue_with_a_plain_key_path(step: str) -> None:
    error = load_error(f"- {step}\n")
    _, key, _ = only_issue(error)
    assert key is not None
    segments = key.replace("[", ".[").split(".")
    assert not any(tag in segments for tag in ("llm", "python", "constrained-str", "str")) and "list[" not in key
