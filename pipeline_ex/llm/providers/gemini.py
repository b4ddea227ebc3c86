"""The `gemini` provider: `GoogleGenAIChatGenerator` from google-genai-haystack (Gemini Developer API).

The google-genai SDK reads `GOOGLE_GEMINI_BASE_URL` to talk to another endpoint.

An output schema is sent as the generation config's `response_json_schema` (the API's
`responseJsonSchema`), which takes JSON Schema as it is. haystack's own `response_format` maps to
`response_schema` instead, which the SDK converts to Gemini's OpenAPI-style `Schema` and silently drops
the keywords that has no field for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline_ex.errors import ProviderNotInstalledError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, env_secret, parse_options

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


class GeminiOptions(GenerationOptions):
    """Options of the `gemini` provider."""

    api_key_env: str | None = None
    """The variable holding the key; by default GOOGLE_API_KEY, then GEMINI_API_KEY."""
    max_retries: int | None = None

    def key_variables(self) -> tuple[str, ...]:
        """The environment variables the key may come from."""
        return (self.api_key_env,) if self.api_key_env else ("GOOGLE_API_KEY", "GEMINI_API_KEY")

    def generation_kwargs(self) -> dict[str, Any]:
        """Gemini names the token limit `max_output_tokens` and the stop list `stop_sequences`."""
        kwargs = super().generation_kwargs()
        if "max_tokens" in kwargs:
            kwargs["max_output_tokens"] = kwargs.pop("max_tokens")
        if "stop" in kwargs:
            kwargs["stop_sequences"] = kwargs.pop("stop")
        return kwargs


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """Build a `GoogleGenAIChatGenerator` for one step run (asking for `output_schema` if given)."""
    opts: GeminiOptions = parse_options(GeminiOptions, "gemini", options)
    try:
        from haystack_integrations.components.generators.google_genai import GoogleGenAIChatGenerator
    except ModuleNotFoundError as error:
        raise ProviderNotInstalledError("gemini", "gemini", "google-genai-haystack") from error
    model_name = model or "gemini-2.5-flash"
    generation_kwargs = opts.generation_kwargs()
    if output_schema is not None:
        generation_kwargs["response_mime_type"] = "application/json"
        generation_kwargs["response_json_schema"] = output_schema.json_schema
    generator = GoogleGenAIChatGenerator(
        api_key=env_secret("gemini", *opts.key_variables()),
        model=model_name,
        generation_kwargs=generation_kwargs,
        max_retries=opts.max_retries,
    )
    return BuiltGenerator(generator, "gemini", model_name, structured="native" if output_schema else None)
