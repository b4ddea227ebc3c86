"""Fuzzing the workflow loader: whatever text it gets, `parse_workflow` returns a `LoadedWorkflow` or raises a
`WorkflowError` whose every issue has a file and a line >= 1, never any other exception.

Three sources of input: arbitrary text (control characters included), YAML dumped from random nested data
(some of it shaped like a workflow), and mutations of valid workflows. `mock=True` keeps provider packages
out of it. Inputs that are known to crash the loader are pinned as strict xfails at the end.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline_ex.errors import WorkflowError
from pipeline_ex.workflow import LoadedWorkflow, parse_workflow

REPO = Path(__file__).resolve().parents[1]
FILE = "fuzz/workflow.yaml"

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RICH = """\
# A valid workflow that uses most of the format, as a seed for mutations.
workflow:
  name: rich
  description: "Seed for the fuzzer."
  inputs:
    topic: {default: rivers, description: "what to write about"}
    count: {default: 2, type: integer}
  defaults:
    provider: mock
    model: tiny
    stream: true
    stream_handler: buffer
    temperature: 0.2
    max_tokens: 40
    stop: ["END"]
    options: {delay_ms: 0}
  steps:
    - id: draft
      type: llm
      prompt: |
        Write {{ inputs.count }} lines about {{ inputs.topic }}.
        {% for word in ['a', 'b'] %}{{ word }}{% endfor %}
      system: "Be brief."
      mock_response: ["one ", "two"]
    - id: names
      type: set
      vars: {who: "{{ steps.draft.text }}", n: 3}
    - id: encode
      type: python
      callable: json.dumps
      args: {indent: 2}
    - id: legacy
      prompt: "{{ vars.who }} {{ steps['encode'] }}"
      async_stream: false
      async_handler: Pipeline.AsyncStreaming.NullHandler
    - id: listed
      prompt: "Again: {{ steps.legacy.text }}"
      stream_handler: ["null", Pipeline.Streaming.BufferHandler]
    - id: configured
      prompt: hi
      stream_handler: console
      stream_handler_options: {to: stderr, summary: false}
"""
SEEDS = [RICH, *(path.read_text(encoding="utf-8") for path in sorted((REPO / "workflows").glob("*.yaml")))]


def check(text: str) -> str:
    """The property: a LoadedWorkflow, or a WorkflowError whose issues all have a file and a line >= 1.

    :returns: what happened, for hypothesis' statistics (`--hypothesis-show-statistics`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loaded = parse_workflow(text, FILE, mock=True)
        except WorkflowError as error:
            assert error.issues, "a WorkflowError with no issue"
            for issue in error.issues:
                assert issue.location.file == FILE, issue
                assert type(issue.location.line) is int and issue.location.line >= 1, issue
                assert issue.location.column is None or issue.location.column >= 1, issue
                assert issue.message, issue
            assert str(error).startswith(f"{FILE}:")
            return "WorkflowError, " + ("invalid YAML" if "invalid YAML" in str(error) else "after parsing")
    assert isinstance(loaded, LoadedWorkflow)
    assert loaded.steps and loaded.checked_offline
    return "loaded"


def test_the_seeds_are_valid() -> None:
    for seed in SEEDS:
        check(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert len(parse_workflow(RICH, FILE, mock=True).steps) == 6


# ---------------------------------------------------------------------------------------------------------
# (a) arbitrary text
# ---------------------------------------------------------------------------------------------------------

YAML_CHARS = " \t\n\r-:?,[]{}#&*!|>'\"%@`\\\x00\x07\x1b\x85\u2028\ufeffabcxyz019"


@FUZZ
@given(st.text() | st.text(alphabet=YAML_CHARS) | st.text(alphabet=st.characters(max_codepoint=0x1F)))
def test_arbitrary_text(text: str) -> None:
    event(check(text))


# ---------------------------------------------------------------------------------------------------------
# (b) YAML dumped from random nested data
# ---------------------------------------------------------------------------------------------------------

KEYS = [
    "workflow", "name", "description", "inputs", "defaults", "steps", "id", "type", "prompt", "system", "provider",
    "model", "options", "stream", "stream_handler", "stream_handler_options", "async_stream", "async_handler",
    "temperature", "max_tokens", "top_p", "stop", "seed", "mock_response", "output_to_file", "callable", "args",
    "vars", "default", "llm", "python", "set", "<<",
]  # fmt: skip
STRING_VALUES = [
    "llm", "python", "set", "mock", "local", "claude", "openai", "console", "buffer", "null", "consol",
    "json.dumps", "Pipeline.AsyncStreaming.ConsoleHandler", "{{ steps.a.text }}", "{{ inputs.x }}",
    "{{ vars.v }}", "{% if %}", "{{", "a", "b",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(STRING_VALUES)
)
keys = st.sampled_from(KEYS) | st.text(max_size=6)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
steps = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c", "1x", ""]) | st.text(max_size=4)},
    optional={key: trees for key in KEYS if key not in ("workflow", "id")},
)
workflow_like = st.fixed_dictionaries(
    {"name": scalars, "steps": st.lists(steps, max_size=4) | trees},
    optional={"inputs": trees, "defaults": st.dictionaries(keys, trees, max_size=5), "description": scalars},
)

