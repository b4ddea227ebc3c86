"""Read YAML while remembering where every key and value came from (file, line, column).

PyYAML's composer already knows the position of every node; this module builds plain Python data from
the node tree and keeps a map from each key path to its position, so that any later error (schema,
handler, template, provider) can point at the exact line.
"""

from __future__ import annotations

import codecs
import datetime
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import yaml

from pipeline_ex.errors import Issue, Location, WorkflowError

Path = tuple[str | int, ...]

MAX_ALIAS_VALUES = 100_000
"""How many values YAML aliases may repeat in one file, all aliases together (a generous bound: a
workflow that shares a few settings repeats tens of values; an alias bomb repeats billions)."""


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
    renamed: dict[Path, Path] = field(default_factory=dict)
    """Keys renamed after parsing (a legacy key to its current name): the new key path -> the written one."""
    given: dict[Path, str] = field(default_factory=dict)
    """Values given outside the file (`--set temperature=0.2`): their key path -> how they were given."""

    def rename(self, old: Path, new: Path) -> None:
        """Let positions of `new` and everything under it be those of `old`, where the file writes it."""
        self.renamed[tuple(new)] = tuple(old)

    def _as_written(self, path: Path) -> Path:
        for end in range(len(path), 0, -1) if self.renamed else ():
            old = self.renamed.get(path[:end])
            if old is not None:
                return (*old, *path[end:])
        return path

    def location(self, path: Path, *, at_key: bool = False) -> Location:
        """Where `path` is, falling back to its nearest ancestor that has a position.

        A value given outside the file (and anything under it) is where it was given: `--set stream_handler=x`.
        """
        if self.given:
            for end in range(len(path), 0, -1):
                origin = self.given.get(tuple(path[:end]))
                if origin is not None:
                    return Location(origin, None, None, format_path(path) or None)
        probe = self._as_written(tuple(path))
        while True:
            table = self.keys if at_key and probe in self.keys else self.values
            if probe in table:
                line, column = table[probe]
                return Location(self.file, line, column, format_path(path) or None)
            if not probe:
                return Location(self.file, 1, 1, format_path(path) or None)
            probe = probe[:-1]


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with a bound on how much its aliases expand.

    The composer shares one node for every alias of an anchor, so composing stays as small as the file;
    it is building plain data from the nodes that would repeat each aliased value once per alias. PyYAML
    has no setting for this, so the composer's `compose_node` is extended: at each alias it adds the size
    of the aliased value (counted once per node, memoised) and stops past `MAX_ALIAS_VALUES`, naming the
    alias's line. It also refuses an alias inside the value it names, which would nest forever.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.alias_values = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: set[str] = set()

    def _size(self, node: yaml.Node) -> int:
        """How many values `node` stands for once its aliases are expanded (keys included)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._size(key) + self._size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._size(item) for item in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return size

    def _refuse(self, mark: Any, message: str) -> WorkflowError:
        return WorkflowError([Issue(Location(self.file, mark.line + 1, mark.column + 1), message)])

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, counting what an alias repeats and keeping track of anchors being composed."""
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise self._refuse(
                    event.start_mark,
                    f"alias *{event.anchor} is inside the value it names, so it would repeat forever; "
                    "alias a value that is complete before the alias",
                )
            node = super().compose_node(parent, index)
            size = self._size(node) if node is not None else 0
            self.alias_values += size
            if self.alias_values > MAX_ALIAS_VALUES:
                raise self._refuse(
                    event.start_mark,
                    f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values here (*{event.anchor} repeats "
                    f"{size:,}); write the repeated values out instead of aliasing aliases",
                )
            return node
        anchor = event.anchor
        if anchor is None or anchor in self._open_anchors:  # a duplicate anchor: PyYAML reports it
            return super().compose_node(parent, index)
        self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)


