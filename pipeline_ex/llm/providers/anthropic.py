"""The `anthropic` provider (alias `claude`): `AnthropicChatGenerator` from anthropic-haystack.

The Anthropic SDK reads `ANTHROPIC_BASE_URL` to talk to another endpoint (a proxy or a test server).

An output schema is asked for with instructions, not by forcing a tool call: a forced tool would stream
the JSON as tool-call arguments rather than as the reply text the step parses and shows as it grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from pipeline_ex.errors import ProviderNotInstalledError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, env_secret, parse_options

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


class AnthropicOptions(GenerationOptions):
    """Options of the `anthropic` provider."""

    max_tokens: int | None = 1024
    """Anthropic requires a limit on every request."""
    api_key_env: str = "ANTHROPIC_API_KEY"
    max_retries: int | None = None

    @field_validator("seed")
    @classmethod
    def _no_seed(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("Anthropic's API has no seed; remove it")
        return value

    @field_validator("temperature", "top_p")
    @classmethod
    def _not_in_this_sdk(cls, value: float | None) -> float | None:
        # anthropic 2.x `messages.create` takes neither, and anthropic-haystack drops `extra_body`, so the
        # value could only fail the request later; say so now.
        if value is not None:
            raise ValueError("the installed anthropic SDK's messages.create does not take it; remove it")
        return value

    def key_variables(self) -> tuple[str, ...]:
        """The environment variables the key may come from."""
        return (self.api_key_env,)

    def generation_kwargs(self) -> dict[str, Any]:
        """Anthropic names the stop list `stop_sequences`."""
        kwargs = super().generation_kwargs()
        if "stop" in kwargs:
            kwargs["stop_sequences"] = kwargs.pop("stop")
        return kwargs


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """Build an `AnthropicChatGenerator` for one step run (an `output_schema` is left to instructions)."""
    opts: AnthropicOptions = parse_options(AnthropicOptions, "anthropic", options)
    try:
        from haystack_integrations.components.generators.anthropic import AnthropicChatGenerator
    except ModuleNotFoundError as error:
        raise ProviderNotInstalledError("anthropic", "anthropic", "anthropic-haystack") from error
    model_name = model or "claude-haiku-4-5"
    generator = AnthropicChatGenerator(
        api_key=env_secret("anthropic", opts.api_key_env),
        model=model_name,
        generation_kwargs=opts.generation_kwargs(),
        max_retries=opts.max_retries,
    )
    return BuiltGenerator(generator, "anthropic", model_name, structured="instructions" if output_schema else None)
