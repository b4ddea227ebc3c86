"""Structured output for LLM steps: the `output_schema` a reply must match, and what providers need of it.

An `output_schema` is an inline JSON Schema or a pydantic model (by class, or by `{model: pkg.mod:Model}`).
`resolve_output_schema` turns it into an `OutputSchema`, which validates a finished reply
(`validate_json`), and `PartialObjects` turns the reply text streamed so far into the value parsed so far.
`instructions`, `repair_message` and `example_value` give the prompt text and the mock reply that go with
a schema.

Hand-written parts, and why:
- The scan in `PartialObjects` is a few lines of string/escape tracking. pydantic_core's partial parser
  does the parsing, but it reports a number at the very end of the text (`12` of `123`) as if finished,
  and cannot say where a root value ends (so a closing code fence after it would be a parse error).
- `example_value` builds a value from a schema: neither pydantic nor jsonschema generates instances, and
  the test-data generators that do are random rather than deterministic.
- The typo check on schema keywords: JSON Schema ignores unknown keywords by design, so `proprties`
  would silently allow anything.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from jsonschema import SchemaError
from jsonschema.validators import (
    Draft4Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    validator_for,
)
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from pipeline_ex.errors import HandlerResolutionError, PipelineError

MAX_PROBLEMS = 5
"""At most this many validation problems are quoted in a `SchemaMismatch` message."""

DEFAULT_NAME = "output"
"""The schema name sent to providers for an inline schema."""


class OutputSchemaError(PipelineError):
    """An `output_schema` spec is not usable: the message names the problem and how to fix it."""


class SchemaMismatch(Exception):
    """A reply is not JSON, or is JSON that does not match the output schema.

    :param message: what is wrong, naming the JSON path of each problem (at most `MAX_PROBLEMS` of them).
    :param problems: one `"$.path: problem"` line per problem found (all of them).
    """

    def __init__(self, message: str, problems: list[str]) -> None:
        self.message = message
        self.problems = problems
        super().__init__(message)


# -- the schema --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSchema:
    """A resolved output schema: its provider-safe name, its JSON Schema, and its pydantic model if any.

    :param name: a function-name-safe name (`[A-Za-z0-9_-]{1,64}`) for provider requests: the model's
        class name, else "output".
    :param json_schema: the JSON Schema a reply must match (for a model, its `model_json_schema()`).
    :param model: the pydantic model replies are validated with; None for an inline schema, which is
        validated with `jsonschema`.
    """

    name: str
    json_schema: dict[str, Any]
    model: type[BaseModel] | None = None
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model is None:
            cls = validator_for(self.json_schema, default=Draft202012Validator)
            object.__setattr__(self, "_validator", cls(self.json_schema))

    def validate_json(self, text: str) -> Any:
        """Parse a reply and validate it; return the value as plain JSON data.

        The text may have surrounding whitespace and be wrapped in one Markdown code fence (```json ...
        ```), nothing else. For a model the value is `model_dump(mode="json")` of the validated instance
        (so defaults are filled in).

        :raises SchemaMismatch: the text is not JSON, or the JSON does not match the schema.
        """
        body = unfence(text)
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except ValueError as error:
            problem = f"$: the reply is not JSON ({error})"
            raise SchemaMismatch(f"the reply is not valid JSON: {error}", [problem]) from None
        if self.model is not None:
            try:
                instance = self.model.model_validate_json(body)
            except ValidationError as error:
                problems = [f"{json_path(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)]
                raise _mismatch(problems) from None
            return instance.model_dump(mode="json")
        errors = sorted(self._validator.iter_errors(data), key=lambda e: (list(map(str, e.path)), e.message))
        if errors:
            raise _mismatch([f"{e.json_path}: {e.message}" for e in errors])
        return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _mismatch(problems: list[str]) -> SchemaMismatch:
    shown = problems[:MAX_PROBLEMS]
    more = len(problems) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more" if more else "")
    return SchemaMismatch(f"the reply does not match the output schema: {text}", problems)


def json_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A JSON path (`$.people[0].name`) for a pydantic error location."""
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```\Z", re.DOTALL | re.IGNORECASE)


def unfence(text: str) -> str:
    """The text without surrounding whitespace and without one enclosing ```json code fence."""
    stripped = text.strip()
    match = _FENCE.match(stripped)
    return match["body"].strip() if match else stripped


# -- resolving a spec -----------------------------------------------------------------------------------

_MODEL_FIX = "give a pydantic model as pkg.mod:Model (or pkg.mod.Model), importable from the current directory"


def resolve_output_schema(spec: Mapping[str, Any] | type[BaseModel] | OutputSchema) -> OutputSchema:
    """Turn an `output_schema` spec into an `OutputSchema`.

    :param spec: an inline JSON Schema (a mapping; any root type), `{"model": "pkg.mod:Model"}` (or
        `pkg.mod.Model`, imported with the current directory importable, as handler paths are), a
        pydantic model class, or an `OutputSchema` (returned as it is).
    :raises OutputSchemaError: the model cannot be imported or is not a pydantic model, or the inline
        schema is not a valid JSON Schema (naming the wrong keyword), or it refers to a `$ref` it does
        not define.
    """
    if isinstance(spec, OutputSchema):
        return spec
    if isinstance(spec, type):
        return _from_model(spec, spec.__qualname__)
    if not isinstance(spec, Mapping):
        raise OutputSchemaError(
            f"output_schema must be a JSON Schema (a mapping) or {{model: pkg.mod:Model}}, not {type(spec).__name__}"
            f" {spec!r}; fix: write the schema inline, or {_MODEL_FIX}"
        )
    if "model" in spec:
        return _from_model_ref(spec)
    return _from_inline(spec)


def _from_model_ref(spec: Mapping[str, Any]) -> OutputSchema:
    extra = sorted(str(key) for key in spec if key != "model")
    if extra:
        raise OutputSchemaError(
            f"output_schema {{model: ...}} takes no other keys, got {', '.join(extra)}; fix: remove them "
            "(an inline JSON Schema has no 'model' keyword)"
        )
    reference = spec["model"]
    if isinstance(reference, type):
        return _from_model(reference, reference.__qualname__)
    if not isinstance(reference, str) or not re.fullmatch(r"[A-Za-z_][\w.]*[.:][A-Za-z_][\w.]*", reference):
        raise OutputSchemaError(f"output_schema model {reference!r} is not a dotted path; fix: {_MODEL_FIX}")
    from pipeline_ex.streaming.resolve import _import_reference

    try:
        target = _import_reference(reference, None)
    except HandlerResolutionError as error:
        lines = [f"output_schema model {reference!r} cannot be imported: {error.problem}"]
        if error.cause is not None:
            lines.append(f"  cause: {type(error.cause).__name__}: {error.cause}")
        lines.append(f"  fix: {_import_fix(reference, error)}")
        raise OutputSchemaError("\n".join(lines)) from error
    return _from_model(target, reference)


def _import_fix(reference: str, error: HandlerResolutionError) -> str:
    if "has no attribute" in error.problem and error.hint:
        return error.hint  # "did you mean ...?" or what the module defines
    top = reference.replace(":", ".").split(".")[0]
    cause = error.cause
    if isinstance(cause, ModuleNotFoundError) and cause.name and cause.name.split(".")[0] != top:
        missing = cause.name.split(".")[0]
        return f"the module imports {missing!r}, which is not installed: pip install {missing}"
    if isinstance(cause, ModuleNotFoundError):
        return f"check the module path; run from the directory that contains {top!r} (now {os.getcwd()})"
    return "fix the error the module raises when it is imported"


def _from_model(target: object, reference: str) -> OutputSchema:
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        kind = f"class {target.__qualname__}" if isinstance(target, type) else type(target).__name__
        raise OutputSchemaError(
            f"output_schema model {reference!r} is a {kind}, not a pydantic BaseModel subclass; "
            "fix: name a class that subclasses pydantic.BaseModel"
        )
    try:
        schema = target.model_json_schema()
    except Exception as error:  # pydantic raises several kinds for fields with no JSON Schema
        raise OutputSchemaError(
            f"output_schema model {reference!r} has no JSON Schema ({type(error).__name__}: {error}); "
            "fix: give its fields JSON-compatible types"
        ) from error
    name = re.sub(r"[^A-Za-z0-9_-]", "_", target.__name__)[:64] or DEFAULT_NAME
    return OutputSchema(name, schema, target)


def _from_inline(spec: Mapping[str, Any]) -> OutputSchema:
    try:
        schema: dict[str, Any] = json.loads(json.dumps(spec, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise OutputSchemaError(
            f"output_schema is not JSON data ({error}); fix: use only mappings, lists, strings, numbers, "
            "booleans and null in it"
        ) from None
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as error:
        raise OutputSchemaError(_schema_error_text(error)) from None
    typo = next(_keyword_typos(schema), None)
    if typo is not None:
        where, keyword, known = typo
        raise OutputSchemaError(
            f"output_schema has an unknown keyword {keyword!r} at {where} (JSON Schema would ignore it); "
            f"fix: did you mean {known!r}?"
        )
    _check_refs(schema)
    return OutputSchema(DEFAULT_NAME, schema)


_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _schema_error_text(error: SchemaError) -> str:
    path = list(error.path)
    names = [index for index, part in enumerate(path) if isinstance(part, str)]
    if not names:
        return (
            f"output_schema is not a valid JSON Schema: {error.message}; fix: an output_schema is a JSON Schema "
            "object such as {type: object, properties: {...}}"
        )
    keyword = str(path[names[-1]])
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[: names[-1]])
    if keyword == "type":
        fix = f"'type' is one of {', '.join(_TYPES)}, or a list of them"
    else:
        fix = f"correct the {keyword!r} keyword (see https://json-schema.org/understanding-json-schema/reference)"
    return f"output_schema is not a valid JSON Schema: keyword {keyword!r} at {where}: {error.message}; fix: {fix}"


# The keywords jsonschema validates in any draft, plus the annotation and core keywords it does not check,
# for the typo check (with OpenAPI's `example`, `discriminator` and `nullable`, which schemas often carry).
_KEYWORDS: frozenset[str] = frozenset().union(
    *(cls.VALIDATORS for cls in (Draft4Validator, Draft7Validator, Draft201909Validator, Draft202012Validator)),
    (
        "$schema", "$id", "$anchor", "$dynamicAnchor", "$vocabulary", "$comment", "$defs", "definitions",
        "then", "else", "minContains", "maxContains", "title", "description", "default", "deprecated",
        "readOnly", "writeOnly", "examples", "example", "contentEncoding", "contentMediaType", "contentSchema",
        "discriminator", "nullable",
    ),
)  # fmt: skip
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
)


def _subschemas(schema: Mapping[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    for key in _SCHEMA_MAPS:
        value = schema.get(key)
        if isinstance(value, Mapping):
            for name, sub in value.items():
                yield f"{where}.{key}.{name}", sub
    for key in _SCHEMA_LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                yield f"{where}.{key}[{index}]", sub
    for key in _SCHEMA_ONE:
        if key in schema:
            value = schema[key]
            if isinstance(value, list):  # the draft-4 tuple form of items
                for index, sub in enumerate(value):
                    yield f"{where}.{key}[{index}]", sub
            else:
                yield f"{where}.{key}", value


def _keyword_typos(schema: Any, where: str = "$") -> Iterator[tuple[str, str, str]]:
    """(where, keyword, the known keyword it is close to) for each likely misspelt keyword."""
    if not isinstance(schema, Mapping):
        return
    for key in schema:
        if key not in _KEYWORDS and not key.startswith(("x-", "$")):
            close = difflib.get_close_matches(key, _KEYWORDS, n=1, cutoff=0.8)
            if close:
                yield where, key, close[0]
    for sub_where, sub in _subschemas(schema, where):
        yield from _keyword_typos(sub, sub_where)


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, Mapping):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def _check_refs(schema: dict[str, Any]) -> None:
    """Every `$ref` must point inside the schema: a remote one would be fetched at validation time."""
    resolver = Registry().with_resource("", Resource.from_contents(schema, DRAFT202012)).resolver()
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise OutputSchemaError(
                f"output_schema refers to {ref!r}, outside the schema; fix: define it under $defs and refer "
                "to it as '#/$defs/Name'"
            )
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise OutputSchemaError(
                f"output_schema refers to {ref!r}, which it does not define; fix: add it under $defs "
                "(or correct the $ref)"
            ) from None


# -- partial values ----------------------------------------------------------------------------------

_NUMBER_CHARS = "0123456789.eE+-"
_STRING_STOP = re.compile(r'["\\]')
_OUTSIDE_STOP = re.compile(r'["{}\[\]]')
_NOTHING = object()


class PartialObjects:
    """The value parsed so far from a reply's streamed JSON text, reported only when it grows.

    Call `feed` with the whole text received so far after each chunk. The values it returns only grow:
    a dict gains keys (in order), a list gains items, and only the last key's or item's value may still
    be growing; everything before it is complete and never changes.

    What is shown while it streams:
    - an unfinished string is shown as far as it goes (a cut escape sequence or a lone surrogate half
      is held back until it is complete), so long text fields grow visibly;
    - an unfinished number is not shown (`12` might become `123`): it appears once a `,`, `]`, `}` or
      whitespace follows it. A reply that is only a number shows nothing until it is validated;
    - `true`, `false` and `null` appear once complete; a key appears with its value's first part.
    Leading whitespace and an opening ```json fence are skipped, and anything after the root value
    closes (a closing fence) is ignored. A text that does not continue the previous one is a new reply,
    parsed from scratch. The values are plain parsed JSON, not validated: pydantic's
    partial validation would fill in defaults that the streamed value could then contradict.
    """

    def __init__(self, schema: OutputSchema | None = None) -> None:
        self.schema = schema
        self._reset()

    def _reset(self) -> None:
        self._last: Any = _NOTHING
        self._text = ""
        self._start: int | None = None  # where the JSON value starts, once known
        self._scanned = 0
        self._in_string = False
        self._depth = 0
        self._end: int | None = None  # just past the end of the root value, once it closed

    def feed(self, text_so_far: str) -> tuple[bool, Any]:
        """`(True, value)` when the value parsed from `text_so_far` grew since the last one returned.

        :returns: `(False, None)` when nothing new can be shown yet (or the text is not JSON).
        """
        if not text_so_far.startswith(self._text):
            self._reset()
        self._text = text_so_far
        if self._start is None and not self._find_start():
            return False, None
        if self._end is None:
            self._scan()
        assert self._start is not None
        stop = self._end if self._end is not None else len(text_so_far)
        body = text_so_far[self._start : stop]
        if self._end is None and not self._in_string and body[-1:].isdigit():
            body = body.rstrip(_NUMBER_CHARS)  # the number may go on: show it once it is complete
        if not body.strip():
            return False, None
        try:
            value = pydantic_core.from_json(body, allow_partial="trailing-strings")
        except ValueError:
            return False, None
        if value == self._last or (self._last is not _NOTHING and not extends(self._last, value)):
            return False, None
        self._last = value
        return True, value

    def _find_start(self) -> bool:
        text = self._text
        offset = len(text) - len(text.lstrip())
        if offset == len(text):
            return False
        if text.startswith("`", offset):
            newline = text.find("\n", offset)
            if newline < 0:
                return False  # still inside the fence's opening line
            offset = newline + 1
            offset += len(text[offset:]) - len(text[offset:].lstrip())
            if offset == len(text):
                return False
        self._start = self._scanned = offset
        return True

    def _scan(self) -> None:
        """Follow strings and nesting over the text not scanned yet, to know where the root value ends."""
        text, i, n = self._text, self._scanned, len(self._text)
        while i < n:
            if self._in_string:
                match = _STRING_STOP.search(text, i)
                if match is None:
                    i = n
                    break
                i = match.end()
                if match.group() == "\\":
                    if i >= n:
                        i -= 1  # rescan the backslash once the escaped character arrives
                        break
                    i += 1
                    continue
                self._in_string = False
                if self._depth == 0:
                    self._end = i
                    break
                continue
            match = _OUTSIDE_STOP.search(text, i)
            if match is None:
                i = n
                break
            i = match.end()
            char = match.group()
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    self._end = i
                    break
        self._scanned = i


