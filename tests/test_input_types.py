"""Declared input types hold for every source: `--input`, `run(inputs=...)`, HTTP bodies and defaults.

The rule: text (a command-line value, a form field, any string) is read as the declared type; a value
that is not text must already have the type. `bool` is not an integer or a number, `inf` and `nan` are
not numbers, and a whole number written as a float (`1.0`, as JSON clients may send it) is an integer,
as in JSON Schema. A wrong value is an `InputError` naming the input, the type, what was given, and the
file and line that declare it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_kit import serving

from pipeline_ex import run
from pipeline_ex.errors import WorkflowError
from pipeline_ex.workflow import InputError, LoadedWorkflow, parse_workflow

TYPED = """\
workflow:
  name: typed
  inputs:
    topic: {default: owls}
    count: {type: integer, default: 3}
    ratio: {type: number, default: 0.5}
    loud: {type: boolean, default: false}
  steps:
    - id: answer
      provider: mock
      prompt: "{{ inputs.count }} {{ inputs.ratio }} {{ inputs.loud }} {{ inputs.topic }}"
"""
DECLARED = {"topic": 4, "count": 5, "ratio": 6, "loud": 7}


@pytest.fixture
def typed() -> LoadedWorkflow:
    return parse_workflow(TYPED, "/srv/secret/place/typed.yaml", mock=True)


def prompt_of(loaded: LoadedWorkflow, inputs: dict[str, Any]) -> str:
    return run(loaded, inputs, mock=True).steps["answer"].text.removeprefix("Mock reply to: ")


# ---------------------------------------------------------------------------------------------------------
# From Python
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "prompt"),
    [
        ({}, "3 0.5 False owls"),
        ({"count": 7, "ratio": 2, "loud": True, "topic": "bats"}, "7 2.0 True bats"),
        ({"count": 7.0}, "7 0.5 False owls"),  # a whole number sent as a float is an integer
        ({"count": "8", "ratio": "2.5", "loud": "yes"}, "8 2.5 True owls"),  # text is read as the type
        ({"count": " 9 ", "loud": "Off"}, "9 0.5 False owls"),
        ({"ratio": -1e308}, "3 -1e+308 False owls"),
    ],
)
def test_values_of_the_declared_type_are_accepted(typed: LoadedWorkflow, inputs: dict[str, Any], prompt: str) -> None:
    assert prompt_of(typed, inputs) == prompt


@pytest.mark.parametrize(
    ("name", "value", "expected", "given"),
    [
        ("count", 1.5, "an integer", "1.5, a number with a fractional part"),
        ("count", math.inf, "an integer", "inf, which is not a finite number"),
        ("count", True, "an integer", "true, a boolean"),
        ("count", "many", "an integer", "'many', which is not a whole number"),
        ("count", "1e3", "an integer", "'1e3', which is not a whole number"),
        ("count", None, "an integer", "null (no value)"),
        ("count", [1], "an integer", "[1], a list"),
        ("ratio", math.nan, "a number", "nan, which is not a finite number"),
        ("ratio", -math.inf, "a number", "-inf, which is not a finite number"),
        ("ratio", "1e999", "a number", "'1e999', which is not a finite number"),
        ("ratio", "nan", "a number", "'nan', which is not a finite number"),
        ("ratio", False, "a number", "false, a boolean"),
        ("ratio", "half", "a number", "'half', which is not a number"),
        ("loud", 1, "a boolean", "1, a number"),
        ("loud", "maybe", "a boolean", "'maybe', which is not one of true/false, yes/no, on/off, 1/0"),
        ("topic", 5, "a string", "5, a number"),
        ("topic", False, "a string", "false, a boolean"),
        ("topic", {"a": 1}, "a string", "{'a': 1}, a mapping"),
    ],
)
def test_values_of_another_type_are_input_errors_naming_input_type_value_and_declaration(
    typed: LoadedWorkflow, name: str, value: Any, expected: str, given: str
) -> None:
    with pytest.raises(InputError) as caught:
        run(typed, {name: value})
    assert str(caught.value) == (
        f"input {name!r} must be {expected}, got {given} (declared at typed.yaml:{DECLARED[name]})"
    )
    assert "/srv/secret" not in str(caught.value)


def test_a_text_input_that_is_too_large_for_a_float_is_refused(typed: LoadedWorkflow) -> None:
    with pytest.raises(InputError, match=r"input 'ratio' must be a number, got 1000\d*\.\.\., a number too large"):
        run(typed, {"ratio": 10**400})


# ---------------------------------------------------------------------------------------------------------
# Defaults, checked when the workflow loads
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("{type: integer, default: 1.5}", "the default must be an integer, got 1.5, a number with a fractional part"),
        ("{type: integer, default: yes}", "the default must be an integer, got true, a boolean"),
        ("{type: number, default: many}", "the default must be a number, got 'many', which is not a number"),
        ("{type: boolean, default: 2}", "the default must be a boolean, got 2, a number"),
        ("{default: 42}", "the default must be a string, got 42, a number; quote it to keep it as text"),
        ("{default: null}", "the default must be a string, got null (no value); remove 'default' to make"),
        ("{type: integer, default: [1, 2]}", "the default must be an integer, got [1, 2], a list"),
    ],
)
def test_a_default_of_the_wrong_type_is_a_load_error_at_its_line(spec: str, words: str) -> None:
    text = f"workflow:\n  name: d\n  inputs:\n    x: {spec}\n  steps:\n    - {{id: a, prompt: '{{{{ inputs.x }}}}'}}\n"
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "d.yaml", mock=True)
    (issue,) = caught.value.issues
    assert (issue.location.line, issue.location.key) == (4, "workflow.inputs.x.default")
    assert words in issue.message, issue.message


def test_a_default_written_as_text_is_read_as_the_declared_type() -> None:
    text = TYPED.replace("default: 3}", 'default: "4"}').replace("default: false}", "default: 'on'}")
    loaded = parse_workflow(text, "typed.yaml", mock=True)
    assert loaded.workflow.inputs["count"].default == 4
    assert prompt_of(loaded, {}) == "4 0.5 True owls"


# ---------------------------------------------------------------------------------------------------------
# From the command line
# ---------------------------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("pipeline-ex")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline_ex"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("pair", "words"),
    [
        ("count=1.5", "input 'count' must be an integer, got '1.5', which is not a whole number"),
        ("ratio=inf", "input 'ratio' must be a number, got 'inf', which is not a finite number"),
        ("ratio=1e999", "input 'ratio' must be a number, got '1e999', which is not a finite number"),
        ("loud=perhaps", "input 'loud' must be a boolean, got 'perhaps'"),
    ],
)
def test_the_command_line_converts_text_and_refuses_what_is_not_the_type(pair: str, words: str, tmp_path: Path) -> None:
    (tmp_path / "typed.yaml").write_text(TYPED, encoding="utf-8")
    bad = cli("run", "--mock", "typed.yaml", "--input", pair, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"error: {words}" in bad.stderr and "(declared at typed.yaml:" in bad.stderr
    good = cli("run", "--mock", "typed.yaml", "-i", "count=12", "-i", "ratio=0.25", "-i", "loud=true", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "Mock reply to: 12 0.25 True owls" in good.stdout


# ---------------------------------------------------------------------------------------------------------
# Over HTTP (a real uvicorn on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[httpx.Client]:
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "typed.yaml").write_text(textwrap.dedent(TYPED), encoding="utf-8")
    with serving(folder) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": {"count": 1.5}}', "input 'count' must be an integer, got 1.5, a number with a fractional part"),
        (b'{"inputs": {"count": true}}', "input 'count' must be an integer, got true, a boolean"),
        (b'{"inputs": {"topic": 5}}', "input 'topic' must be a string, got 5, a number"),
        (b'{"inputs": {"loud": 0}}', "input 'loud' must be a boolean, got 0, a number"),
    ],
    ids=["fraction", "bool-for-int", "number-for-string", "int-for-bool"],
)
def test_http_inputs_of_the_wrong_type_are_422_naming_the_declaration(
    served: httpx.Client, body: bytes, message: str
) -> None:
    response = served.post("/workflows/typed/run", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith(message), error
    assert "(declared at typed.yaml:" in error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": {"count": 1e999}}', "the request body is not valid JSON (1e999 is out of range)"),
        (b'{"inputs": {"ratio": NaN}}', "the request body is not valid JSON (NaN is not a JSON number)"),
        (b'{"inputs": {"topic": "\\ud800"}}', "the request body has a string with an unpaired surrogate"),
    ],
    ids=["1e999", "nan", "lone-surrogate"],
)
def test_http_bodies_that_json_cannot_carry_as_inputs_are_400(served: httpx.Client, body: bytes, message: str) -> None:
    """Values strict JSON does not allow never reach the inputs: the server refuses the body itself."""
    response = served.post("/workflows/typed/run", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(message)


def test_http_inputs_of_the_declared_type_run(served: httpx.Client) -> None:
    for inputs, prompt in [
        ({"count": 5, "ratio": 1, "loud": True}, "5 1.0 True owls"),
        ({"count": 5.0}, "5 0.5 False owls"),
        ({"count": "6", "loud": "no"}, "6 0.5 False owls"),  # what the served page's form fields send
    ]:
        response = served.post("/workflows/typed/run", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        assert response.json()["steps"]["answer"]["text"] == f"Mock reply to: {prompt}"
