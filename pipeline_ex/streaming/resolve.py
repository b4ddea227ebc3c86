"""Turn a handler reference (a name, a dotted path, or a Python object) into a `HandlerSpec`.

Resolution happens once, when a workflow loads or a step starts, and decides everything that does not
change per event: what to call, whether it is async, and the validated options a class is built with.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from pipeline_ex.deprecation import warn_deprecated
from pipeline_ex.errors import HandlerResolutionError, Location
from pipeline_ex.events import Event
from pipeline_ex.option_errors import option_problems
from pipeline_ex.streaming.dispatch import BoundHandler
from pipeline_ex.streaming.legacy import LegacyTupleHandler
from pipeline_ex.streaming.names import (
    BUILTINS,
    ELIXIR_ALIASES,
    LEGACY_ALIASES,
    handler_entry_points,
    short_names,
)
from pipeline_ex.streaming.options import options_model

HandlerRef = Any
"""A handler reference: a short name, an alias, `pkg.mod.Name` / `pkg.mod:Name`, a class, a module, a
function, or an object with `handle_event`."""


def normalize_handlers(on_event: Any) -> list[HandlerRef]:
    """`on_event` as a list of handler references: None is none, a list or tuple is many, else it is one.

    A string is one reference (a name or a dotted path), never a sequence of them.
    """
    if on_event is None:
        return []
    return list(on_event) if isinstance(on_event, list | tuple) else [on_event]


@dataclass(frozen=True)
class HandlerSpec:
    """A resolved handler: `bind()` gives what one step run delivers events to.

    A class spec builds a new instance (from its validated options) on every `bind()`, so handler state
    never leaks between step runs. Module, function and instance specs reuse the same callable.
    """

    name: str
    is_async: bool
    make: Callable[[], Callable[[Event], Any]]

    def bind(self) -> BoundHandler:
        """Create the handler for one step run."""
        return BoundHandler(self.name, self.make(), self.is_async)


def ensure_cwd_importable() -> None:
    """Make the current directory importable, so a project's own handlers and callables resolve."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    return inspect.iscoroutinefunction(call)


def _fail(reference: str, problem: str, location: Location | None, **kw: Any) -> HandlerResolutionError:
    return HandlerResolutionError(reference, problem, short_names=short_names(), location=location, **kw)


def _import_hint(reference: str, error: ModuleNotFoundError) -> str:
    missing = (error.name or "").split(".")[0]
    top = reference.replace(":", ".").split(".")[0]
    if missing and missing != top:
        return f"the handler imports {missing!r}, which is not installed: pip install {missing}"
    if top == "handlers":
        return f"run from the project root that contains handlers/ (the current directory is {os.getcwd()})"
    return (
        f"check the spelling; if {top!r} is a package, install it (pip install {top}), "
        "or run from the directory that contains it"
    )


def _import_reference(reference: str, location: Location | None) -> object:
    """Import `pkg.mod:attr`, `pkg.mod.attr` or `pkg.mod` and return the object it names."""
    ensure_cwd_importable()
    if ":" in reference:
        module_name, _, attr_path = reference.partition(":")
    else:
        module_name, attr_path = reference, ""
        try:
            return importlib.import_module(reference)
        except ModuleNotFoundError as error:
            if error.name != reference or "." not in reference:
                raise _fail(
                    reference, "import failed", location, cause=error, hint=_import_hint(reference, error)
                ) from error
            module_name, _, attr_path = reference.rpartition(".")
        except Exception as error:
            raise _fail(reference, "importing it raised", location, cause=error) from error
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise _fail(reference, "import failed", location, cause=error, hint=_import_hint(reference, error)) from error
    except Exception as error:
        raise _fail(reference, "importing it raised", location, cause=error) from error
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            found = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, found, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"{module_name} defines: {', '.join(found[:12])}"
            raise _fail(
                reference, f"{module_name} has no attribute {part!r}", location, cause=error, hint=hint
            ) from error
    return target