# mostly valid workflows, so that template, handler and provider checks run too
ids = st.sampled_from(["a", "b", "c", "d"])
templates = st.sampled_from(
    ["hi", "{{ inputs.topic }}", "{{ inputs.nope }}", "{{ steps.a.text }}", "{{ steps.c }}", "{{ vars.v }}", "{% if"]
)
handlers = st.sampled_from(["console", "buffer", "null", "recorder", "consol", "Pipeline.Streaming.NullHandler"])
llm_steps = st.fixed_dictionaries(
    {"id": ids, "prompt": templates},
    optional={
        "type": st.just("llm"),
        "system": templates,
        "provider": st.sampled_from(["mock", "local", "claude", "anthropic", "nope"]),
        "stream": st.booleans(),
        "async_stream": st.booleans(),
        "stream_handler": handlers | st.lists(handlers, max_size=3),
        "async_handler": handlers,
        "stream_handler_options": st.dictionaries(st.sampled_from(["to", "summary", "colour"]), scalars, max_size=2),
        "max_tokens": st.integers(min_value=-1, max_value=500),
        "temperature": st.floats(min_value=0, max_value=2),
        "mock_response": st.text(max_size=8) | st.lists(st.text(max_size=4), max_size=3),
    },
)
set_steps = st.fixed_dictionaries(
    {"id": ids, "type": st.just("set"), "vars": st.dictionaries(st.sampled_from(["v", "w"]), templates | scalars)}
)
python_steps = st.fixed_dictionaries(
    {"id": ids, "type": st.just("python"), "callable": st.sampled_from(["json.dumps", "json:loads", "nope.x", "os"])}
)
valid_ish = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "steps": st.lists(llm_steps | set_steps | python_steps, min_size=1, max_size=5)},
    optional={
        "inputs": st.just({"topic": {"default": "rivers"}}),
        "defaults": st.fixed_dictionaries({}, optional={"stream_handler": handlers, "max_tokens": st.integers(1, 9)}),
    },
)
documents = (
    trees
    | workflow_like
    | st.builds(lambda body: {"workflow": body}, workflow_like)
    | st.lists(steps)
    | st.builds(lambda body: {"workflow": body}, valid_ish)
)


@FUZZ
@given(documents, st.booleans())
def test_yaml_from_random_data(data: Any, flow_style: bool) -> None:
    event(check(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=flow_style)))


# ---------------------------------------------------------------------------------------------------------
# (c) mutations of valid workflows
# ---------------------------------------------------------------------------------------------------------

INSERTED = " \t\n-:{}[]'\"#&*!|>%@,?\\abz"
OPERATIONS = ["delete", "duplicate", "insert", "indent", "drop_line"]


@st.composite
def mutated_workflows(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not text:
            break
        operation = draw(st.sampled_from(OPERATIONS))
        at = draw(st.integers(min_value=0, max_value=len(text) - 1))
        lines = text.split("\n")
        line = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        if operation == "delete":
            text = text[:at] + text[at + draw(st.integers(min_value=1, max_value=8)) :]
        elif operation == "duplicate":
            text = text[:at] + text[at : at + draw(st.integers(min_value=1, max_value=16))] + text[at:]
        elif operation == "insert":
            text = text[:at] + draw(st.text(alphabet=INSERTED, min_size=1, max_size=4)) + text[at:]
        elif operation == "indent":
            lines[line] = " " * draw(st.integers(min_value=0, max_value=12)) + lines[line].lstrip(" ")
            text = "\n".join(lines)
        else:
            del lines[line]
            text = "\n".join(lines)
    return text


@FUZZ
@given(mutated_workflows())
def test_mutated_valid_workflows(text: str) -> None:
    event(check(text))


# ---------------------------------------------------------------------------------------------------------
# Known crashers (found while writing these tests): each should become a WorkflowError at its line
# ---------------------------------------------------------------------------------------------------------

CRASHERS = [
    pytest.param(
        "- {id: a, prompt: 2020-13-45}\n",
        id="impossible-date",
    ),
    pytest.param(
        "name: 2021-02-30\nsteps: [{id: a, prompt: hi}]\n",
        id="impossible-day",
    ),
    pytest.param(
        "- {id: a, prompt: hi, seed: " + "9" * 5000 + "}\n",
        id="huge-int",
    ),
    pytest.param(
        "- {id: a, prompt: !!int x}\n",
        id="bad-int-tag",
    ),
    pytest.param(
        "- {id: a, prompt: !!float x}\n",
        id="bad-float-tag",
    ),
    pytest.param(
        "- {id: a, prompt: !!bool x}\n",
        id="bad-bool-tag",
    ),
    pytest.param(
        "- {id: a, prompt: !!timestamp x}\n",
        id="bad-timestamp-tag",
    ),
    pytest.param(
        "- {id: a, prompt: '{{ " + "(" * 500 + " }}'}\n",
        id="deeply-nested-template",
    ),
    pytest.param(
        "- {id: a, prompt: '{{ " + "9" * 5000 + " }}'}\n",
        id="huge-int-in-template",
    ),
]


@pytest.mark.parametrize("text", CRASHERS)
def test_known_crashers_are_workflow_errors(text: str) -> None:
    check(text)
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, FILE, mock=True)
    assert caught.value.issues[0].location.line in (1, 2)


@pytest.mark.parametrize(
    "text",
    [
        "- {id: a, prompt: '2020-13-45'}\n",
        "[" * 5000,
        "- {id: a, prompt: '{{ " + "(" * 20 + "1" + ")" * 20 + " }}'}\n",
        "- {id: a, prompt: !!binary aGk=}\n",
        "- {id: a, prompt: !!python/name:os.system}\n",
        "\ufeff- {id: a, prompt: hi}\n",
        "- {id: a, prompt: 'nul \x00 here'}\n",
    ],
    ids=["quoted-date", "deep-yaml", "nested-template", "binary-tag", "python-tag", "bom", "nul"],
)
def test_edge_cases_that_are_handled(text: str) -> None:
    check(text)
