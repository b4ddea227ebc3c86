"""Read YAML while remembering where every key and value came from (file, line, column).

PyYAML's composer already knows the position of every node; this module builds plain Python data from
the node tree and keeps a map from each key path to its position, so that any later error (schema,
handler, template, provider) can point at the exact line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline_ex.errors import Issue, Location, WorkflowError

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """Render a key path the way error messages show it: `workflow.steps[0].prompt`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class YamlSource:
    """Parsed YAML data plus the position of every value (and of every mapping key) by key path."""

    data: Any
    file: str
    text: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def location(self, path: Path, *, at_key: bool = False) -> Location:
        """Where `path` is, falling back to its nearest ancestor that has a position."""
        probe = tuple(path)
        while True:
            table = self.keys if at_key and probe in self.keys else self.values
            if probe in table:
                line, column = table[probe]
                return Location(self.file, line, column, format_path(path) or None)
            if not probe:
                return Location(self.file, 1, 1, format_path(path) or None)
            probe = probe[:-1]


class _Builder:
    def __init__(self, text: str, file: str) -> None:
        self.loader = yaml.SafeLoader(text)
        self.source = YamlSource(None, file, text)

    def _mark(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.source.values[path] = self._mark(node)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line, column = self._mark(key_node)
                    raise WorkflowError(
                        [
                            Issue(
                                Location(self.source.file, line, column, format_path(path) or None),
                                "keys must be plain text",
                            )
                        ]
                    )
                key = str(key_node.value)
                if key == "<<":
                    line, column = self._mark(key_node)
                    raise WorkflowError(
                        [
                            Issue(
                                Location(self.source.file, line, column, format_path(path) or None),
                                "merge keys (<<) are not supported",
                            )
                        ]
                    )
                if key in result:
                    line, column = self._mark(key_node)
                    raise WorkflowError(
                        [
                            Issue(
                                Location(self.source.file, line, column, format_path((*path, key))),
                                f"duplicate key {key!r}",
                            )
                        ]
                    )
                self.source.keys[(*path, key)] = self._mark(key_node)
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            line, column = self._mark(node)
            shown = node.value if len(str(node.value)) <= 40 else str(node.value)[:37] + "..."
            raise WorkflowError(
                [
                    Issue(
                        Location(self.source.file, line, column, format_path(path) or None),
                        f"invalid {node.tag.rsplit(':', 1)[-1]} value {shown!r}; quote it to keep it as text",
                    )
                ]
            ) from None


def _yaml_issue(error: yaml.YAMLError, file: str, text: str) -> Issue:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    elif isinstance(error, yaml.reader.ReaderError):
        # the reader reports a character offset, not a line
        before = text[: error.position]
        line, column = before.count("\n") + 1, len(before.rsplit("\n", 1)[-1]) + 1
        return Issue(Location(file, line, column), f"invalid YAML: {error.reason} (character {error.character!r})")
    else:
        line, column = 1, 1
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "") if problem else f"invalid YAML: {error}"
    if "indent" in message or "mapping values are not allowed" in message or "expected <block end>" in message:
        message += "; check the indentation of this line and the one above"
    return Issue(Location(file, line, column), message)


def load_yaml(text: str, file: str) -> YamlSource:
    """Parse one YAML document, keeping positions.

    :raises WorkflowError: for invalid YAML, several documents, an empty file, or non-text keys.
    """
    try:
        builder = _Builder(text, file)
    except yaml.YAMLError as error:
        raise WorkflowError([_yaml_issue(error, file, text)]) from None
    try:
        node = builder.loader.get_single_node()
        if node is None:
            raise WorkflowError([Issue(Location(file, 1, 1), "the file is empty; expected a workflow")])
        builder.source.data = builder.build(node, ())
    except yaml.YAMLError as error:
        raise WorkflowError([_yaml_issue(error, file, text)]) from None
    except RecursionError:
        raise WorkflowError([Issue(Location(file, 1, 1), "the YAML is nested too deeply")]) from None
    finally:
        builder.loader.dispose()
    return builder.source
