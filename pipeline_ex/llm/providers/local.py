"""The `local` provider: the embedded SmolLM2 model through `LlamaCppChatGenerator`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, parse_options


class LocalOptions(GenerationOptions):
    """Options of the embedded `local` provider (llama.cpp)."""

    max_tokens: int | None = 256
    model_path: str | None = None
    n_ctx: int = 2048
    top_k: int | None = None
    repeat_penalty: float | None = 1.1
    """A little repetition penalty keeps the 135M model from looping."""

    def key_variables(self) -> tuple[str, ...]:
        """No API key: the model runs in this process."""
        return ()


def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
    """Return the shared llama.cpp generator (the model loads once per process)."""
    from pipeline_ex.llm.local_model import DEFAULT_MODEL, count_local_usage, load_local_model

    opts: LocalOptions = parse_options(LocalOptions, "local", options)
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
        finish_before_exit=True,  # llama.cpp computes on the worker thread with the shared model
    )
