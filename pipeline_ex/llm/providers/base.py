"""What every provider shares: the built generator, option models, option parsing and API keys."""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.options import SamplingFields
from pipeline_ex.option_errors import describe_option_errors
from pipeline_ex.redaction import register_secret_env

AsyncMode = Literal["native", "hybrid"]
Builder = Callable[[str | None, Mapping[str, Any]], "BuiltGenerator"]


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
    finish_before_exit: bool = False
    """Its calls run native code that must not be torn down mid-call: the interpreter waits for them."""
    chunks_are_tokens: bool = False
    """Every streamed text chunk is one token (llama.cpp): a stream that stops early counts its tokens."""
    structured: Literal["native", "instructions"] | None = None
    """How a step built with an output schema gets JSON: "native" when the provider enforces the schema
    itself; "instructions" when the step must add `structured.instructions(...)` to the system prompt and
    rely on validation; None when the step has no output schema."""

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


class ProviderOptions(BaseModel):
    """Base of every provider's options model: unknown options are errors."""

    model_config = ConfigDict(extra="forbid")


class GenerationOptions(ProviderOptions, SamplingFields):
    """Provider options with the shared sampling fields (declared once, in `SamplingFields`)."""

    def generation_kwargs(self) -> dict[str, Any]:
        """The sampling options that were set, as haystack `generation_kwargs`."""
        return {k: v for k, v in self.model_dump(include=set(SamplingFields.model_fields)).items() if v is not None}


def parse_options(options_model: type[ProviderOptions], provider: str, options: Mapping[str, Any]) -> Any:
    """Validate a provider's options; the error names each bad option and the ones it accepts."""
    try:
        return options_model.model_validate(dict(options))
    except ValidationError as error:
        known = sorted(options_model.model_fields)
        problems = describe_option_errors(error, known)
        raise ProviderConfigError(
            f"provider {provider!r}: " + "; ".join(problems) + f"; options it accepts: {', '.join(known)}"
        ) from None


def is_loopback(url: str | None) -> bool:
    """Whether a URL points at this machine (local servers need no API key)."""
    host = urlparse(url).hostname if url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every HTTP client a provider builds.

    Building it loads the CA bundle, which takes about 20 ms; sharing it makes building a generator for
    each step run cheap. An `SSLContext` may be shared between clients and threads.
    """
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def missing_key_error(provider: str, variables: tuple[str, ...]) -> ProviderConfigError:
    """The error for a provider whose API key variable is not set."""
    names = " or ".join(variables)
    return ProviderConfigError(f"provider {provider!r} needs an API key: set the {names} environment variable")


def env_secret(provider: str, *variables: str) -> Any:
    """A haystack `Secret` reading the first of `variables` that is set; an error naming them if none is."""
    from haystack.utils import Secret

    register_secret_env(*variables)
    present = [v for v in variables if os.environ.get(v)]
    if not present:
        raise missing_key_error(provider, variables)
    return Secret.from_env_var(present[0])
