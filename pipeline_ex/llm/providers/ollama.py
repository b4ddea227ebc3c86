"""The `ollama` provider: `OllamaChatGenerator` from ollama-haystack, for a running Ollama server.

An output schema goes to the generator's `response_format`, which it sends as Ollama's `format`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline_ex.errors import ProviderNotInstalledError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, parse_options

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


class OllamaOptions(GenerationOptions):
    """Options of the `ollama` provider. Ollama needs no API key."""

    api_base_url: str = "http://localhost:11434"
    keep_alive: float | str | None = None
    think: bool = False

    def generation_kwargs(self) -> dict[str, Any]:
        """Ollama names the token limit `num_predict`."""
        kwargs = super().generation_kwargs()
        if "max_tokens" in kwargs:
            kwargs["num_predict"] = kwargs.pop("max_tokens")
        return kwargs


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """Build an `OllamaChatGenerator` for one step run (asking for `output_schema` if given)."""
    opts: OllamaOptions = parse_options(OllamaOptions, "ollama", options)
    try:
        from haystack_integrations.components.generators.ollama import OllamaChatGenerator
    except ModuleNotFoundError as error:
        raise ProviderNotInstalledError("ollama", "ollama", "ollama-haystack") from error
    model_name = model or "qwen3:0.6b"
    generator = OllamaChatGenerator(
        model=model_name,
        url=opts.api_base_url,
        generation_kwargs=opts.generation_kwargs(),
        keep_alive=opts.keep_alive,
        think=opts.think,
        response_format=output_schema.json_schema if output_schema is not None else None,
    )
    return BuiltGenerator(generator, "ollama", model_name, structured="native" if output_schema else None)
