"""Structured output below the step: schema resolution, validation, partial parsing, example values, and
the structured-output field each provider puts on the wire (over real loopback HTTP servers), plus the
local model constrained by its JSON-schema grammar.
"""

from __future__ import annotations

import datetime
import enum
import itertools
import json
import random
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_sse_server import OpenAISSEServer
from provider_servers import GeminiServer, OllamaServer
from pydantic import BaseModel, ConfigDict, Field

from pipeline_ex.errors import PipelineError
from pipeline_ex.llm import providers
from pipeline_ex.llm.providers import BuiltGenerator, build_generator
from pipeline_ex.llm.providers.local import grammar_format
from pipeline_ex.llm.structured import (
    OutputSchema,
    OutputSchemaError,
    PartialObjects,
    SchemaMismatch,
    example_value,
    instructions,
    repair_message,
    resolve_output_schema,
)

# -- models -------------------------------------------------------------------------------------------


class City(BaseModel):
    name: str
    country: str
    population: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str = Field(min_length=3, max_length=40)
    zip_code: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, lt=130)
    height_m: float = Field(gt=0.5, le=2.5)
    color: Color
    kind: Literal["staff", "guest"] = "guest"
    nickname: str | None = None
    address: Address
    previous: list[Address] = Field(default_factory=list)
    tags: Annotated[list[str], Field(min_length=2, max_length=4)]
    scores: dict[str, int] = Field(default_factory=dict)
    born: datetime.date
    seen_at: datetime.datetime
    ident: uuid.UUID
    lucky: int = Field(multiple_of=7, ge=10)
    pair: tuple[int, str]


class Tree(BaseModel):
    label: str
    children: list[Tree] = Field(default_factory=list)
    parent: Tree | None = None


class Cat(BaseModel):
    pet: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    pet: Literal["dog"]
    good: bool


class Owner(BaseModel):
    pets: list[Annotated[Cat | Dog, Field(discriminator="pet")]]
    favourite: Cat | Dog | None


class Closed(BaseModel):
    """Every field required and no extra keys: what OpenAI's strict mode accepts as it is."""

    model_config = ConfigDict(extra="forbid")
    title: str
    rating: int


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]


MODELS: list[type[BaseModel]] = [City, Person, Tree, Owner, Closed, Page[City]]


# -- resolving ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inline",
    [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"type": "array", "items": {"type": "string"}},
        {"type": "string", "enum": ["yes", "no"]},
        {"type": "integer", "minimum": 1},
        {},
    ],
)
def test_an_inline_schema_resolves_as_it_is(inline: dict[str, Any]) -> None:
    schema = resolve_output_schema(inline)
    assert schema == OutputSchema("output", inline, None)
    assert schema.json_schema is not inline, "the spec is copied, so later changes to it do not leak in"


def test_a_model_class_resolves_to_its_json_schema() -> None:
    schema = resolve_output_schema(City)
    assert (schema.name, schema.json_schema, schema.model) == ("City", City.model_json_schema(), City)
    assert resolve_output_schema({"model": City}) == schema
    assert resolve_output_schema(schema) is schema


def test_a_generic_model_gets_a_function_safe_name() -> None:
    assert resolve_output_schema(Page[City]).name == "Page_City_"


