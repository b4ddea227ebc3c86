"""The `local` provider: the embedded SmolLM2 model through `LlamaCppChatGenerator`.

An output schema becomes llama.cpp's JSON-schema grammar: `generation_kwargs["response_format"] =
{"type": "json_object", "schema": ...}` reaches `Llama.create_chat_completion`, whose chat handler turns
it into a grammar that constrains every sampled token. llama-cpp-python silently falls back to a plain
JSON grammar when it cannot convert a schema, so the conversion is tried here first: a schema it cannot
convert gets the plain JSON grammar plus instructions, and says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, parse_options

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


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


def grammar_format(output_schema: OutputSchema) -> tuple[dict[str, Any], Literal["native", "instructions"]]:
    """The llama.cpp `response_format` for a schema, and whether the grammar enforces the schema itself."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        json_schema_to_gbnf(json.dumps(output_schema.json_schema))
    except Exception:  # the converter raises bare exceptions for keywords it does not support
        return {"type": "json_object"}, "instructions"
    return {"type": "json_object", "schema": output_schema.json_schema}, "native"


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
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
    structured: Literal["native", "instructions"] | None = None
    if output_schema is not None:
        generation_kwargs["response_format"], structured = grammar_format(output_schema)
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
        chunks_are_tokens=True,  # create_completion yields each sampled token as it is decoded
        structured=structured,
    )