_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (half of a UTF-16 pair, which is not text), or None."""
    found = _LONE_SURROGATE.search(text)
    return found.start() if found else None


def escaped(character: str) -> str:
    r"""A character as a four-digit `\u` escape (`\u00e9`), for messages about characters that cannot be printed."""
    return f"\\u{ord(character):04x}"


def _not_json(value: Any, node: yaml.Node) -> str | None:
    """Why a scalar PyYAML built is not a JSON value, if it is not one (a date, `.nan`, `.inf`, `!!binary`).

    Workflows are read with YAML 1.1's types, but everything in them must survive JSON (the server lists
    input defaults, providers get options as JSON): these are refused where they are written.
    """
    if isinstance(value, datetime.date):
        return f"{node.value} is read as a date; quote it to keep it as text"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{node.value} is not a finite number; quote it to keep it as text"
    if isinstance(value, bytes):
        return "binary data (!!binary) is not a workflow value; write the text itself"
    return None


class _Builder:
    def __init__(self, text: str, file: str) -> None:
        self.loader = _BoundedLoader(text, file)
        self.source = YamlSource(None, file, text)

    def _mark(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _refuse(self, node: yaml.Node, path: Path, message: str) -> WorkflowError:
        line, column = self._mark(node)
        return WorkflowError([Issue(Location(self.source.file, line, column, format_path(path) or None), message)])

    def _text(self, value: str, node: yaml.Node, path: Path) -> str:
        r"""Text as the file means it, with no lone surrogate.

        Escaped surrogate pairs (`"\ud83d\ude00"`, as JSON writes them) are read as the character they
        encode; a lone surrogate is an error.
        """
        if _SURROGATE.search(value) is None:
            return value
        at = lone_surrogate(value)
        if at is None:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        raise self._refuse(
            node,
            path,
            f"has a lone surrogate ({escaped(value[at])}), half of a UTF-16 pair, which is not text; "
            "write the character itself, or escape its code point with \\U (such as \\U0001F600)",
        )

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.source.values[path] = self._mark(node)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._refuse(key_node, path, "keys must be plain text")
                key = self._text(str(key_node.value), key_node, path)
                if key == "<<":
                    raise self._refuse(key_node, path, "merge keys (<<) are not supported")
                if key in result:
                    raise self._refuse(key_node, (*path, key), f"duplicate key {key!r}")
                self.source.keys[(*path, key)] = self._mark(key_node)
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            shown = node.value if len(str(node.value)) <= 40 else str(node.value)[:37] + "..."
            tag = node.tag.rsplit(":", 1)[-1]
            raise self._refuse(node, path, f"invalid {tag} value {shown!r}; quote it to keep it as text") from None
        if isinstance(value, str):
            return self._text(value, node, path)
        problem = _not_json(value, node)
        if problem is not None:
            raise self._refuse(
                node,
                path,
                f"{problem}; workflow values are JSON values (text, numbers, true/false, null, lists and mappings)",
            )
        return value


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


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
"""What YAML counts as a line break (PyYAML's marks count lines the same way)."""


def read_workflow_text(path: str | os.PathLike[str]) -> str:
    """The text of a workflow file, which must be UTF-8 (a UTF-8 byte order mark is allowed).

    :raises WorkflowError: when the file cannot be read, or is not UTF-8: then at the line and column
        of the first byte that is not.
    """
    name = os.fspath(path)
    try:
        data = FilePath(name).read_bytes()
    except OSError as error:
        raise WorkflowError([Issue(Location(name), f"cannot read the workflow: {error}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8")  # valid up to the first bad byte
        lines = _LINE_BREAK.split(before)
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            problem = "the file is UTF-16, not UTF-8"
        else:
            problem = f"the file is not UTF-8 text (byte 0x{data[error.start]:02x} here: {error.reason})"
        where = Location(name, len(lines), len(lines[-1]) + 1)
        raise WorkflowError([Issue(where, f"{problem}; save the file as UTF-8")]) from None


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
