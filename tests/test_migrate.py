"""`pipeline-ex migrate`: finding and rewriting legacy async_stream / async_handler / AsyncStreaming usage.

Fine-grained behaviour goes through the library (`audit`, `rewrite`, `migrate_file`); exit codes and the
printed report go through the command line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from cli_kit import write

from pipeline_ex.errors import WorkflowError
from pipeline_ex.workflow import parse_workflow
from pipeline_ex.workflow.migrate import LegacyUse, audit, migrate_file, rewrite

REPO = Path(__file__).resolve().parents[1]
BEFORE = REPO / "workflows" / "guide_before.yaml"
AFTER = REPO / "workflows" / "guide_after.yaml"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline_ex", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def migrated(text: str, file: str = "wf.yaml") -> str:
    uses, conflicts = audit(text, file)
    assert not conflicts, conflicts
    return rewrite(text, uses)


@pytest.fixture
def before(tmp_path: Path) -> Path:
    target = tmp_path / "g.yaml"
    shutil.copyfile(BEFORE, target)
    return target


# ---------------------------------------------------------------------------------------------------------
# the migration guide's example
# ---------------------------------------------------------------------------------------------------------


def test_write_turns_guide_before_into_guide_after_byte_for_byte(before: Path) -> None:
    result = cli("migrate", "--write", before.name, cwd=before.parent)
    assert result.returncode == 0, result.stderr
    assert before.read_bytes() == AFTER.read_bytes()
    text = before.read_text(encoding="utf-8")
    assert "# the guide's snippet leaves the prompt out" in text
    assert "stream: true  # tokens reach the handler as they arrive" in text  # inline comment kept
    # the diff is printed, then a summary line
    assert "--- g.yaml\n+++ g.yaml (migrated)\n" in result.stdout
    assert "-  async_stream: true  # tokens reach the handler as they arrive\n" in result.stdout
    assert "+  stream: true  # tokens reach the handler as they arrive\n" in result.stdout
    assert "-  async_handler: Pipeline.AsyncStreaming.ConsoleHandler\n" in result.stdout
    assert "+  stream_handler: Pipeline.Streaming.ConsoleHandler\n" in result.stdout
    assert "g.yaml: rewrote 3 legacy usage(s)" in result.stdout


def test_write_is_idempotent(before: Path) -> None:
    assert cli("migrate", "--write", before.name, cwd=before.parent).returncode == 0
    again = cli("migrate", "--write", before.name, cwd=before.parent)
    assert again.returncode == 0
    assert again.stdout.strip() == "g.yaml: no legacy usage"
    assert before.read_bytes() == AFTER.read_bytes()


def test_check_lists_every_usage_with_file_line_column_and_exits_1(before: Path) -> None:
    original = before.read_bytes()
    result = cli("migrate", "--check", before.name, cwd=before.parent)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "g.yaml:6:3: async_stream -> stream",
        "g.yaml:7:3: async_handler -> stream_handler",
        "g.yaml:7:18: Pipeline.AsyncStreaming.ConsoleHandler -> Pipeline.Streaming.ConsoleHandler",
    ]
    assert before.read_bytes() == original  # --check never writes


def test_check_on_a_migrated_file_exits_0(tmp_path: Path) -> None:
    shutil.copyfile(AFTER, tmp_path / "after.yaml")
    result = cli("migrate", "--check", "after.yaml", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "after.yaml: no legacy usage"


def test_check_or_write_is_required(before: Path) -> None:
    result = cli("migrate", before.name, cwd=before.parent)
    assert result.returncode == 2
    assert "--check" in result.stderr
    assert cli("migrate", "--check", "--write", before.name, cwd=before.parent).returncode == 2


def test_audit_and_rewrite_of_the_guide() -> None:
    text = BEFORE.read_text(encoding="utf-8")
    uses, conflicts = audit(text, "guide_before.yaml")
    assert conflicts == []
    assert [(u.line, u.column, u.found, u.replacement) for u in uses] == [
        (6, 3, "async_stream", "stream"),
        (7, 3, "async_handler", "stream_handler"),
        (7, 18, "Pipeline.AsyncStreaming.ConsoleHandler", "Pipeline.Streaming.ConsoleHandler"),
    ]
    for use in uses:
        assert text[use.start : use.end] == use.found
        assert str(use).startswith(f"guide_before.yaml:{use.line}:{use.column}: {use.found} -> ")
    assert rewrite(text, uses) == AFTER.read_text(encoding="utf-8")
    assert rewrite(text, []) == text


def test_migrate_file_without_write_reports_but_does_not_touch(before: Path) -> None:
    original = before.read_bytes()
    report = migrate_file(before, write=False)
    assert before.read_bytes() == original
    assert len(report.uses) == 3 and report.conflicts == []
    assert report.diff.startswith(f"--- {before}\n+++ {before} (migrated)\n")

    report = migrate_file(before, write=True)
    assert before.read_bytes() == AFTER.read_bytes()
    assert len(report.uses) == 3


def test_migrated_guide_validates_and_runs_with_mock_without_warnings(before: Path) -> None:
    assert cli("migrate", "--write", before.name, cwd=before.parent).returncode == 0
    check = cli("validate", "--mock", before.name, cwd=before.parent)
    assert check.returncode == 0, check.stderr
    assert "deprecated" not in check.stderr
    run = cli("run", before.name, "--mock", cwd=before.parent)
    assert run.returncode == 0, run.stderr
    assert "Mock reply to: Write a short report on streaming." in run.stdout
    assert "deprecated" not in run.stderr


def test_legacy_file_still_runs_with_warnings_before_migration(before: Path) -> None:
    run = cli("run", before.name, "--mock", cwd=before.parent)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("deprecated:") == 3


# ---------------------------------------------------------------------------------------------------------
# formatting that must survive a rewrite
# ---------------------------------------------------------------------------------------------------------


def test_quoting_style_is_preserved() -> None:
    text = textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler: "Pipeline.AsyncStreaming.ConsoleHandler"   # double
        - id: b
          prompt: y
          async_handler: 'Pipeline.AsyncStreaming.FileHandler'
          stream_handler_options: {path: out.txt}
        - id: c
          prompt: z
          stream_handler: Pipeline.AsyncStreaming.NullHandler
        """
    )
    uses, _ = audit(text, "q.yaml")
    assert [(u.line, u.column) for u in uses] == [(3, 19), (6, 3), (6, 18), (10, 19)]
    assert migrated(text) == textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler: "Pipeline.Streaming.ConsoleHandler"   # double
        - id: b
          prompt: y
          stream_handler: 'Pipeline.Streaming.FileHandler'
          stream_handler_options: {path: out.txt}
        - id: c
          prompt: z
          stream_handler: Pipeline.Streaming.NullHandler
        """
    )


def test_handler_lists_flow_and_block() -> None:
    text = textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler: [Pipeline.AsyncStreaming.ConsoleHandler, null]
        - id: b
          prompt: y
          stream_handler:
            - Pipeline.AsyncStreaming.ConsoleHandler  # to the terminal
            - "Pipeline.AsyncStreaming.NullHandler"
            - console
        """
    )
    uses, conflicts = audit(text, "lists.yaml")
    assert conflicts == []
    assert [(u.line, u.column, u.found) for u in uses] == [
        (3, 20, "Pipeline.AsyncStreaming.ConsoleHandler"),
        (7, 7, "Pipeline.AsyncStreaming.ConsoleHandler"),
        (8, 7, "Pipeline.AsyncStreaming.NullHandler"),
    ]
    out = migrated(text)
    assert out == textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler: [Pipeline.Streaming.ConsoleHandler, null]
        - id: b
          prompt: y
          stream_handler:
            - Pipeline.Streaming.ConsoleHandler  # to the terminal
            - "Pipeline.Streaming.NullHandler"
            - console
        """
    )
    # YAML reads a bare `null` as None, not as the `null` handler: quoted, the migrated file loads.
    loaded = parse_workflow(out.replace(", null]", ', "null"]'), "lists.yaml", mock=True)
    assert [[h.name for h in step.handlers] for step in loaded.steps] == [
        ["console", "null"],
        ["console", "null", "console"],
    ]


def test_bare_null_in_a_handler_list_is_reported_at_its_line() -> None:
    text = "- id: a\n  prompt: x\n  stream_handler: [Pipeline.Streaming.ConsoleHandler, null]\n"
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "lists.yaml", mock=True)
    assert {issue.location.line for issue in caught.value.issues} == {3}


def test_legacy_keys_under_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "defaults.yaml",
        """
        workflow:
          name: d
          defaults:
            provider: mock
            async_stream: false   # one call, one delta
            async_handler: Pipeline.AsyncStreaming.Handler
          steps:
            - id: a
              prompt: x
        """,
    )
    check = cli("migrate", "--check", path.name, cwd=tmp_path)
    assert check.returncode == 1
    assert check.stdout.splitlines() == [
        "defaults.yaml:5:5: async_stream -> stream",
        "defaults.yaml:6:5: async_handler -> stream_handler",
        "defaults.yaml:6:20: Pipeline.AsyncStreaming.Handler -> Pipeline.Streaming.ConsoleHandler",
    ]
    assert cli("migrate", "--write", path.name, cwd=tmp_path).returncode == 0
    text = path.read_text(encoding="utf-8")
    assert "    stream: false   # one call, one delta\n" in text
    assert "    stream_handler: Pipeline.Streaming.ConsoleHandler\n" in text
    loaded = parse_workflow(text, path.name)
    assert loaded.steps[0].stream is False
    assert loaded.workflow.defaults.async_stream is None
    assert cli("migrate", "--check", path.name, cwd=tmp_path).returncode == 0


def test_same_value_in_both_keys_removes_the_legacy_line(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        # both spellings, same value
        - id: a
          prompt: x
          stream: true
          async_stream: true  # old spelling
          stream_handler: console
        """
    )
    uses, conflicts = audit(text, "same.yaml")
    assert conflicts == []
    assert len(uses) == 1 and uses[0].remove
    assert (uses[0].line, uses[0].column) == (5, 3)
    assert str(uses[0]) == "same.yaml:5:3: async_stream remove (already has 'stream')"
    assert rewrite(text, uses) == textwrap.dedent(
        """\
        # both spellings, same value
        - id: a
          prompt: x
          stream: true
          stream_handler: console
        """
    )

    path = tmp_path / "same.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("migrate", "--write", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "async_stream" not in path.read_text(encoding="utf-8")
    assert cli("validate", "--mock", path.name, cwd=tmp_path).stderr == ""


