"""Find and rewrite legacy streaming configuration in workflow files.

Legacy means `async_stream`, `async_handler` and the `Pipeline.AsyncStreaming.*` handler names.

Rewrites are made on the file's text at the exact spans PyYAML reports for each key and value, so
comments, key order, indentation and quoting stay exactly as they were.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline_ex.errors import Issue, Location, WorkflowError
from pipeline_ex.streaming.names import LEGACY_ALIASES
from pipeline_ex.workflow.yaml_source import load_yaml

LEGACY_KEYS = {"async_stream": "stream", "async_handler": "stream_handler"}
HANDLER_KEYS = {"stream_handler", "async_handler"}


@dataclass(frozen=True)
class LegacyUse:
    """One legacy usage: where it is, what it is, and its replacement."""

    file: str
    line: int
    column: int
    found: str
    replacement: str
    start: int
    end: int
    remove_line: bool = False
    """The current key is already there with the same value, so the legacy line is deleted."""

    def __str__(self) -> str:
        action = f"remove (already has {self.replacement!r})" if self.remove_line else f"-> {self.replacement}"
        return f"{self.file}:{self.line}:{self.column}: {self.found} {action}"


def _scan(node: yaml.Node, file: str, found: list[LegacyUse], conflicts: list[Issue]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _scan(item, file, found, conflicts)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    present = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        mark = key_node.start_mark
        if key in LEGACY_KEYS:
            current = LEGACY_KEYS[key]
            existing = present.get(current)
            same = isinstance(existing, yaml.ScalarNode) and isinstance(value_node, yaml.ScalarNode)
            if existing is not None and not (same and existing.value == value_node.value):
                conflicts.append(
                    Issue(
                        Location(file, mark.line + 1, mark.column + 1, key), f"conflicts with {current!r}; fix by hand"
                    )
                )
            else:
                found.append(
                    LegacyUse(
                        file,
                        mark.line + 1,
                        mark.column + 1,
                        key,
                        current,
                        key_node.start_mark.index,
                        key_node.end_mark.index,
                        remove_line=existing is not None,
                    )
                )
        if key in HANDLER_KEYS:
            values = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for item in values:
                if isinstance(item, yaml.ScalarNode) and item.value in LEGACY_ALIASES:
                    start = item.start_mark.index + (1 if item.style in ("'", '"') else 0)
                    found.append(
                        LegacyUse(
                            file,
                            item.start_mark.line + 1,
                            item.start_mark.column + 1,
                            item.value,
                            LEGACY_ALIASES[item.value],
                            start,
                            start + len(item.value),
                        )
                    )
        _scan(value_node, file, found, conflicts)


def audit(text: str, file: str) -> tuple[list[LegacyUse], list[Issue]]:
    """Every legacy usage in a workflow's text, and the spots that cannot be rewritten automatically."""
    load_yaml(text, file)  # raises WorkflowError with a location for invalid YAML
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    found: list[LegacyUse] = []
    conflicts: list[Issue] = []
    if node is not None:
        _scan(node, file, found, conflicts)
    found.sort(key=lambda use: use.start)
    return found, conflicts


def rewrite(text: str, uses: list[LegacyUse]) -> str:
    """Apply the replacements to the text, from the end so earlier spans stay valid."""
    for use in sorted(uses, key=lambda u: u.start, reverse=True):
        if use.remove_line:
            line_start = text.rfind("\n", 0, use.start) + 1
            line_end = text.find("\n", use.end)
            text = text[:line_start] + (text[line_end + 1 :] if line_end != -1 else "")
        else:
            text = text[: use.start] + use.replacement + text[use.end :]
    return text


@dataclass
class MigrationReport:
    """What `migrate` found (and, with `write`, changed) in one file."""

    file: str
    uses: list[LegacyUse]
    conflicts: list[Issue]
    diff: str = ""


def migrate_file(path: str | Path, *, write: bool) -> MigrationReport:
    """Audit one file; with `write`, rewrite it in place unless a conflict needs a human.

    :raises WorkflowError: when the file is not valid YAML or cannot be read.
    """
    name = str(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise WorkflowError([Issue(Location(name), f"cannot read the workflow: {error}")]) from None
    uses, conflicts = audit(text, name)
    report = MigrationReport(name, uses, conflicts)
    if uses:
        new_text = rewrite(text, uses)
        report.diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True), new_text.splitlines(keepends=True), name, f"{name} (migrated)"
            )
        )
        if write and not conflicts:
            Path(name).write_text(new_text, encoding="utf-8")
    return report