@pytest.fixture
def models_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of models in a fresh current directory, importable by its name as a project's own."""
    name = f"project_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel

            class Invoice(BaseModel):
                number: str
                total: float

            def not_a_model():
                pass
            """
        )
    )
    (tmp_path / f"{name}_broken.py").write_text("import package_that_is_not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    for module in (name, f"{name}_broken"):
        sys.modules.pop(module, None)


@pytest.mark.parametrize("separator", [":", "."])
def test_a_model_reference_is_imported_from_the_current_directory(models_module: str, separator: str) -> None:
    schema = resolve_output_schema({"model": f"{models_module}{separator}Invoice"})
    assert schema.name == "Invoice"
    assert schema.model is not None and schema.model.__module__ == models_module
    assert schema.json_schema["required"] == ["number", "total"]


def error_of(spec: Any) -> str:
    with pytest.raises(OutputSchemaError) as caught:
        resolve_output_schema(spec)
    assert isinstance(caught.value, PipelineError)
    return str(caught.value)


def test_model_reference_errors(models_module: str) -> None:
    message = error_of({"model": "no_such_package_here.models:Invoice"})
    assert "cannot be imported: import failed" in message
    assert "No module named 'no_such_package_here'" in message
    assert "run from the directory that contains 'no_such_package_here'" in message

    message = error_of({"model": f"{models_module}:Invoyce"})
    assert f"{models_module} has no attribute 'Invoyce'" in message and "did you mean Invoice?" in message

    message = error_of({"model": f"{models_module}_broken:Model"})
    assert "package_that_is_not_installed_anywhere" in message
    assert "pip install package_that_is_not_installed_anywhere" in message

    message = error_of({"model": f"{models_module}:not_a_model"})
    assert "is a function, not a pydantic BaseModel subclass" in message
    assert "fix: name a class that subclasses pydantic.BaseModel" in message

    assert "is a class JSONDecoder, not a pydantic BaseModel subclass" in error_of({"model": "json:JSONDecoder"})
    assert "is a module, not a pydantic BaseModel" in error_of({"model": "json.decoder"})
    assert "is a class dict, not a pydantic BaseModel subclass" in error_of(dict)
    assert "'Invoice' is not a dotted path; fix: give a pydantic model as pkg.mod:Model" in error_of(
        {"model": "Invoice"}
    )
    assert "not a dotted path" in error_of({"model": 12})
    message = error_of({"model": f"{models_module}:Invoice", "type": "object"})
    assert "takes no other keys, got type" in message


def test_a_model_without_a_json_schema_is_refused() -> None:
    class Hooks(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        callback: Callable[[], None]

    message = error_of(Hooks)
    assert "has no JSON Schema" in message and "fix: give its fields JSON-compatible types" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"type": "integr"},
            "keyword 'type' at $: 'integr' is not valid under any of the given schemas; fix: 'type' is one of "
            "array, boolean, integer, null, number, object, string",
        ),
        (
            {"type": "object", "properties": {"name": {"type": "string", "minLength": -1}}},
            "keyword 'minLength' at $.properties.name: -1 is less than the minimum of 0; fix: correct the "
            "'minLength' keyword",
        ),
        ({"required": "name"}, "keyword 'required' at $: 'name' is not of type 'array'"),
        ({"type": "array", "items": {"type": ["string", 3]}}, "keyword 'type' at $.items"),
        (
            {"type": "object", "proprties": {"a": {"type": "string"}}},
            "unknown keyword 'proprties' at $ (JSON Schema would ignore it); fix: did you mean 'properties'?",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string", "maxLenght": 3}}},
            "unknown keyword 'maxLenght' at $.properties.a",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}},
            "refers to '#/$defs/Missing', which it does not define; fix: add it under $defs",
        ),
        ({"$ref": "https://example.com/schema.json"}, "outside the schema; fix: define it under $defs"),
        ({"type": "object", "default": {1, 2}}, "output_schema is not JSON data"),
        ({"type": "number", "maximum": float("nan")}, "output_schema is not JSON data"),
        (["type", "object"], "must be a JSON Schema (a mapping) or {model: pkg.mod:Model}, not list"),
        ("City", "not str 'City'; fix: write the schema inline"),
    ],
)
def test_inline_schema_errors(spec: Any, expected: str) -> None:
    assert expected in error_of(spec)


def test_custom_keywords_far_from_any_known_one_are_allowed() -> None:
    spec = {"type": "object", "x-ui": {"widget": "text"}, "propertyOrdering": ["a"], "example": {"a": 1}}
    assert resolve_output_schema(spec).json_schema == spec


# -- validating ---------------------------------------------------------------------------------------

CITY_JSON = '{"name": "Lyon", "country": "France", "population": 522000}'
CITY = {"name": "Lyon", "country": "France", "population": 522000}


@pytest.mark.parametrize(
    "text",
    [
        CITY_JSON,
        f"  \n{CITY_JSON}\n\t ",
        f"```json\n{CITY_JSON}\n```",
        f"```JSON\n{CITY_JSON}```",
        f"\n```\n{CITY_JSON}\n```\n",
        f"```json\n\n  {CITY_JSON}  \n\n```",
    ],
)
def test_validate_json_tolerates_whitespace_and_one_fence(text: str) -> None:
    assert resolve_output_schema(City).validate_json(text) == CITY
    inline = resolve_output_schema(City.model_json_schema())
    assert inline.validate_json(text) == CITY


@pytest.mark.parametrize(
    "text",
    [
        f"Here it is: {CITY_JSON}",
        f"{CITY_JSON} Hope that helps!",
        f"```python\n{CITY_JSON}\n```",
        f"```json\n{CITY_JSON}\n``` and more",
        f"```json\n{CITY_JSON}",
        "",
        '{"name": "Lyon", "population": NaN}',
        "{'name': 'Lyon'}",
    ],
)
def test_validate_json_rejects_anything_but_json(text: str) -> None:
    for schema in (resolve_output_schema(City), resolve_output_schema(City.model_json_schema())):
        with pytest.raises(SchemaMismatch) as caught:
            schema.validate_json(text)
        assert caught.value.message.startswith("the reply is not valid JSON: ")
        assert caught.value.problems[0].startswith("$: the reply is not JSON (")


def test_model_validation_errors_name_json_paths() -> None:
    class Trip(BaseModel):
        title: str
        stops: list[City]

    reply = json.dumps({"stops": [CITY, {"name": "Nice", "country": "France", "population": "many"}, {}]})
    with pytest.raises(SchemaMismatch) as caught:
        resolve_output_schema(Trip).validate_json(reply)
    problems = caught.value.problems
    assert problems[0] == "$.title: Field required"
    assert problems[1].startswith("$.stops[1].population: Input should be a valid integer")
    assert problems[2:] == [f"$.stops[2].{key}: Field required" for key in ("name", "country", "population")]
    assert "and 1 more" not in caught.value.message
    assert caught.value.message.startswith("the reply does not match the output schema: $.title: Field required; ")


def test_inline_validation_errors_name_json_paths_and_stop_at_five() -> None:
    schema = resolve_output_schema(
        {
            "type": "object",
            "properties": {
                "rows": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "odd key": {"type": "boolean"},
            },
            "required": ["rows", "odd key"],
        }
    )
    with pytest.raises(SchemaMismatch) as caught:
        schema.validate_json('{"rows": [1, -1, "x", -2, -3, -4, -5]}')
    mismatch = caught.value
    assert len(mismatch.problems) == 7
    assert "$: 'odd key' is a required property" in mismatch.problems
    assert "$.rows[1]: -1 is less than the minimum of 0" in mismatch.problems
    assert "$.rows[2]: 'x' is not of type 'integer'" in mismatch.problems
    assert mismatch.message.endswith("; and 2 more")
    assert mismatch.message.count("; ") == 5
    repair = repair_message(mismatch)
    assert repair.startswith("Your reply did not match the required JSON Schema:\n- ")
    assert repair.count("\n- ") == 6 and "\n- and 2 more\n" in repair
    assert repair.endswith("Reply again with only the corrected JSON value, with no other text.")


def test_a_model_value_is_its_json_dump_with_defaults() -> None:
    class Entry(BaseModel):
        when: datetime.date
        color: Color
        note: str = "none"

    assert resolve_output_schema(Entry).validate_json('{"when": "2024-02-03", "color": "green"}') == {
        "when": "2024-02-03",
        "color": "green",
        "note": "none",
    }


def test_scalar_and_array_roots_validate() -> None:
    assert resolve_output_schema({"type": "array", "items": {"type": "integer"}}).validate_json(" [1, 2] ") == [1, 2]
    assert resolve_output_schema({"type": "string"}).validate_json('"hi"') == "hi"
    with pytest.raises(SchemaMismatch, match=r"\$: 'hi' is not of type 'integer'"):
        resolve_output_schema({"type": "integer"}).validate_json('"hi"')


def test_instructions_quote_the_schema() -> None:
    schema = resolve_output_schema(City)
    text = instructions(schema)
    assert text.startswith("Reply with only a JSON value that matches this JSON Schema")
    assert json.loads(text.split("\n", 1)[1]) == City.model_json_schema()


# -- partial values -----------------------------------------------------------------------------------


def grows(old: Any, new: Any) -> bool:
    """`new` shows everything `old` showed, and more or the same.

    A dict keeps its keys in the same order (it may add keys after them); a list keeps its items (it may
    add items after them); all keys' and items' values but the last are complete and equal; the last may
    itself have grown. A string may only get longer at its end. Numbers, booleans and null never change,
    and a value never changes its type.
    """
    if isinstance(old, dict):
        if not isinstance(new, dict) or list(new)[: len(old)] != list(old):
            return False
        keys = list(old)
        return all(old[k] == new[k] for k in keys[:-1]) and (not keys or grows(old[keys[-1]], new[keys[-1]]))
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) < len(old):
            return False
        return not old or (old[:-1] == new[: len(old) - 1] and grows(old[-1], new[len(old) - 1]))
    if isinstance(old, str):
        return isinstance(new, str) and new.startswith(old)
    return type(old) is type(new) and old == new


def partials(text: str, cuts: list[int]) -> list[Any]:
    """The values `PartialObjects` reports when `text` arrives in pieces ending at `cuts`."""
    parser = PartialObjects()
    seen: list[Any] = []
    for end in [*cuts, len(text)]:
        changed, value = parser.feed(text[:end])
        if changed:
            seen.append(value)
        else:
            assert value is None
    return seen


def check_partials(text: str, final: Any, cuts: list[int]) -> list[Any]:
    seen = partials(text, cuts)
    assert seen, "something is shown"
    for old, new in itertools.pairwise(seen):
        assert old != new, "a value is reported only when it changed"
        assert grows(old, new), f"{old!r} -> {new!r} does not grow"
    for value in seen:
        assert grows(value, final), f"{value!r} is not a beginning of the final value"
    assert seen[-1] == final
    return seen


SAMPLES: list[Any] = [
    CITY,
    {
        "title": 'Quotes " and \\ backslashes \\" and \n newlines \t tabs',
        "unicode": "café \u2013 日本 😀 𝄞",
        "numbers": [0, -1, 12345678901234567890, 3.25, -0.5, 1e-07, 6.02e23, -1.5e-10],
        "flags": [True, False, None],
        "empty": {"list": [], "dict": {}, "string": ""},
        "nested": [[[1, [2, [3]]]], {"deep": {"deeper": {"deepest": "yes"}}}],
        "last": 42,
    },
    [{"id": 1, "tags": ["a", "bb", "ccc"]}, {"id": 22, "tags": []}, 333],
    "a root string with \\u escapes \u00e9 and 😀",
    [[], [[]], [{}], ""],
    {"": "empty key", 'key with " quote': 1.5, "k\\": [True]},
    True,
    None,
]


@pytest.mark.parametrize("ensure_ascii", [False, True])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("sample", range(len(SAMPLES)))
def test_partials_grow_char_by_char(sample: int, indent: int | None, ensure_ascii: bool) -> None:
    final = SAMPLES[sample]
    text = json.dumps(final, indent=indent, ensure_ascii=ensure_ascii)
    check_partials(text, final, list(range(len(text))))


@pytest.mark.parametrize("sample", range(len(SAMPLES)))
def test_partials_grow_inside_a_fence_and_after_whitespace(sample: int) -> None:
    final = SAMPLES[sample]
    text = "\n  ```json\n" + json.dumps(final, ensure_ascii=True) + "\n```\n"
    check_partials(text, final, list(range(len(text))))
    rng = random.Random(sample)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text)), min(len(text), rng.randint(1, 12))))
        check_partials(text, final, cuts)


def test_unfinished_numbers_are_not_shown() -> None:
    text = '{"a": [12345, -6.5e+3], "b": 7}'
    assert partials(text, list(range(len(text)))) == [
        {},
        {"a": []},
        {"a": [12345]},
        {"a": [12345, -6500.0]},
        {"a": [12345, -6500.0], "b": 7},
    ]
    assert partials("[1, 2 , 3\n", [2, 5, 6, 7, 8, 9]) == [[], [1], [1, 2], [1, 2, 3]]
    assert partials("123", [1, 2]) == [], "a bare number shows only once validated"


def test_an_escape_cut_in_two_is_held_back() -> None:
    text = '{"s": "x\\ud83d\\ude00\\n"}'
    seen = partials(text, list(range(len(text))))
    assert [v.get("s") for v in seen] == [None, "", "x", "x😀", "x😀\n"]


def test_text_that_is_not_json_shows_nothing() -> None:
    assert partials("Sure! Here is the JSON: {", [3, 10]) == []
    assert partials("```", [1, 2]) == []


def test_a_text_that_starts_over_is_parsed_afresh() -> None:
    parser = PartialObjects()
    assert parser.feed('{"a": "xy') == (True, {"a": "xy"})
    assert parser.feed('{"b": 1,') == (True, {"b": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
roots = json_values.filter(lambda v: isinstance(v, (dict, list, str, bool)) or v is None)


@settings(max_examples=300, deadline=None)
@given(value=roots, data=st.data(), ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_partials_grow_for_any_json_in_any_chunking(
    value: Any, data: st.DataObject, ensure_ascii: bool, indent: int | None
) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=len(text)), label="cuts"))
    check_partials(text, json.loads(text), cuts)


# -- example values -----------------------------------------------------------------------------------


def assert_example_valid(schema: OutputSchema) -> Any:
    value = example_value(schema)
    assert value == example_value(schema), "deterministic"
    jsonschema.validate(value, schema.json_schema, cls=jsonschema.Draft202012Validator)
    schema.validate_json(json.dumps(value))
    return value


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_example_values_of_models_validate(model: type[BaseModel]) -> None:
    value = assert_example_valid(resolve_output_schema(model))
    model.model_validate_json(json.dumps(value))


def test_example_value_fills_in_a_complex_model() -> None:
    value = example_value(resolve_output_schema(Person))
    assert value["age"] == 18 and value["lucky"] == 14 and value["color"] == "red"
    assert len(value["tags"]) == 2 and len(value["address"]["zip_code"]) == 5
    assert value["pair"] == [0, "string"]
    assert value["seen_at"] == "2024-01-01T00:00:00Z"


def test_example_value_of_a_recursive_model_ends() -> None:
    value = example_value(resolve_output_schema(Tree))
    depth = 0
    node = value
    while node.get("parent"):
        node, depth = node["parent"], depth + 1
    assert 1 <= depth <= 5


@pytest.mark.parametrize(
    "inline",
    [
        {"type": "object", "properties": {"a": {"const": 3}, "b": {"enum": ["x", "y"]}}, "required": ["a", "b"]},
        {"type": ["null", "string"], "minLength": 10},
        {"type": "string", "maxLength": 2},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": "number", "exclusiveMinimum": 5},
        {"type": "integer", "maximum": -3},
        {"type": "integer", "minimum": 10, "multipleOf": 4},
        {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "string", "minLength": 2}]},
        {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "null"}]},
        {
            "allOf": [{"$ref": "#/$defs/A"}, {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}],
            "$defs": {"A": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}},
        },
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
        {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 3},
        {"type": "object", "required": ["extra"], "additionalProperties": {"type": "integer", "minimum": 2}},
        {"properties": {"when": {"format": "date-time"}, "id": {"type": "string", "format": "uuid"}}},
        {"type": "boolean"},
        {},
    ],
)
def test_example_values_of_inline_schemas_validate(inline: dict[str, Any]) -> None:
    assert_example_valid(resolve_output_schema(inline))


# -- providers ----------------------------------------------------------------------------------------


def run_once(built: BuiltGenerator, *, stream: bool = True) -> str:
    """Run a built generator once, as a step does; return the streamed (or replied) text."""
    return "".join(run_chunks(built, stream=stream))


def run_chunks(built: BuiltGenerator, *, stream: bool = True) -> list[str]:
    """Run a built generator once, as a step does; return the streamed chunks (or the one reply)."""
    from haystack.dataclasses import ChatMessage

    chunks: list[str] = []
    kwargs: dict[str, Any] = {
        "messages": [ChatMessage.from_user("x")],
        "generation_kwargs": dict(built.generation_kwargs),
    }
    if stream:
        kwargs["streaming_callback"] = lambda chunk: chunks.append(chunk.content)
    else:
        kwargs["generation_kwargs"].pop("stream_options", None)
    with built.lock or nullcontext():
        replies = built.generator.run(**kwargs)["replies"]
    return chunks if stream else [replies[0].text]


@pytest.mark.parametrize("stream", [True, False])
def test_openai_sends_the_schema_as_response_format(openai_server: OpenAISSEServer, stream: bool) -> None:
    schema = resolve_output_schema(City)
    built = build_generator("openai", None, {"api_base_url": openai_server.url, "max_retries": 0}, output_schema=schema)
    assert built.structured == "native"
    openai_server.script(pieces=(CITY_JSON[:10], CITY_JSON[10:]))
    assert run_once(built, stream=stream) == CITY_JSON
    body = openai_server.wait_for_response(0).body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "City", "schema": City.model_json_schema(), "strict": False},
    }
    assert body["response_format"]["json_schema"]["schema"] == schema.json_schema
    assert bool(body.get("stream")) is stream


def test_openai_asks_for_strict_mode_when_the_schema_allows_it(openai_server: OpenAISSEServer) -> None:
    schema = resolve_output_schema(Closed)
    built = build_generator("openai", None, {"api_base_url": openai_server.url, "max_retries": 0}, output_schema=schema)
    run_once(built)
    json_schema = openai_server.wait_for_response(0).body["response_format"]["json_schema"]
    assert json_schema == {"name": "Closed", "schema": Closed.model_json_schema(), "strict": True}


CLOSED: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}},
    "required": ["a"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("spec", "strict"),
    [
        (Closed, True),
        (City, False),  # extra keys allowed
        (CLOSED | {"properties": {"a": {"type": "string"}}, "required": []}, False),
        (CLOSED | {"properties": {"a": {"type": "string", "minLength": 2}}}, False),  # not a strict keyword
        (CLOSED | {"properties": {"a": {"$ref": "#/$defs/B"}}, "$defs": {"B": CLOSED}}, True),
        (CLOSED | {"properties": {"a": {"$ref": "#/$defs/B"}}, "$defs": {"B": {"type": "object"}}}, False),
    ],
)
def test_openai_strict_mode_follows_the_schema(spec: Any, strict: bool) -> None:
    from pipeline_ex.llm.providers.openai import response_format

    fmt = response_format(resolve_output_schema(spec))
    assert fmt is not None and fmt["json_schema"]["strict"] is strict


def test_openai_falls_back_to_instructions_for_a_non_object_root(openai_server: OpenAISSEServer) -> None:
    schema = resolve_output_schema({"type": "array", "items": {"type": "integer"}})
    built = build_generator("openai", None, {"api_base_url": openai_server.url, "max_retries": 0}, output_schema=schema)
    assert built.structured == "instructions"
    run_once(built)
    assert "response_format" not in openai_server.wait_for_response(0).body


def test_ollama_sends_the_schema_as_format(ollama_server: OllamaServer) -> None:
    schema = resolve_output_schema(Owner)
    built = build_generator("ollama", None, {"api_base_url": ollama_server.url}, output_schema=schema)
    assert built.structured == "native"
    ollama_server.script(pieces=("[", "1]"))
    assert run_once(built) == "[1]"
    assert ollama_server.wait_for_response(0).body["format"] == Owner.model_json_schema()


@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
def test_gemini_sends_the_schema_as_response_json_schema(gemini_server: GeminiServer) -> None:
    schema = resolve_output_schema(Owner)
    built = build_generator("gemini", None, {"max_retries": 0}, output_schema=schema)
    assert built.structured == "native"
    gemini_server.script(pieces=(CITY_JSON,))
    assert run_once(built) == CITY_JSON
    config = gemini_server.wait_for_response(0).body["generationConfig"]
    assert config["responseJsonSchema"] == Owner.model_json_schema(), "sent as it is, $defs and all"
    assert config["responseMimeType"] == "application/json"
    assert "responseSchema" not in config


def test_without_an_output_schema_nothing_structured_is_asked(
    openai_server: OpenAISSEServer, ollama_server: OllamaServer
) -> None:
    built = build_generator("openai", None, {"api_base_url": openai_server.url, "max_retries": 0})
    assert built.structured is None
    run_once(built)
    assert "response_format" not in openai_server.wait_for_response(0).body
    built = build_generator("ollama", None, {"api_base_url": ollama_server.url})
    run_once(built)
    assert built.structured is None and ollama_server.wait_for_response(0).body.get("format") is None


def test_anthropic_and_named_generators_use_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    schema = resolve_output_schema(City)
    built = build_generator("anthropic", None, {}, output_schema=schema)
    assert built.structured == "instructions"
    assert "City" not in json.dumps(built.generator.to_dict())
    built = build_generator(
        "generator",
        None,
        {"type": "pipeline_ex.modes.mock_generator.ScriptedChatGenerator", "init_parameters": {"response": "x"}},
        output_schema=schema,
    )
    assert built.structured == "instructions"


def test_a_builder_without_output_schema_gets_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return providers.mock.build(model, options)

    monkeypatch.setitem(providers.PROVIDERS, "plain", build)
    built = build_generator("plain", None, {"mock_response": CITY_JSON}, output_schema=resolve_output_schema(City))
    assert built.structured == "instructions"
    assert build_generator("plain", None, {}).structured is None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_mock_replies_with_the_example_value(model: type[BaseModel]) -> None:
    schema = resolve_output_schema(model)
    built = build_generator("mock", None, {}, output_schema=schema)
    assert built.structured == "native"
    chunks = run_chunks(built)
    text = "".join(chunks)
    assert json.loads(text) == example_value(schema)
    schema.validate_json(text)
    ends = [len("".join(chunks[: i + 1])) for i in range(len(chunks))]
    assert len(check_partials(text, json.loads(text), ends)) >= 2, "it streams in pieces"


def test_a_scripted_mock_reply_wins_over_the_example() -> None:
    built = build_generator("mock", None, {"mock_response": "not json"}, output_schema=resolve_output_schema(City))
    assert run_once(built) == "not json"
    assert run_once(build_generator("mock", None, {})).startswith("Mock reply")


def test_the_local_grammar_falls_back_to_json_for_schemas_llama_cpp_cannot_convert() -> None:
    pytest.importorskip("llama_cpp")
    unsupported = resolve_output_schema({"type": "object", "properties": {"a": {"not": {"type": "string"}}}})
    assert grammar_format(unsupported) == ({"type": "json_object"}, "instructions")
    schema = resolve_output_schema(City)
    assert grammar_format(schema) == ({"type": "json_object", "schema": City.model_json_schema()}, "native")


class Trip(BaseModel):
    title: str
    stops: list[City] = Field(min_length=1, max_length=3)


@pytest.mark.local_model
@pytest.mark.live
@pytest.mark.parametrize(
    ("model", "prompt"),
    [
        (City, "Give the name, country and population of the capital of Japan."),
        (Trip, "Plan a short trip through two cities in Spain."),
    ],
)
def test_the_local_model_streams_json_its_grammar_enforces(model: type[BaseModel], prompt: str) -> None:
    from haystack.dataclasses import ChatMessage

    schema = resolve_output_schema(model)
    built = build_generator("local", None, {"max_tokens": 300, "temperature": 0.0, "seed": 1}, output_schema=schema)
    assert built.structured == "native"
    assert built.generation_kwargs["response_format"] == {"type": "json_object", "schema": schema.json_schema}
    chunks: list[str] = []
    parser = PartialObjects(schema)
    seen: list[Any] = []

    def on_chunk(chunk: Any) -> None:
        chunks.append(chunk.content)
        changed, value = parser.feed("".join(chunks))
        if changed:
            seen.append(value)

    messages = [ChatMessage.from_system("Reply in JSON."), ChatMessage.from_user(prompt)]
    with built.lock or nullcontext():  # the model is shared: hold its lock, as the step does
        reply = built.generator.run(
            messages=messages, generation_kwargs=dict(built.generation_kwargs), streaming_callback=on_chunk
        )["replies"][0]
    text = "".join(chunks)
    assert len([c for c in chunks if c]) >= 5, "real tokens streamed"
    assert reply.meta.get("finish_reason") == "stop", f"the grammar ends the reply: {text!r}"
    value = schema.validate_json(text)
    model.model_validate(value)
    assert seen and seen[-1] == value
    assert all(grows(a, b) for a, b in itertools.pairwise(seen))