def test_same_value_on_the_last_line_without_newline() -> None:
    text = "- id: a\n  prompt: x\n  stream: false\n  async_stream: false"
    assert migrated(text) == "- id: a\n  prompt: x\n  stream: false\n"


def test_same_handler_in_both_keys_removes_the_legacy_line() -> None:
    text = textwrap.dedent(
        """\
        - id: a
          prompt: x
          stream_handler: Pipeline.AsyncStreaming.ConsoleHandler
          async_handler: Pipeline.AsyncStreaming.ConsoleHandler
        """
    )
    assert migrated(text) == "- id: a\n  prompt: x\n  stream_handler: Pipeline.Streaming.ConsoleHandler\n"


def test_conflicting_values_exit_2_and_leave_the_file_untouched(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conflict.yaml",
        """
        - id: a
          prompt: x
          stream: true
          async_stream: false
          async_handler: Pipeline.AsyncStreaming.ConsoleHandler
        """,
    )
    original = path.read_bytes()
    uses, conflicts = audit(original.decode(), path.name)
    assert [str(issue) for issue in conflicts] == [
        "conflict.yaml:4:3: async_stream: conflicts with 'stream'; keep one of them by hand"
    ]
    assert [u.found for u in uses] == ["async_handler", "Pipeline.AsyncStreaming.ConsoleHandler"]

    for mode in ("--write", "--check"):
        result = cli("migrate", mode, path.name, cwd=tmp_path)
        assert result.returncode == 2, mode
        assert "conflict.yaml:4:3" in result.stderr and "conflicts with 'stream'" in result.stderr
        assert path.read_bytes() == original
    assert "rewrote" not in result.stdout

    report = migrate_file(path, write=True)
    assert report.conflicts and path.read_bytes() == original


