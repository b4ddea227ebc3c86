"""Declared input types, the same for every source of a value.

Text (a `--input` value, a form field, any `str`) is read as the declared type, with pydantic's lax
parsing: `"42"` is an integer, `"yes"` a boolean. A value that is not text must already have the type:
`True` is not an integer, `inf` and `nan` are not numbers, and a whole number sent as a float (`1.0`,
as some JSON clients send every number) is the integer `1`, as in JSON Schema. `list` and `object`
inputs hold JSON values: text is read as JSON (`--input topics='["a", "b"]'`), and other values must be a
list (or a mapping with text keys) of JSON values.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AllowInfNan, TypeAdapter, ValidationError

from pipeline_ex.workflow.yaml_source import escaped, lone_surrogate

_READERS: dict[str, TypeAdapter[Any]] = {
    "string": TypeAdapter(str),
    "integer": TypeAdapter(int),
    "number": TypeAdapter(Annotated[float, AllowInfNan(False)]),
    "boolean": TypeAdapter(bool),
}
_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (str, int, float),
    "number": (str, int, float),
    "boolean": (str, bool),
    "list": (str, list, tuple),
    "object": (str, dict),
}
"""The Python types a value of each declared type may arrive as (`bool` only for booleans)."""

_EXPECTED = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "list": "a list",
    "object": "an object (a mapping)",
}
_NOT_READ = {
    "string": "",
    "integer": ", which is not a whole number",
    "number": ", which is not a number",
    "boolean": ", which is not one of true/false, yes/no, on/off, 1/0",
}
"""How text that cannot be read as the type is described."""


class InputValueError(ValueError):
    """A value does not have an input's declared type. The message reads "must be an integer, got ..."."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _described(value: Any) -> str:
    """A value that does not fit, as a message shows it: the value and what kind of value it is."""
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"{str(value).lower()}, a boolean"
    if isinstance(value, int | float):
        return f"{_shown(value)}, a number"
    if isinstance(value, list | tuple):
        return f"{_shown(value)}, a list"
    if isinstance(value, dict):
        return f"{_shown(value)}, a mapping"
    return f"{_shown(value)}, a {type(value).__name__}"


def _json_problem(value: Any, where: str) -> str | None:
    """What makes `value` not a JSON value (naming where in it), or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot carry"
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, which is not text"
            problem = _json_problem(item, f"{where}.{key}")
            if problem is not None:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, which is not a JSON value"


def _json_value(kind: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InputValueError(f"must be {_EXPECTED[kind]} written as JSON, got {_shown(value)} ({error})") from None
        wanted = list if kind == "list" else dict
        if not isinstance(value, wanted):
            raise InputValueError(f"must be {_EXPECTED[kind]} written as JSON, got {_described(value)}")
    problem = _json_problem(value, "the value")
    if problem is not None:
        raise InputValueError(f"must hold JSON values only: {problem}")
    return list(value) if isinstance(value, tuple) else value


def typed_value(kind: str, value: Any) -> Any:
    """`value` as a value of the declared input type `kind` (string, integer, number, boolean, list, object).

    :raises InputValueError: saying what was expected and what was given, or that text is not text (it
        holds a lone surrogate, as a command-line argument that is not UTF-8 does).
    """
    if isinstance(value, str):
        at = lone_surrogate(value)
        if at is not None:
            raise InputValueError(
                f"is not text: character {at + 1} is a lone surrogate ({escaped(value[at])}); "
                "give valid Unicode text (on a command line, UTF-8)"
            )
    allowed = _VALUE_TYPES[kind]
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise InputValueError(f"must be {_EXPECTED[kind]}, got {_described(value)}")
    if kind in ("list", "object"):
        return _json_value(kind, value)
    text = value.strip() if isinstance(value, str) and kind == "boolean" else value
    try:
        return _READERS[kind].validate_python(text)
    except ValidationError as error:
        problem = error.errors()[0]["type"]
    if problem == "finite_number":
        given = f"{_shown(value)}, which is not a finite number"
    elif problem == "int_from_float":
        given = f"{_shown(value)}, a number with a fractional part"
    elif isinstance(value, str):
        given = f"{_shown(value)}{_NOT_READ[kind]}"
    else:
        given = f"{_shown(value)}, a number too large"
    raise InputValueError(f"must be {_EXPECTED[kind]}, got {given}")


__all__ = ["InputValueError", "typed_value"]
