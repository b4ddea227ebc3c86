"""Map provider usage and finish reasons onto pipeline_ex's `Usage` and `FinishReason`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pipeline_ex.events import FinishReason, Usage

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "model_context_window_exceeded": "length",
    "content_filter": "content_filter",
    "safety": "content_filter",
    "recitation": "content_filter",
    "refusal": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "tool_call_results": "tool_calls",
}

# (input, output, total) key names, in the order they are tried.
_USAGE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("prompt_tokens", "completion_tokens", "total_tokens"),  # OpenAI chat, llama.cpp
    ("input_tokens", "output_tokens", "total_tokens"),  # Anthropic, OpenAI Responses
    ("prompt_eval_count", "eval_count", "total_tokens"),  # Ollama
    ("prompt_token_count", "candidates_token_count", "total_token_count"),  # Gemini
)


class _Chunk(Protocol):
    meta: dict[str, Any]
    finish_reason: Any


def raw_finish_reason(last_chunks: Iterable[_Chunk], reply_meta: Mapping[str, Any]) -> str | None:
    """The provider's own finish reason, as close to the wire as the integration keeps it.

    haystack maps finish reasons it knows and drops the others, so the raw value is looked up first in
    the metadata the integrations keep on the last chunks: `finish_reason` (OpenAI, llama.cpp),
    `done_reason` (Ollama), `delta.stop_reason` (Anthropic's message_delta); then haystack's mapped
    value; then the reply's metadata. None means the stream ended without one.
    """
    for chunk in reversed(list(last_chunks)):
        meta = chunk.meta
        raw = meta.get("finish_reason") or meta.get("done_reason") or meta.get("stop_reason")
        if raw is None and isinstance(meta.get("delta"), Mapping):
            raw = meta["delta"].get("stop_reason")
        if raw is None:
            raw = chunk.finish_reason
        if raw is not None:
            return str(raw)
    for key in ("stop_reason", "done_reason", "finish_reason"):  # provider-specific keys first
        if reply_meta.get(key) is not None:
            return str(reply_meta[key])
    return None


def map_finish_reason(raw: object) -> FinishReason:
    """Map a provider's finish reason (any case) onto `FinishReason`; unknown values become "other"."""
    if raw is None:
        return "other"
    return _FINISH_REASONS.get(str(raw).lower(), "other")


def _as_count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def normalize_usage(raw: Mapping[str, Any] | None) -> Usage | None:
    """Turn a provider usage mapping into `Usage`, or None when the provider reported no counts.

    Counts that are missing stay None; they are never replaced by zeros, and usage that is all zeros is
    treated as not reported (a real request has input tokens). The total is derived from input and output
    only when the provider gave both and no total.
    """
    if not raw:
        return None
    for input_key, output_key, total_key in _USAGE_KEYS:
        if input_key in raw or output_key in raw:
            input_tokens = _as_count(raw.get(input_key))
            output_tokens = _as_count(raw.get(output_key))
            total_tokens = _as_count(raw.get(total_key))
            break
    else:
        return None
    if not (input_tokens or output_tokens or total_tokens):
        return None  # nothing, or only zeros: some integrations fill zeros when the provider sent no usage
    if total_tokens is None and input_tokens is not None and output_tokens is not None:
        total_tokens = input_tokens + output_tokens
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total_tokens)


def add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """Two usages added up (a step's model calls, a run's steps); a count neither reported stays None.

    A call that reported no usage adds nothing; it is never counted as zero tokens.
    """
    if more is None:
        return total
    if total is None:
        return more

    def plus(a: int | None, b: int | None) -> int | None:
        return None if a is None and b is None else (a or 0) + (b or 0)

    return Usage(
        input_tokens=plus(total.input_tokens, more.input_tokens),
        output_tokens=plus(total.output_tokens, more.output_tokens),
        total_tokens=plus(total.total_tokens, more.total_tokens),
    )