def extends(old: Any, new: Any) -> bool:
    """Whether partial value `new` grows `old` without changing what `old` already showed.

    Dicts keep their keys in order and may add more, lists keep their items and may add more, and only
    the last key's or item's value may itself have grown; strings may get longer; anything else must be
    equal.
    """
    if isinstance(old, dict):
        if not isinstance(new, dict) or len(new) < len(old):
            return False
        old_keys = list(old)
        if list(new)[: len(old_keys)] != old_keys:
            return False
        if not old_keys:
            return True
        *complete, last = old_keys
        return all(old[k] == new[k] for k in complete) and extends(old[last], new[last])
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) < len(old):
            return False
        if not old:
            return True
        return old[:-1] == new[: len(old) - 1] and extends(old[-1], new[len(old) - 1])
    if isinstance(old, str):
        return isinstance(new, str) and new.startswith(old)
    return type(old) is type(new) and bool(old == new)


# -- prompts -----------------------------------------------------------------------------------------


def instructions(schema: OutputSchema) -> str:
    """The system-prompt addition for a provider with no structured-output mode of its own."""
    return (
        "Reply with only a JSON value that matches this JSON Schema, with no other text before or after it:\n"
        + json.dumps(schema.json_schema, ensure_ascii=False)
    )


def repair_message(error: SchemaMismatch) -> str:
    """The user message that asks the model to correct a reply that did not match the schema."""
    shown = error.problems[:MAX_PROBLEMS]
    lines = "\n".join(f"- {problem}" for problem in shown)
    more = len(error.problems) - len(shown)
    if more:
        lines += f"\n- and {more} more"
    return (
        "Your reply did not match the required JSON Schema:\n"
        f"{lines}\n"
        "Reply again with only the corrected JSON value, with no other text."
    )


