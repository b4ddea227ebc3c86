"""The `mock` provider: a scripted generator with no network, for tests and `--mock` runs.

With an output schema and no scripted reply, the mock replies with `structured.example_value` of the
schema as JSON text, so a structured step runs unchanged on the mock.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pipeline_ex.llm.providers.base import BuiltGenerator, GenerationOptions, ProviderOptions, parse_options

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema


class MockToolCall(ProviderOptions):
    """A tool call the mock model makes: the tool's name and its arguments."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    """The call's id; by default `call_<round>_<position>`."""


class MockReply(ProviderOptions):
    """A scripted reply that calls tools first: each round of `tool_calls`, then the final `text`.

    `tool_calls` is one round of calls (made side by side), or a list of rounds. After the last round the
    model replies with `text` (word by word, or the exact chunks of a list).
    """

    tool_calls: list[MockToolCall] | list[list[MockToolCall]] = Field(default_factory=list)
    text: str | list[str] | None = None


class MockOptions(GenerationOptions):
    """Options of the `mock` provider.

    The sampling options are accepted so a step written for a real provider runs unchanged on the mock;
    they have no effect on the scripted reply.
    """

    mock_response: str | list[str] | MockReply | None = None
    delay_ms: float = 0
    error_after: int | None = None
    usage: Literal["words"] | dict[str, int] | None = "words"
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None = "stop"

    def key_variables(self) -> tuple[str, ...]:
        """No API key."""
        return ()


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """The `ScriptedChatGenerator` for one step run: shared by the runs with the same model and options.

    Creating a haystack component reads the signatures of its `run` methods (about 250 µs), more than
    a short mock run costs otherwise. A `ScriptedChatGenerator` keeps no state across calls (what it
    streams depends only on its settings and the messages of each call), so one instance serves every
    run with equal options, on any thread and loop.
    """
    opts: MockOptions = parse_options(MockOptions, "mock", options)
    derived = None
    if opts.mock_response is None and output_schema is not None:
        from pipeline_ex.llm.structured import example_value

        derived = json.dumps(example_value(output_schema), ensure_ascii=False)
    generator = _shared_generator(model or "mock", opts.model_dump_json(), derived)
    return BuiltGenerator(
        generator, "mock", model or "mock", structured="native" if output_schema else None, owned=False
    )


@functools.lru_cache(maxsize=256)
def _shared_generator(model: str, options_json: str, derived_reply: str | None) -> Any:
    """One generator per model, options and reply derived from an output schema, kept in an LRU cache."""
    from pipeline_ex.modes.mock_generator import ScriptedChatGenerator

    opts = MockOptions.model_validate_json(options_json)
    return ScriptedChatGenerator(
        derived_reply if derived_reply is not None else opts.mock_response,
        model=model,
        delay_ms=opts.delay_ms,
        error_after=opts.error_after,
        usage=opts.usage,
        finish_reason=opts.finish_reason,
        yield_to_loop=True,  # a mock run streams like a network stream, so leaving early stops it
    )
