"""The options of a handler class: a pydantic model built from its constructor, with each option described.

The same model validates `stream_handler_options:` (and a list item's `options:`) when a workflow loads,
and is what `pipeline-ex handlers --describe NAME` prints, so the two cannot drift apart.

An option's description comes from a `Field(description=...)` in an `Annotated` parameter type, or else
from the class docstring's `Options:` (or `Args:`) section, one `name: description` entry per option:

    Options:
        path: the file to write; parent directories are created.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

_SECTION = re.compile(r"^(\s*)(Options|Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^(\s*)([A-Za-z_]\w*)(?:\s*\([^)]*\))?:\s*(.*)$")


def documented_options(cls: type) -> dict[str, str]:
    """The `name: description` entries of the `Options:` / `Args:` sections of a class's docstrings.

    The class's own docstring and its `__init__`'s come first, then its bases' (an option a subclass
    inherits keeps its base's description unless the subclass describes it anew).
    """
    found: dict[str, str] = {}
    for klass in cls.__mro__:  # a subclass's entry wins over its base's
        for doc in (klass.__dict__.get("__doc__"), getattr(klass.__dict__.get("__init__"), "__doc__", None)):
            found.update({k: v for k, v in _parse_sections(inspect.cleandoc(doc or "")).items() if k not in found})
    return found


def _parse_sections(doc: str) -> dict[str, str]:
    found: dict[str, str] = {}
    section_indent: int | None = None
    entry_indent: int | None = None
    current: str | None = None
    for line in doc.splitlines():
        header = _SECTION.match(line)
        if header is not None:
            section_indent, entry_indent, current = len(header.group(1)), None, None
            continue
        if section_indent is None:
            continue
        if not line.strip():
            current = None
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section_indent:  # the section ended
            section_indent = current = None
            continue
        entry = _ENTRY.match(line)
        if entry is not None and (entry_indent is None or indent == entry_indent):
            entry_indent = indent
            current = entry.group(2)
            found[current] = entry.group(3).strip()
        elif current is not None:
            found[current] = f"{found[current]} {line.strip()}".strip()
    return found


@functools.lru_cache(maxsize=256)
def options_model(cls: type) -> type[BaseModel]:
    """A pydantic model of a handler class's constructor parameters, rejecting unknown keys.

    A `**kwargs` parameter lets unknown options through to the constructor.
    """
    signature = inspect.signature(cls)
    try:
        hints = typing.get_type_hints(cls.__init__, include_extras=True)  # type: ignore[misc]
    except Exception:
        hints = {}
    described = documented_options(cls)
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        if isinstance(default, FieldInfo) or param.name not in described:
            fields[param.name] = (annotation, default)
        else:
            fields[param.name] = (annotation, Field(default, description=described[param.name]))
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True)  # type: ignore[typeddict-item]
    model: type[BaseModel] = create_model(f"{cls.__name__}Options", __config__=config, **fields)
    return model
