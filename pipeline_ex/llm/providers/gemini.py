"""The `gemini` provider: `GoogleGenAIChatGenerator` from google-genai-haystack (Gemini Developer API).

The google-genai SDK reads `GOOGLE_GEMINI_BASE_URL` to talk to another endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline_ex.errors import ProviderNotInstalledError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, env_secret, parse_options


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


def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    """Build a `GoogleGenAIChatGenerator` for one step run."""
    opts: GeminiOptions = parse_options(GeminiOptions, "gemini", options)
    try:
        from haystack_integrations.components.generators.google_genai import GoogleGenAIChatGenerator
    except ModuleNotFoundError as error:
        raise ProviderNotInstalledError("gemini", "gemini", "google-genai-haystack") from error
    model_name = model or "gemini-2.5-flash"
    generator = GoogleGenAIChatGenerator(
        api_key=env_secret("gemini", *opts.key_variables()),
        model=model_name,
        generation_kwargs=opts.generation_kwargs(),
        max_retries=opts.max_retries,
    )
    return BuiltGenerator(generator, "gemini", model_name)
