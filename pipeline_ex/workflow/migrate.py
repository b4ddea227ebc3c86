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

from pipeline_ex.errors import Issue, Location
from pipeline_ex.streaming.names import LEGACY_ALIASES
from pipeline_ex.workflow.schema import STEP_LIST_FIELDS
from pipeline_ex.workflow.yaml_source import load_yaml, read_workflow_text

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
    remove: bool = False
    """The current key is already there with the same value, so the legacy key and value are deleted."""
    flow: bool = False
    """The key sits in a flow mapping (`{a: 1, b: 2}`)."""
    insert: str | None = None
    """The text to put in place of the span, when it is not just `replacement` (a re-quoted value)."""

    def __str__(self) -> str:
        action = f"remove (already has {self.replacement!r})" if self.remove else f"-> {self.replacement}"
        return f"{self.file}:{self.line}:{self.column}: {self.found} {action}"


def _value(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            node: yaml.Node = value_node
            return node
    return None


def _steps_of(steps: yaml.Node | None, found: list[yaml.MappingNode]) -> None:
    """Every step mapping of a list of steps, the children of groups (`parallel:`, `steps:`) too."""
    if not isinstance(steps, yaml.SequenceNode):
        return
    for item in steps.value:
        if isinstance(item, yaml.MappingNode):
            found.append(item)
            for key in STEP_LIST_FIELDS:
                _steps_of(_value(item, key), found)


def _settings_mappings(root: yaml.Node) -> list[yaml.MappingNode]:
    """The mappings that hold streaming settings: the workflow's `defaults` and each step, at any depth."""
    body: yaml.Node | None = root
    if isinstance(root, yaml.MappingNode):
        body = _value(root, "workflow") or root
    steps: yaml.Node | None = body
    found: list[yaml.MappingNode] = []
    if isinstance(body, yaml.MappingNode):
        defaults = _value(body, "defaults")
        if isinstance(defaults, yaml.MappingNode):
            found.append(defaults)
        steps = _value(body, "steps")
    _steps_of(steps, found)
    return found


def _handler_name_use(item: yaml.ScalarNode, text: str, file: str) -> LegacyUse:
    start, end = item.start_mark.index, item.end_mark.index
    raw = text[start:end]
    replacement = LEGACY_ALIASES[item.value]
    quote = item.style if item.style in ("'", '"') else ""
    line, column = item.start_mark.line + 1, item.start_mark.column + 1
    if raw == f"{quote}{item.value}{quote}":  # written plainly: replace just the name inside any quotes
        return LegacyUse(file, line, column, item.value, replacement, start + len(quote), end - len(quote))
    # Escapes, folding or a block scalar: write the whole value anew, in the same quotes if it had any.
    insert = f"{quote}{replacement}{quote}" + ("\n" if raw.endswith("\n") else "")
    return LegacyUse(file, line, column, item.value, replacement, start, end, insert=insert)


def _scan(mapping: yaml.MappingNode, text: str, file: str, found: list[LegacyUse], conflicts: list[Issue]) -> None:
    present = {k.value: v for k, v in mapping.value if isinstance(k, yaml.ScalarNode)}
    for key_node, value_node in mapping.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        mark = key_node.start_mark
        if key in LEGACY_KEYS:
            current = LEGACY_KEYS[key]
            existing = present.get(current)
            same = isinstance(existing, yaml.ScalarNode) and isinstance(value_node, yaml.ScalarNode)
            if existing is not None and not (same and existing.value == value_node.value):
                where = Location(file, mark.line + 1, mark.column + 1, key)
                conflicts.append(Issue(where, f"conflicts with {current!r}; keep one of them by hand"))
            elif existing is not None:  # same value under both keys: the legacy one goes
                found.append(
                    LegacyUse(
                        file,
                        mark.line + 1,
                        mark.column + 1,
                        key,
                        current,
                        mark.index,
                        value_node.end_mark.index,
                        remove=True,
                        flow=bool(mapping.flow_style),
                    )
                )
            else:
                found.append(
                    LegacyUse(file, mark.line + 1, mark.column + 1, key, current, mark.index, key_node.end_mark.index)
                )
        if key in HANDLER_KEYS:
            values = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for entry in values:
                item = (
                    _value(entry, "handler") if isinstance(entry, yaml.MappingNode) else entry
                )  # {handler:, options:}
                if isinstance(item, yaml.ScalarNode) and item.value in LEGACY_ALIASES:
                    found.append(_handler_name_use(item, text, file))


def audit(text: str, file: str) -> tuple[list[LegacyUse], list[Issue]]:
    """Every legacy usage in a workflow's text, and the spots that cannot be rewritten automatically."""
    load_yaml(text, file)  # raises WorkflowError with a location for invalid YAML
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    found: list[LegacyUse] = []
    conflicts: list[Issue] = []
    if node is not None:
        for mapping in _settings_mappings(node):
            _scan(mapping, text, file, found, conflicts)
    found.sort(key=lambda use: use.start)
    return found, conflicts


def _remove(text: str, use: LegacyUse) -> str:
    """Delete a legacy key and its value, and the separator or line they leave behind."""
    start, end = use.start, use.end
    if use.flow:
        after = text[end:]
        stripped = after.lstrip(" ")
        if stripped.startswith(","):
            end += len(after) - len(stripped) + 1
            end += len(text[end:]) - len(text[end:].lstrip(" "))
        else:
            before = text[:start].rstrip(" ")
            if before.endswith(","):
                start = len(before) - 1
        return text[:start] + text[end:]
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    line_end = len(text) if line_end == -1 else line_end
    rest = text[end:line_end].strip()
    prefix = text[line_start:start]
    if prefix.strip() == "" and (rest == "" or rest.startswith("#")):
        return text[:line_start] + text[min(line_end + 1, len(text)) :]  # the whole line
    if prefix.strip() == "-":  # the first key of a list item: keep the dash, the other keys follow below it
        return text[:start].rstrip(" ") + text[line_end:]
    return text[:start] + text[end:]


def rewrite(text: str, uses: list[LegacyUse]) -> str:
    """Apply the replacements to the text, from the end so earlier spans stay valid."""
    for use in sorted(uses, key=lambda u: u.start, reverse=True):
        if use.remove:
            text = _remove(text, use)
        else:
            text = text[: use.start] + (use.insert if use.insert is not None else use.replacement) + text[use.end :]
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
    text = read_workflow_text(name)
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
