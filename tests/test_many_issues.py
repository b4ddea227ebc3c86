"""A workflow with 20,000 problems: every one is reported, in line order, and collecting them is linear.

Each generated file has one problem per step line, of a few kinds that go through different parts of the
loader (schema errors, renamed legacy keys, template references, duplicate ids, output paths, handlers).
`pipeline-ex validate` runs as a subprocess under a generous budget: collection in linear time takes
seconds here, while the quadratic collection this guards against took minutes for the same files. The
budget is a bound on a blow-up, not a performance assertion.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("pipeline-ex")
COUNT = 20_000
BUDGET = 180  # seconds for one validate of 20,000 problems, far above what linear collection needs
HEADER = "workflow:\n  name: many\n  steps:\n"
FIRST_STEP_LINE = HEADER.count("\n") + 1
ISSUE = re.compile(r"^many\.yaml:(?P<line>\d+):(?P<column>\d+): (?P<key>\S+): (?P<message>.+)$")

SCHEMA_KINDS = [
    ("    - {{id: s{i}, prompt: hi, promt: x}}", "unknown key 'promt' (did you mean 'prompt'?)"),
    ("    - {{id: s{i}, prompt: hi, max_tokens: many}}", "expected a valid integer"),
    ("    - {{id: s{i}, prompt: hi, async_stream: maybe}}", "expected a valid boolean"),  # renamed to stream
    ("    - {{id: s{i}}}", "missing required key 'prompt'"),
]
"""Problems the schema finds: the file stops there, so these kinds share a file."""

LATER_KINDS = [
    ("    - {{id: s{i}, prompt: '{{{{ steps.nope{i}.text }}}}'}}", "template reads steps.nope"),
    ("    - {{id: same, prompt: hi}}", "duplicate step id 'same'"),
    ("    - {{id: s{i}, prompt: '{{{{ inputs.nope }}}}'}}", "declares no input 'nope'"),
    ("    - {{id: s{i}, prompt: hi, async_stream: true, output_to_file: ../x.md}}", "must be a relative path"),
    ("    - {{id: s{i}, prompt: hi, stream_handler: consol}}", "cannot use stream handler 'consol'"),
]
"""Problems found once the schema holds: templates, ids, output paths and handlers."""


def generate(kinds: list[tuple[str, str]], count: int) -> tuple[str, list[tuple[int, str]]]:
    """A workflow with `count` steps, one problem each (but the first duplicate id), and what to expect."""
    lines, expected = [], []
    for i in range(count):
        template, words = kinds[i % len(kinds)]
        lines.append(template.format(i=i))
        if not (words.startswith("duplicate") and i == kinds.index((template, words))):
            expected.append((FIRST_STEP_LINE + i, words))
    return HEADER + "\n".join(lines) + "\n", expected


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "pipeline_ex"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run(
        [*command, "validate", "--mock", path.name],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET,
        check=False,
    )


@pytest.mark.parametrize("kinds", [SCHEMA_KINDS, LATER_KINDS], ids=["schema", "after-schema"])
def test_twenty_thousand_problems_are_all_reported_in_line_order(kinds: list[tuple[str, str]], tmp_path: Path) -> None:
    text, expected = generate(kinds, COUNT)
    path = tmp_path / "many.yaml"
    path.write_text(text, encoding="utf-8")
    result = validate(path)  # raises TimeoutExpired past the budget
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("deprecated: ")]
    assert len(lines) == len(expected) >= COUNT - 1
    for line, (expected_line, words) in zip(lines, expected, strict=True):
        match = ISSUE.match(line)
        assert match is not None, line
        assert int(match["line"]) == expected_line, line
        assert words in match["message"], line
        assert len(line) < 1_000, line[:300]  # no issue lists every other step


def test_an_unknown_step_in_a_long_workflow_still_gets_a_suggestion(tmp_path: Path) -> None:
    steps = [f"    - {{id: step_{i}, prompt: hi}}" for i in range(500)]
    steps.append("    - {id: last, prompt: '{{ steps.stpe_17.text }} {{ steps.zzz.text }}'}")
    path = tmp_path / "many.yaml"
    path.write_text(HEADER + "\n".join(steps) + "\n", encoding="utf-8")
    result = validate(path)
    assert result.returncode == 2
    first, second = result.stderr.splitlines()
    assert "no earlier step has id 'stpe_17'; did you mean 'step_17'?" in first
    assert "no earlier step has id 'zzz'; earlier steps include step_490, " in second
    assert "step_499 (500 in all)" in second
