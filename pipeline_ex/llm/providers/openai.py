"""The `openai` provider: haystack's `OpenAIChatGenerator`, for OpenAI and any compatible server."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipeline_ex.llm.providers.base import (
    BuiltGenerator,
    GenerationOptions,
    env_secret,
    is_loopback,
    parse_options,
    shared_ssl_context,
)
from pipeline_ex.redaction import register_secret_env


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


def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    """Build an `OpenAIChatGenerator` for one step run."""
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
    model_name = model or "gpt-4o-mini"
    generator = OpenAIChatGenerator(
        api_key=api_key,
        model=model_name,
        api_base_url=opts.api_base_url,
        organization=opts.organization,
        max_retries=opts.max_retries,
        http_client_kwargs={"verify": shared_ssl_context()},
    )
    return BuiltGenerator(generator, "openai", model_name, generation_kwargs)
