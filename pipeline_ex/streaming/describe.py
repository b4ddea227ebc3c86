"""`pipeline-ex handlers --describe NAME`: what a handler is, and the options it takes.

The options are read from the same model that validates them when a workflow loads
(`pipeline_ex.streaming.options.options_model`), so what is printed is what is accepted.
"""

from __future__ import annotations

import inspect
import json
import os
import types
import typing
from types import ModuleType
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline_ex.streaming.options import options_model
from pipeline_ex.streaming.resolve import find_handler


def describe_handler(reference: str) -> str:
    """A handler's description: what it resolves to, its docstring's summary, and its options.

    `reference` is anything `stream_handler:` takes: a short name, an Elixir alias or a dotted path.

    :raises HandlerResolutionError: no handler has this name (the message lists the names there are).
    """
    name, target = find_handler(reference)
    shown = name if name == reference.strip() else f"{reference.strip()} (the built-in {name!r})"
    lines = [f"{shown}: {_what(target)}"]
    summary = _summary(target)
    if summary:
        lines += ["", summary]
    lines += [""]
    if not inspect.isclass(target):
        lines.append("Options: none (only class handlers take options)")
        return "\n".join(lines)
    cls: type = target
    model = options_model(cls)
    if not model.model_fields:
        lines.append("Options: none")
    else:
        lines.append("Options (stream_handler_options:, or options: in a stream_handler list item):")
        for option, info in model.model_fields.items():
            lines.append(f"  {option}: {_type_name(info.annotation, info.metadata)}  {_default(info)}")
            if info.description:
                lines.append(f"      {info.description}")
    if model.model_config.get("extra") == "allow":
        lines.append("  (other options are passed on to the class as they are)")
    return "\n".join(lines)


def _what(target: object) -> str:
    if isinstance(target, ModuleType):
        return f"module {target.__name__} (its handle_event, shared by every step run)"
    qualified = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
    if inspect.isclass(target):
        return f"class {qualified} (a new instance for every step run)"
    return f"function {qualified}" if callable(target) else f"object {qualified}"


def _summary(target: object) -> str:
    """The first paragraph of the docstring, on one line."""
    doc = inspect.getdoc(target) or ""
    if inspect.isclass(target) and doc == inspect.getdoc(object):
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    try:
        shown = json.dumps(value)
    except TypeError:
        shown = repr(value)
    return f"(default: {shown})"


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {item.lt}")
    return f" ({', '.join(parts)})" if parts else ""


def _type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A type as a workflow writes its values: `"stdout" | "stderr"`, `int (>= 1)`, `{env: VARIABLE}`."""
    bounds = _bounds(metadata or [])
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _type_name(inner, [*extra, *(metadata or [])])
    if annotation is None or annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(json.dumps(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation)) + bounds
    if origin in (dict, typing.Mapping) or annotation is dict:
        args = typing.get_args(annotation)
        return f"mapping of {_grouped(args[1])}" if args else "mapping"
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(annotation)
        return f"list of {_grouped(args[0])}" if args else "list"
    if annotation is Any:
        return "any"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        fields = ", ".join(f"{name}: {_type_name(f.annotation)}" for name, f in annotation.model_fields.items())
        return f"{{{fields}}}"
    if annotation is os.PathLike or origin is os.PathLike:
        return "path"
    return getattr(annotation, "__name__", str(annotation)) + bounds


def _grouped(annotation: Any) -> str:
    text = _type_name(annotation)
    return f"({text})" if " | " in text else text
