"""The published JSON Schema (`pipeline-ex schema`) accepts what the loader accepts, in all three shapes.

Every workflow in workflows/ and every YAML snippet of README.md and MIGRATION.md (the migration guide's
snippets are bare lists of steps) must validate, with the `jsonschema` package, against the schema that
`pipeline-ex schema` prints, so an editor using it through yaml-language-server shows no false errors.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline_ex.errors import WorkflowError
from pipeline_ex.workflow import json_schema, parse_workflow

REPO = Path(__file__).resolve().parents[1]
YAML_BLOCK = re.compile(r"```yaml\n(?P<code>.*?)```", re.DOTALL)


def snippets() -> list[Any]:
    found = []
    for doc in ("README.md", "MIGRATION.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        for number, match in enumerate(YAML_BLOCK.finditer(text), start=1):
            found.append(pytest.param(match["code"], id=f"{doc}-yaml-{number}"))
    return found


def examples() -> list[Any]:
    return [pytest.param(path, id=path.name) for path in sorted((REPO / "workflows").glob("*.yaml"))]


@pytest.fixture(scope="module")
def printed_schema() -> dict[str, Any]:
    """The schema exactly as `pipeline-ex schema` prints it."""
    script = Path(sys.executable).with_name("pipeline-ex")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline_ex"]
    result = subprocess.run([*command, "schema"], capture_output=True, text=True, timeout=60, check=True)
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


@pytest.fixture(scope="module")
def validator(printed_schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(printed_schema)
    return jsonschema.Draft202012Validator(printed_schema)


def errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(data)]


def test_the_printed_schema_is_the_library_schema_with_an_id(printed_schema: dict[str, Any]) -> None:
    assert printed_schema == json_schema()
    assert printed_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed_schema["$id"].startswith("urn:pipeline-ex:")
    assert printed_schema["title"] == "pipeline_ex workflow"


def test_the_docs_have_yaml_snippets_in_every_shape() -> None:
    shapes = {type(yaml.safe_load(param.values[0])).__name__ for param in snippets()}
    assert {"list", "dict"} <= shapes


@pytest.mark.parametrize("text", snippets())
def test_every_yaml_snippet_of_the_docs_validates(validator: jsonschema.Draft202012Validator, text: str) -> None:
    data = yaml.safe_load(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the guide's BEFORE snippet uses the legacy keys
        parse_workflow(text, "snippet.yaml", mock=True)  # the loader takes it too
    assert errors(validator, data) == []


@pytest.mark.parametrize("path", examples())
def test_every_example_workflow_validates(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    assert errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


STEPS = [{"id": "draft", "prompt": "Write."}, {"id": "tidy", "type": "python", "callable": "json.dumps"}]
GROUPS = [
    {"id": "views", "parallel": [{"id": "pros", "prompt": "P"}, {"id": "cons", "prompt": "C"}], "on_error": "continue"},
    {
        "id": "sections",
        "for_each": ["a", "b"],
        "as": "topic",
        "max_parallel": 2,
        "steps": [{"id": "part", "prompt": "{{ topic }}", "when": "{{ topic != 'b' }}"}],
    },
    {"id": "refine", "loop": {"until": "{{ true }}", "max_iterations": 2}, "steps": [{"id": "again", "prompt": "x"}]},
]


@pytest.mark.parametrize(
    "data",
    [{"workflow": {"name": "w", "steps": STEPS}}, {"name": "w", "steps": STEPS}, STEPS, GROUPS],
    ids=["workflow-mapping", "plain-mapping", "bare-list", "groups"],
)
def test_the_three_shapes_the_loader_takes_validate(validator: jsonschema.Draft202012Validator, data: Any) -> None:
    assert errors(validator, data) == []
    parse_workflow(json.dumps(data), "shapes.yaml", mock=True)


@pytest.mark.parametrize(
    "data",
    [
        [{"id": "a", "promt": "x"}],
        [],
        [{"id": "1a", "prompt": "x"}],
        {"name": "w", "steps": [{"id": "a", "prompt": "x"}], "extra": 1},
        {"workflow": {"name": "w", "steps": [{"id": "a", "prompt": "x"}]}, "steps": []},
        {"steps": [{"id": "a", "prompt": "x"}]},
        "just text",
        [{"id": "g", "parallel": [{"id": "a", "promt": "x"}]}],
        [{"id": "g", "for_each": [1], "max_parallel": 0, "steps": [{"id": "a", "prompt": "x"}]}],
        [{"id": "g", "loop": {"until": "{{ true }}"}, "steps": [{"id": "a", "prompt": "x"}]}],
        [{"id": "g", "parallel": []}],
        [{"id": "g", "for_each": [1], "steps": [{"id": "a", "prompt": "x"}], "as": "not a name"}],
    ],
    ids=[
        "bare-list-typo",
        "no-steps",
        "bad-id",
        "plain-unknown-key",
        "key-next-to-workflow",
        "no-name",
        "text",
        "typo-in-a-group",
        "max-parallel-0",
        "loop-without-max",
        "empty-parallel",
        "bad-item-name",
    ],
)
def test_what_the_loader_refuses_the_schema_refuses(validator: jsonschema.Draft202012Validator, data: Any) -> None:
    assert errors(validator, data) != []
    with pytest.raises(WorkflowError):
        parse_workflow(json.dumps(data), "refused.yaml", mock=True)


def test_the_readme_shows_the_yaml_language_server_line() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pipeline-ex schema > workflow.schema.json" in readme
    assert "# yaml-language-server: $schema=workflow.schema.json" in readme
