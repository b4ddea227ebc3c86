"""Editors find the workflow schema as the README says: its `$id`, and the VS Code settings it shows.

yaml-language-server (behind VS Code's YAML extension) resolves a `yaml.schemas` key relative to the
workspace folder and matches each pattern against a file's path below it, from any folder down (a
pattern `p` is read as `**/p`). It implements JSON Schema draft 7 in full; the schema declares 2020-12,
so it must not depend on keywords draft 7 lacks for editors to check all of it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import referencing
import yaml

from pipeline_ex.workflow.schema import SCHEMA_ID, json_schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# What draft 7 validates with, plus the annotations and `$defs` (a plain JSON Pointer target there).
DRAFT_7_KEYWORDS = set(jsonschema.Draft7Validator.VALIDATORS) | {
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "default",
    "examples",
}


def settings_block() -> dict[str, Any]:
    """The README's `.vscode/settings.json` block."""
    blocks = re.findall(r"```json\n(.*?)```", README, flags=re.DOTALL)
    (settings,) = [json.loads(b) for b in blocks if "yaml.schemas" in b]
    assert isinstance(settings, dict)
    return settings


def schema_command_target() -> str:
    """The file the README's command line section saves `pipeline-ex schema` to."""
    (target,) = set(re.findall(r"pipeline-ex schema > (\S+?)[`\s]", README))
    return target


def keywords(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            children = value.values() if key in ("properties", "$defs") and isinstance(value, dict) else [value]
            for child in children:
                keywords(child, found)
    elif isinstance(node, list):
        for item in node:
            keywords(item, found)
    return found


def test_the_schema_id_is_a_stable_absolute_uri() -> None:
    schema = json_schema()
    assert schema["$id"] == SCHEMA_ID == "urn:pipeline-ex:workflow"
    parts = urlsplit(SCHEMA_ID)
    # an absolute URI without a fragment, as JSON Schema requires of `$id`; RFC 8141's URN syntax
    assert parts.scheme == "urn" and not parts.fragment
    assert re.fullmatch(r"urn:[a-z0-9][a-z0-9-]{0,30}[a-z0-9]:[a-z0-9-]+(:[a-z0-9-]+)*", SCHEMA_ID)
    # no version in it: editors and caches keep one name for the format from one release to the next
    assert not re.search(r"\d", SCHEMA_ID)


def test_refs_resolve_against_the_id() -> None:
    schema = json_schema()
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema)))
    assert refs and all(r.startswith("#/$defs/") for r in refs)
    # the schema registered under its own `$id`, as a validator or an editor loads it
    registry = referencing.Registry().with_resource(SCHEMA_ID, referencing.Resource.from_contents(schema))
    resolver = registry.resolver(base_uri=SCHEMA_ID)
    for ref in refs:
        definition = schema["$defs"][ref.removeprefix("#/$defs/")]
        assert resolver.lookup(ref).contents == definition
        assert resolver.lookup(SCHEMA_ID + ref).contents == definition


def test_the_schema_uses_only_keywords_draft_7_editors_understand() -> None:
    used = keywords(json_schema(), set())
    assert used - DRAFT_7_KEYWORDS == set()


def test_the_readme_vs_code_settings_map_the_saved_schema_to_the_workflows(tmp_path: Path) -> None:
    mapping = settings_block()["yaml.schemas"]
    (schema_path, patterns) = next(iter(mapping.items()))
    assert len(mapping) == 1 and patterns == ["workflows/*.yaml"]
    # the key names the file the README's `pipeline-ex schema > ...` writes, relative to the workspace
    target = schema_command_target()
    assert Path(schema_path) == Path(target) and not Path(schema_path).is_absolute()

    # a workspace laid out as the README says: the schema saved by the command, the example workflows
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    command = [sys.executable, "-m", "pipeline_ex", "schema"]
    saved = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    (tmp_path / target).write_text(saved.stdout)

    schema = json.loads((tmp_path / schema_path).read_text())
    validators = [jsonschema.Draft202012Validator(schema), jsonschema.Draft7Validator(schema)]
    matched = sorted(p for pattern in patterns for p in tmp_path.glob(f"**/{pattern}"))
    assert {p.name for p in matched} == {p.name for p in (ROOT / "workflows").glob("*.yaml")}
    for path in matched:
        document = yaml.safe_load(path.read_text())
        for validator in validators:
            problems = [e.message for e in validator.iter_errors(document)]
            assert not problems, f"{path.name} ({type(validator).__name__}): {problems}"

    # and a mistake in one of them is reported by both drafts
    broken = yaml.safe_load((tmp_path / "workflows" / "hello.yaml").read_text())
    broken["workflow"]["steps"][0]["promt"] = broken["workflow"]["steps"][0].pop("prompt")
    for validator in validators:
        assert list(validator.iter_errors(broken)), type(validator).__name__


@pytest.mark.parametrize("line", re.findall(r"# yaml-language-server: \$schema=(\S+)", README))
def test_the_readme_modeline_names_the_saved_schema(line: str) -> None:
    assert line == schema_command_target()