def _importable(module: str) -> bool:
    ensure_cwd_importable()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _lookup_name(reference: str, location: Location | None) -> tuple[str, object] | None:
    """Resolve a short name or alias; return (display name, object), or None if it is not a name."""
    name = reference
    if name in LEGACY_ALIASES:
        replacement = LEGACY_ALIASES[name]
        where = f"{location.file}:{location.line}: " if location and location.file else ""
        warn_deprecated(f"{where}stream handler {name!r} is deprecated; use {replacement!r}")
        name = replacement
    name = ELIXIR_ALIASES.get(name, name)
    if name in BUILTINS:
        return name, _import_reference(BUILTINS[name], location)
    if "." not in name and ":" not in name:
        entry = handler_entry_points().get(name)
        if (
            entry is None
            and _importable(name)
            and callable(getattr(_import_reference(name, location), "handle_event", None))
        ):
            return None  # a top-level module of the user's, named by its plain name
        if entry is None:
            close = difflib.get_close_matches(name, [*short_names(), *ELIXIR_ALIASES], n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "give a short name or a dotted path"
            if _importable(name):
                hint += f" (module {name!r} exists but has no handle_event)"
            raise _fail(reference, "no handler has this short name", location, hint=hint)
        try:
            return name, entry.load()
        except Exception as error:
            raise _fail(reference, f"entry point {entry.value!r} failed to load", location, cause=error) from error
    return None


def _validate_options(
    cls: type, options: Mapping[str, Any], reference: str, location: Location | None
) -> dict[str, Any]:
    model = options_model(cls)
    try:
        parsed = model.model_validate(dict(options))
    except ValidationError as error:
        known = list(model.model_fields)
        problems = option_problems(error, known)
        hint = f"{cls.__name__} takes: {', '.join(known) if known else 'no options'}"
        raise HandlerResolutionError(
            reference,
            "invalid stream_handler_options: " + "; ".join(problem for _, problem in problems),
            hint=hint,
            location=location,
            about_options=True,
            option_problems=problems,
        ) from None
    values = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    values.update(parsed.model_extra or {})
    return values


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if isinstance(obj, ModuleType):
        return obj.__name__
    if qualname:
        return f"{module}.{qualname}" if module else str(qualname)
    return type(obj).__qualname__ + " instance"


def _spec_for_object(
    obj: object, name: str, options: Mapping[str, Any], reference: str, location: Location | None
) -> HandlerSpec:
    no_options = "stream_handler_options are only accepted by class handlers"

    def options_refused() -> HandlerResolutionError:
        return HandlerResolutionError(reference, no_options, location=location, about_options=True)

    if isinstance(obj, ModuleType):
        fn = getattr(obj, "handle_event", None)
        if not callable(fn):
            raise _fail(
                reference,
                f"module {obj.__name__} has no handle_event(event) function",
                location,
                hint="define a module-level handle_event(event), or name a class or function inside it",
            )
        if options:
            raise options_refused()
        return HandlerSpec(name, _is_async(fn), lambda: fn)
    if inspect.isclass(obj):
        method = getattr(obj, "handle_event", None)
        if not callable(method):
            raise _fail(reference, f"class {obj.__qualname__} has no handle_event(event) method", location)
        kwargs = _validate_options(obj, options, reference, location)
        cls: Any = obj
        return HandlerSpec(name, _is_async(method), lambda: cls(**kwargs).handle_event)
    if options:
        raise options_refused()
    if isinstance(obj, LegacyTupleHandler):
        return HandlerSpec(name, obj.is_async, lambda: obj.handle_event)
    method = getattr(obj, "handle_event", None)
    if callable(method):
        return HandlerSpec(name, _is_async(method), lambda: method)
    if callable(obj):
        return HandlerSpec(name, _is_async(obj), lambda: obj)
    raise _fail(
        reference,
        f"{type(obj).__name__} object is not a handler",
        location,
        hint="a handler is a module with handle_event, a class with handle_event, or a function of one event",
    )


def resolve_handler(
    reference: HandlerRef,
    options: Mapping[str, Any] | None = None,
    *,
    location: Location | None = None,
) -> HandlerSpec:
    """Resolve a handler reference into a `HandlerSpec`.

    Accepted references: a built-in short name (`console`, `file`, `jsonl`, `buffer`, `null`,
    `recorder`, `webhook`), a name registered under the `pipeline_ex.handlers` entry-point group, an Elixir
    alias (`Pipeline.Streaming.ConsoleHandler`), a dotted path (`pkg.mod.Name` or `pkg.mod:Name`) to a
    module, class or function, or the Python object itself. `options` are validated against a class's
    constructor. A mapping `{"handler": reference, "options": {...}}` (a YAML list item's form) carries its
    own options.

    :raises HandlerResolutionError: naming the reference, the cause, the short names and a hint.
    """
    if isinstance(reference, Mapping):
        return _resolve_with_options(reference, options, location)
    options = options or {}
    if not isinstance(reference, str):
        return _spec_for_object(reference, _describe(reference), options, _describe(reference), location)
    text = reference.strip()
    if not text:
        raise _fail(reference, "the handler reference is empty", location)
    named = _lookup_name(text, location)
    if named is not None:
        display, obj = named
    else:
        display, obj = text, _import_reference(text, location)
    return _spec_for_object(obj, display, options, text, location)


def find_handler(reference: str) -> tuple[str, object]:
    """The name and object a handler reference names, found as `resolve_handler` finds it, options unchecked.

    :raises HandlerResolutionError: no handler has this name, or its module cannot be imported.
    """
    text = reference.strip()
    if not text:
        raise _fail(reference, "the handler reference is empty", None)
    named = _lookup_name(text, None)
    return named if named is not None else (text, _import_reference(text, None))


def _resolve_with_options(
    entry: Mapping[str, Any], options: Mapping[str, Any] | None, location: Location | None
) -> HandlerSpec:
    """Resolve `{"handler": reference, "options": {...}}`."""
    shown = repr(dict(entry))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    unknown = sorted(str(key) for key in entry if key not in ("handler", "options"))
    if "handler" not in entry or unknown:
        problem = f"unknown key {unknown[0]!r}" if unknown else "the mapping has no 'handler'"
        raise _fail(shown, problem, location, hint="write {'handler': NAME, 'options': {...}}")
    item_options = entry.get("options") or {}
    if not isinstance(item_options, Mapping):
        raise HandlerResolutionError(
            shown, f"'options' must be a mapping, got {type(item_options).__name__}", location=location
        )
    if options:
        raise HandlerResolutionError(
            shown,
            "options are given twice: in the mapping's 'options' and separately",
            hint="keep them in the mapping's 'options'",
            location=location,
            about_options=True,
        )
    return resolve_handler(entry["handler"], item_options, location=location)


def legacy_handler(callback: Callable[[tuple[str, Any]], Any]) -> HandlerSpec:
    """Resolve a legacy `("chunk", text)` / `("complete", result)` callable, with a deprecation warning."""
    adapter = LegacyTupleHandler(callback)
    return HandlerSpec(_describe(callback), adapter.is_async, lambda: adapter.handle_event)