def test_conflicting_handler_values_are_not_rewritten(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conflict.yaml",
        """
        - id: a
          prompt: x
          stream_handler: console
          async_handler: null
        """,
    )
    original = path.read_bytes()
    result = cli("migrate", "--write", path.name, cwd=tmp_path)
    assert result.returncode == 2
    assert "conflict.yaml:4:3" in result.stderr
    assert path.read_bytes() == original


def test_invalid_yaml_exits_2_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "broken.yaml",
        """
        - id: a
          prompt: "unterminated
          async_stream: true
        """,
    )
    original = path.read_bytes()
    for mode in ("--check", "--write"):
        result = cli("migrate", mode, path.name, cwd=tmp_path)
        assert result.returncode == 2
        assert "broken.yaml:" in result.stderr and "invalid YAML" in result.stderr
        first = result.stderr.splitlines()[0]
        assert first.split(":")[1].isdigit(), first  # file:line
    assert path.read_bytes() == original

    with pytest.raises(WorkflowError) as caught:
        migrate_file(path, write=True)
    assert caught.value.issues[0].location.file == str(path)
    assert caught.value.issues[0].location.line is not None


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = cli("migrate", "--check", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr and "cannot read" in result.stderr


def test_multiple_files_at_once(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    clean = tmp_path / "clean.yaml"
    shutil.copyfile(BEFORE, one)
    write(two, "- id: b\n  prompt: y\n  async_stream: false\n")
    shutil.copyfile(AFTER, clean)

    check = cli("migrate", "--check", "one.yaml", "clean.yaml", "two.yaml", cwd=tmp_path)
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["one.yaml"] * 3 + ["clean.yaml", "two.yaml"]
    assert lines[3] == "clean.yaml: no legacy usage"
    assert lines[4] == "two.yaml:3:3: async_stream -> stream"

    assert cli("migrate", "--check", "clean.yaml", "clean.yaml", cwd=tmp_path).returncode == 0

    write_all = cli("migrate", "--write", "one.yaml", "two.yaml", "clean.yaml", cwd=tmp_path)
    assert write_all.returncode == 0, write_all.stderr
    assert one.read_bytes() == AFTER.read_bytes()
    assert two.read_text(encoding="utf-8") == "- id: b\n  prompt: y\n  stream: false\n"
    assert clean.read_bytes() == AFTER.read_bytes()
    assert "one.yaml: rewrote 3 legacy usage(s)" in write_all.stdout
    assert "two.yaml: rewrote 1 legacy usage(s)" in write_all.stdout
    assert cli("migrate", "--check", "one.yaml", "two.yaml", "clean.yaml", cwd=tmp_path).returncode == 0


def test_a_conflict_in_one_file_blocks_only_that_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    shutil.copyfile(BEFORE, good)
    bad = write(tmp_path / "bad.yaml", "- id: a\n  prompt: x\n  stream: true\n  async_stream: false\n")
    original = bad.read_bytes()
    result = cli("migrate", "--write", "bad.yaml", "good.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert bad.read_bytes() == original
    assert good.read_bytes() == AFTER.read_bytes()


def test_nothing_legacy_in_a_workflow_without_it() -> None:
    for path in sorted((REPO / "workflows").glob("*.yaml")):
        uses, conflicts = audit(path.read_text(encoding="utf-8"), path.name)
        assert conflicts == []
        if path.name != "guide_before.yaml":
            assert uses == [], path.name


def test_legacy_use_is_a_frozen_record() -> None:
    use = LegacyUse("f.yaml", 1, 2, "async_stream", "stream", 0, 12)
    with pytest.raises(AttributeError):
        use.line = 3  # type: ignore[misc]
    assert str(use) == "f.yaml:1:2: async_stream -> stream"


# ---------------------------------------------------------------------------------------------------------
# library bugs
# ---------------------------------------------------------------------------------------------------------


def test_same_value_in_a_flow_mapping_keeps_the_step() -> None:
    text = "- {id: a, prompt: x, async_stream: true, stream: true}\n"
    assert yaml.safe_load(migrated(text)) == [{"id": "a", "prompt": "x", "stream": True}]


def test_same_value_as_the_first_key_of_a_list_item_keeps_the_list() -> None:
    text = "- async_stream: true\n  id: a\n  prompt: x\n  stream: true\n"
    assert yaml.safe_load(migrated(text)) == [{"id": "a", "prompt": "x", "stream": True}]


def test_input_named_async_stream_is_not_renamed() -> None:
    text = textwrap.dedent(
        """\
        workflow:
          name: n
          inputs:
            async_stream: {default: "yes"}
          steps:
            - id: a
              prompt: "{{ inputs.async_stream }}"
        """
    )
    parse_workflow(text, "inputs.yaml", mock=True)  # valid, and not legacy for the loader
    uses, _ = audit(text, "inputs.yaml")
    assert uses == []


@pytest.mark.parametrize(
    "value",
    ['"Pipeline.AsyncStreaming\\x2EConsoleHandler"', ">-\n    Pipeline.AsyncStreaming.ConsoleHandler"],
    ids=["escaped", "folded"],
)
def test_handler_name_spelled_unusually_is_rewritten_correctly(value: str) -> None:
    text = f"- id: a\n  prompt: x\n  stream_handler: {value}\n"
    out = migrated(text)
    assert yaml.safe_load(out)[0]["stream_handler"] == "Pipeline.Streaming.ConsoleHandler"


def test_legacy_keys_inside_groups_are_found_and_rewritten() -> None:
    text = textwrap.dedent(
        """\
        workflow:
          name: groups
          steps:
            - id: views
              parallel:
                - id: pros
                  prompt: p
                  async_stream: true
                  async_handler: Pipeline.AsyncStreaming.ConsoleHandler
            - id: sections
              for_each: [a, b]
              steps:
                - id: draft
                  prompt: d
                  async_stream: true
            - id: refine
              loop: {max_iterations: 2}
              steps:
                - {id: again, prompt: x, async_handler: Pipeline.AsyncStreaming.ConsoleHandler}
        """
    )
    uses, conflicts = audit(text, "groups.yaml")
    assert not conflicts
    assert [(u.line, u.found) for u in uses] == [
        (8, "async_stream"),
        (9, "async_handler"),
        (9, "Pipeline.AsyncStreaming.ConsoleHandler"),
        (15, "async_stream"),
        (19, "async_handler"),
        (19, "Pipeline.AsyncStreaming.ConsoleHandler"),
    ]
    after = migrated(text, "groups.yaml")
    assert "async_" not in after and "AsyncStreaming" not in after
    loaded = parse_workflow(after, "groups.yaml", mock=True)
    assert [step.id for step in loaded.all_steps()] == ["views", "pros", "sections", "draft", "refine", "again"]
