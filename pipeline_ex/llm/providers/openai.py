"""The `openai` provider: haystack's `OpenAIChatGenerator`, for OpenAI and any compatible server.

With an output schema whose root is an object, the request carries OpenAI's structured-output
`response_format` (`json_schema`); OpenAI accepts nothing else at the root, so any other root type falls
back to instructions. Strict mode is asked for only when the schema already meets its rules, so the
schema the model sees is exactly the one the reply is validated with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pipeline_ex.llm.providers.base import (
    BuiltGenerator,
    GenerationOptions,
    env_secret,
    is_loopback,
    parse_options,
    shared_ssl_context,
)
from pipeline_ex.redaction import register_secret_env

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema

_STRICT_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
        "$ref", "$defs", "definitions", "title", "description", "pattern", "format", "multipleOf",
        "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "minItems", "maxItems",
    }
)  # fmt: skip
"""The keywords OpenAI documents as supported in strict structured outputs."""


class OpenAIOptions(GenerationOptions):
    """Options of the `openai` provider."""

    api_base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    organization: str | None = None
    max_retries: int | None = None
    include_usage: bool = True
    """Ask for `stream_options.include_usage`; turn off for servers that reject it."""

    def key_variables(self) -> tuple[str, ...]:
        """The environment variables the key may come from (none needed for a loopback server)."""
        return () if is_loopback(self.api_base_url) else (self.api_key_env,)


def _schemas(schema: Any) -> Iterator[dict[str, Any]]:
    """The schema and every schema inside it."""
    if not isinstance(schema, dict):
        return
    yield schema
    for key in ("properties", "$defs", "definitions"):
        for sub in (schema.get(key) or {}).values():
            yield from _schemas(sub)
    for sub in schema.get("anyOf") or []:
        yield from _schemas(sub)
    for key in ("items", "additionalProperties"):
        yield from _schemas(schema.get(key))


def strict_compatible(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict mode accepts `schema` as it is.

    Strict mode needs an object root, `additionalProperties: false` and every property required on every
    object, and only the keywords it supports.
    """
    if schema.get("type") != "object":
        return False
    for sub in _schemas(schema):
        if not set(sub) <= _STRICT_KEYWORDS:
            return False
        if sub.get("type") == "object" or "properties" in sub:
            if sub.get("additionalProperties") is not False:
                return False
            if set(sub.get("required") or ()) != set(sub.get("properties") or {}):
                return False
    return True


def response_format(output_schema: OutputSchema) -> dict[str, Any] | None:
    """The `response_format` for an output schema; None when its root is not an object."""
    schema = output_schema.json_schema
    if schema.get("type") != "object":
        return None
    strict = strict_compatible(schema)
    return {"type": "json_schema", "json_schema": {"name": output_schema.name, "schema": schema, "strict": strict}}


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """Build an `OpenAIChatGenerator` for one step run (asking for `output_schema` if given)."""
    from haystack.components.generators.chat import OpenAIChatGenerator
    from haystack.utils import Secret

    opts: OpenAIOptions = parse_options(OpenAIOptions, "openai", options)
    register_secret_env(opts.api_key_env)  # sent whenever it is set, to loopback servers too
    if not opts.key_variables() and not os.environ.get(opts.api_key_env):
        api_key = Secret.from_token("no-key-needed-for-loopback")  # local servers take any key
    else:
        api_key = env_secret("openai", opts.api_key_env)
    generation_kwargs = opts.generation_kwargs()
    if opts.include_usage:
        generation_kwargs["stream_options"] = {"include_usage": True}
    structured: Literal["native", "instructions"] | None = None
    if output_schema is not None:
        fmt = response_format(output_schema)
        if fmt is not None:
            generation_kwargs["response_format"] = fmt
        structured = "native" if fmt is not None else "instructions"
    model_name = model or "gpt-4o-mini"
    generator = OpenAIChatGenerator(
        api_key=api_key,
        model=model_name,
        api_base_url=opts.api_base_url,
        organization=opts.organization,
        max_retries=opts.max_retries,
        http_client_kwargs={"verify": shared_ssl_context()},
    )
    return BuiltGenerator(generator, "openai", model_name, generation_kwargs, structured=structured)