# -- example values ----------------------------------------------------------------------------------

_FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_DEEP = 4
"""Past this depth of nested objects only required properties are filled in (recursive models end)."""


def example_value(schema: OutputSchema) -> Any:
    """A deterministic value that satisfies the schema, built from its keywords.

    Handles `type`, `properties`/`required`, `items`/`prefixItems`/`minItems`/`maxItems`, `enum`,
    `const`, `anyOf`/`oneOf`/`allOf`, `$ref` into `$defs` (pydantic's output), numeric bounds and
    `multipleOf`, `minLength`/`maxLength` and common string `format`s. Not generated: `pattern`,
    `uniqueItems` with more than one required item, `not`, `if`/`then`/`else`.
    """
    return _Examples(schema).build(schema.json_schema, 0)


class _Examples:
    def __init__(self, schema: OutputSchema) -> None:
        self.root = schema.json_schema
        cls = validator_for(self.root, default=Draft202012Validator)
        self.validator = cls(self.root)
        self.resolver = Registry().with_resource("", Resource.from_contents(self.root, DRAFT202012)).resolver()

    def valid(self, value: Any, schema: Any) -> bool:
        return bool(self.validator.evolve(schema=schema).is_valid(value))

    def build(self, schema: Any, depth: int) -> Any:
        if schema is True or not isinstance(schema, Mapping):
            return None
        if "$ref" in schema:
            target = self.resolver.lookup(schema["$ref"]).contents
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.build({**target, **rest} if rest else target, depth)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self._deref(part))
            return self.build(merged, depth)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._choose(schema, key, depth)
        return self._typed(schema, _pick_type(schema), depth)

    def _deref(self, schema: Any) -> Any:
        while isinstance(schema, Mapping) and "$ref" in schema:
            schema = self.resolver.lookup(schema["$ref"]).contents
        return schema

    def _choose(self, schema: Mapping[str, Any], key: str, depth: int) -> Any:
        rest = {k: v for k, v in schema.items() if k != key}
        options = list(schema[key])
        if depth >= _DEEP:  # prefer a branch that ends the nesting
            options.sort(key=lambda option: self._deref(option).get("type") != "null")
        first = _NOTHING
        for option in options:
            value = self.build(_merge(rest, self._deref(option)) if rest else option, depth)
            if first is _NOTHING:
                first = value
            if self.valid(value, schema):
                return value
        return first

    def _typed(self, schema: Mapping[str, Any], kind: str | None, depth: int) -> Any:
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return _string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "boolean":
            return False
        return None

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        names = list(properties) if depth < _DEEP else [n for n in properties if n in required]
        names += [n for n in required if n not in names]
        value: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, schema.get("additionalProperties", True))
            value[name] = self.build(sub, depth + 1)
        return value

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        prefix = list(schema.get("prefixItems") or [])
        minimum = int(schema.get("minItems", 0))
        maximum = schema.get("maxItems")
        count = max(minimum, len(prefix), 1 if depth < _DEEP else 0)
        if maximum is not None:
            count = min(count, int(maximum))
        items = schema.get("items", True)
        if items is False:
            count = min(count, len(prefix))
        return [self.build(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]

    def _number(self, schema: Mapping[str, Any], *, integer: bool) -> int | float:
        """0 if it fits, else the first of the bounds (or a step inside them) that satisfies every keyword."""
        lows = [schema.get("minimum"), schema.get("exclusiveMinimum")]
        highs = [schema.get("maximum"), schema.get("exclusiveMaximum")]
        bounds = [float(b) for b in (*lows, *highs) if b is not None]
        candidates: list[float] = [0.0]
        for bound in bounds:
            candidates += [bound, bound + 1, bound - 1]
        if len(bounds) >= 2:
            candidates.append((min(bounds) + max(bounds)) / 2)
        multiple = schema.get("multipleOf")
        if multiple:
            candidates = [c2 for c in candidates for c2 in (c, math.ceil(c / multiple) * multiple)]
        check = {
            k: schema[k]
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
            if k in schema
        }
        for candidate in candidates:
            value: int | float = math.ceil(candidate) if integer else candidate
            if self.valid(value, check):
                return value
        return 0 if integer else 0.0


def _merge(base: Mapping[str, Any], extra: Any) -> dict[str, Any]:
    merged = dict(base)
    if not isinstance(extra, Mapping):
        return merged
    for key, value in extra.items():
        if key == "properties" and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        elif key == "required" and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *(v for v in value if v not in merged[key])]
        else:
            merged.setdefault(key, value)
    return merged


def _pick_type(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0] if kinds else None
    if kind is not None:
        return str(kind)
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "minLength" in schema or "maxLength" in schema or "format" in schema:
        return "string"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")):
        return "number"
    return None


def _string(schema: Mapping[str, Any]) -> str:
    text = _FORMATS.get(str(schema.get("format")), "string")
    minimum = int(schema.get("minLength", 0))
    if len(text) < minimum:
        text += "x" * (minimum - len(text))
    maximum = schema.get("maxLength")
    return text[: int(maximum)] if maximum is not None else text
