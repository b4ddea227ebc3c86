"""How a step run ended, turned into its `Done` and the exception to raise once the Done is delivered.

`conclude` looks the run's `Ending` up in `CASES`, an ordered table of (predicate, builder) pairs: the first case
whose predicate holds builds the Done. The order matters: a handler failure surfaces as the cancellation
(`StreamAbort`) it caused, so it is matched before cancellations, and a dropped connection before the
provider error that wraps it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline_ex.errors import (
    HandlerError,
    ProviderError,
    StepError,
    StepTimeoutError,
    StreamTruncatedError,
    StructuredOutputError,
    ToolRoundsError,
)
from pipeline_ex.events import Done, ErrorInfo, ErrorType, FinishReason, Usage
from pipeline_ex.llm.bridge import StreamAbort, StreamBridge
from pipeline_ex.llm.normalize import map_finish_reason, normalize_usage, raw_finish_reason
from pipeline_ex.llm.policy import StepTimeout, dropped_connection
from pipeline_ex.llm.rounds import ReplyMismatch, RoundLimitReached

CANCELLATIONS = (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, StreamAbort)
"""What stops a step from outside (or a handler's failure stopping its stream): the step is cancelled."""

Concluded = tuple[Done, BaseException | None]


_UNKNOWN: Any = object()
"""`Ending.raw_finish` before it was worked out."""


@dataclass
class Ending:
    """How one step run ended: what `conclude` needs to build its Done.

    :param bridge: the run's bridge: the text delivered, the last chunks, a handler failure, the ids.
    :param reply: the generator's reply (a haystack `ChatMessage`), or None.
    :param computed_usage: usage counted from the reply text, for providers that report none.
    :param error: what stopped the run, or None when the generator returned.
    :param streamed: whether the reply was streamed (else it was delivered as one Delta).
    :param retries: the step's `retries`, to say why a failure after output was not retried.
    :param model_from_reply: report the model name the reply carries (False when it is a file path).
    :param chunks_are_tokens: the provider streams one token per text chunk (llama.cpp), so a stream that
        stops early can still say how many tokens it gave (see `partial_usage`).
    """

    bridge: StreamBridge
    reply: Any
    computed_usage: dict[str, Any] | None
    error: BaseException | None
    streamed: bool
    retries: int = 0
    model_from_reply: bool = True
    chunks_are_tokens: bool = False
    # Worked out on first use. Not `functools.cached_property`, which takes a lock on every access on
    # Python 3.11; an `Ending` belongs to one step run on one thread.
    _reply_meta: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _raw_finish: Any = field(default=_UNKNOWN, init=False, repr=False)

    @property
    def reply_meta(self) -> dict[str, Any]:
        """The reply's metadata (empty without a reply)."""
        meta = self._reply_meta
        if meta is None:
            meta = self._reply_meta = dict(self.reply.meta) if self.reply is not None else {}
        return meta

    @property
    def raw_finish(self) -> str | None:
        """The provider's own finish reason: from the last chunks of a stream, else from the reply."""
        raw = self._raw_finish
        if raw is _UNKNOWN:
            raw = self._raw_finish = raw_finish_reason(self.bridge.tail if self.streamed else (), self.reply_meta)
        result: str | None = raw
        return result

    def reply_fields(self) -> tuple[Usage | None, dict[str, Any], str | None]:
        """The usage, Response meta and model name a returned reply gives its Done."""
        reply_usage = self.reply_meta.get("usage")
        usage = normalize_usage(reply_usage) or normalize_usage(self.computed_usage)
        meta: dict[str, Any] = {}
        if self.computed_usage is not None and not reply_usage:
            meta["usage_source"] = "counted by pipeline_ex"
        model = (self.reply_meta.get("model") or None) if self.model_from_reply else None
        return usage, meta, model


def _qualname(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or "Timeout" in type(error).__name__


ESTIMATED_FROM_CHUNKS = "estimated: one token per streamed chunk"
"""`Response.meta["usage_source"]` of a step that stopped before its provider counted its tokens."""


def partial_usage(ending: Ending) -> tuple[Usage | None, dict[str, Any]]:
    """What is known of the tokens of a stream that stopped early (failed or cancelled).

    Providers report usage at the end of a stream, so a stream stopped before its end has none. The text
    chunks delivered are known, and kept as `meta["streamed_chunks"]`. For a provider whose every chunk
    is one token (`chunks_are_tokens`) they are the output tokens, reported as usage labelled
    `meta["usage_source"] == ESTIMATED_FROM_CHUNKS` (llama.cpp joins the tokens of a character split
    across tokens into one chunk, so the count can fall short). The input tokens stay unknown (None).
    A reply that was not streamed came as one Delta, which says nothing of its tokens.
    """
    chunks = len(ending.bridge.parts)
    if not chunks or not ending.streamed:
        return None, {}
    meta: dict[str, Any] = {"streamed_chunks": chunks}
    if not ending.chunks_are_tokens:
        return None, meta
    meta["usage_source"] = ESTIMATED_FROM_CHUNKS
    return Usage(input_tokens=None, output_tokens=chunks, total_tokens=None), meta


def _failed(ending: Ending, error: ErrorInfo) -> Done:
    usage, meta = partial_usage(ending)
    return ending.bridge.build_done(
        finish_reason="error", usage=usage, meta=meta, streamed=ending.streamed, error=error
    )


def _cancelled(ending: Ending, error: ErrorInfo) -> Done:
    usage, meta = partial_usage(ending)
    return ending.bridge.build_done(
        finish_reason="cancelled", usage=usage, meta=meta, streamed=ending.streamed, error=error
    )


# -- the cases -----------------------------------------------------------------------------------


def _returned_complete(ending: Ending) -> bool:
    return ending.error is None and not (ending.streamed and ending.raw_finish is None)


def _success(ending: Ending) -> Concluded:
    usage, meta, model = ending.reply_fields()
    meta["finish_reason_raw"] = ending.raw_finish
    done = ending.bridge.build_done(
        finish_reason=map_finish_reason(ending.raw_finish),
        usage=usage,
        meta=meta,
        model=model,
        streamed=ending.streamed,
    )
    return done, None


def _returned(ending: Ending) -> bool:
    return ending.error is None


def _truncated(ending: Ending) -> Concluded:
    bridge = ending.bridge
    usage, meta, model = ending.reply_fields()
    done = bridge.build_done(
        finish_reason="error",
        usage=usage,
        meta=meta,
        model=model,
        streamed=ending.streamed,
        error=ErrorInfo(
            type="truncated", message="the provider stream ended without a finish reason; the reply is incomplete"
        ),
    )
    error = StreamTruncatedError(
        f"step {bridge.step!r}: the stream ended without a finish reason (truncated reply)", step=bridge.step, done=done
    )
    return done, error


def _handler_failed(ending: Ending) -> bool:
    return ending.bridge.failure is not None


def _handler_failure(ending: Ending) -> Concluded:
    bridge = ending.bridge
    failure = bridge.failure
    assert failure is not None
    done = _failed(ending, ErrorInfo(type="handler", message=str(failure), exception=_qualname(failure.error)))
    error = HandlerError(f"step {bridge.step!r}: {failure}", step=bridge.step, done=done, handler=failure.handler)
    error.__cause__ = failure.error
    return done, error


def _was_cancelled(ending: Ending) -> bool:
    return isinstance(ending.error, CANCELLATIONS)


def _cancellation(ending: Ending) -> Concluded:
    assert ending.error is not None
    info = ErrorInfo(type="cancelled", message="the step was cancelled", exception=_qualname(ending.error))
    return _cancelled(ending, info), ending.error


def _step_error(ending: Ending, *, kind: ErrorType, error_class: type[StepError], what: str, message: str) -> Concluded:
    """The Done and `StepError` of a provider-side failure (`Exception` raised by the generator)."""
    bridge, error = ending.bridge, ending.error
    assert error is not None
    done = _failed(ending, ErrorInfo(type=kind, message=message, exception=_qualname(error)))
    not_retried = ""
    if ending.retries and bridge.delivered:
        not_retried = f" (not retried: {bridge.delivered} deltas were already delivered)"
    step_error = error_class(
        f"step {bridge.step!r}: {what}: {type(error).__name__}: {error}{not_retried}", step=bridge.step, done=done
    )
    step_error.__cause__ = error
    return done, step_error


def _out_of_rounds(ending: Ending) -> bool:
    return isinstance(ending.error, RoundLimitReached)


def _replies_ended_it(
    ending: Ending, finish_reason: FinishReason, kind: ErrorType, error_class: type[StepError]
) -> Concluded:
    """The model's replies broke a rule of the step (its round limit, its output schema)."""
    bridge, error = ending.bridge, ending.error
    assert error is not None
    usage, meta, model = ending.reply_fields()
    info = ErrorInfo(type=kind, message=str(error))
    done = bridge.build_done(
        finish_reason=finish_reason, usage=usage, meta=meta, model=model, streamed=ending.streamed, error=info
    )
    return done, error_class(f"step {bridge.step!r}: {error}", step=bridge.step, done=done)


def _round_limit(ending: Ending) -> Concluded:
    """The model still called tools after the last round: `tool_calls`, as the model left it."""
    return _replies_ended_it(ending, "tool_calls", "tool_rounds", ToolRoundsError)


def _mismatched(ending: Ending) -> bool:
    return isinstance(ending.error, ReplyMismatch)


def _schema_failure(ending: Ending) -> Concluded:
    return _replies_ended_it(ending, "error", "schema", StructuredOutputError)


def _connection_dropped(ending: Ending) -> bool:
    # the stream had started and the connection broke: a reply cut off mid-body is a truncation
    return (
        isinstance(ending.error, Exception)
        and bool(ending.bridge.tail)
        and dropped_connection(ending.error) is not None
    )


def _dropped_connection(ending: Ending) -> Concluded:
    assert ending.error is not None
    dropped = dropped_connection(ending.error)
    return _step_error(
        ending,
        kind="truncated",
        error_class=StreamTruncatedError,
        what="the provider connection was dropped mid-stream (truncated reply)",
        message=(
            f"the provider connection was dropped mid-stream ({type(dropped).__name__}: {dropped}); "
            "the reply is incomplete"
        ),
    )


def _timed_out(ending: Ending) -> bool:
    return isinstance(ending.error, Exception) and _is_timeout(ending.error)


def _timeout(ending: Ending) -> Concluded:
    error = ending.error
    assert error is not None
    own = isinstance(error, StepTimeout)  # the step's own limit, not a client's timeout
    return _step_error(
        ending,
        kind="timeout",
        error_class=StepTimeoutError if own else ProviderError,
        what="timed out" if own else f"provider {ending.bridge.provider!r} failed",
        message=str(error) or type(error).__name__,
    )


def _provider_failed(ending: Ending) -> bool:
    return isinstance(ending.error, Exception)


def _provider_error(ending: Ending) -> Concluded:
    assert ending.error is not None
    return _step_error(
        ending,
        kind="provider",
        error_class=ProviderError,
        what=f"provider {ending.bridge.provider!r} failed",
        message=str(ending.error) or type(ending.error).__name__,
    )


def _anything(ending: Ending) -> bool:
    return True


def _interrupted(ending: Ending) -> Concluded:
    """Any other `BaseException` (SystemExit, a custom one): the step is cancelled by it."""
    assert ending.error is not None
    info = ErrorInfo(type="cancelled", message=f"interrupted by {type(ending.error).__name__}")
    return _cancelled(ending, info), ending.error


CASES: tuple[tuple[Callable[[Ending], bool], Callable[[Ending], Concluded]], ...] = (
    (_returned_complete, _success),
    (_returned, _truncated),
    (_handler_failed, _handler_failure),
    (_was_cancelled, _cancellation),
    (_out_of_rounds, _round_limit),
    (_mismatched, _schema_failure),
    (_connection_dropped, _dropped_connection),
    (_timed_out, _timeout),
    (_provider_failed, _provider_error),
    (_anything, _interrupted),
)
"""The ways a step run ends, in the order they are tried; the last one always matches."""


def conclude(
    bridge: StreamBridge,
    reply: Any,
    computed_usage: dict[str, Any] | None,
    error: BaseException | None,
    *,
    streamed: bool,
    retries: int = 0,
    model_from_reply: bool = True,
    chunks_are_tokens: bool = False,
) -> Concluded:
    """The Done for how a step run ended, and the exception to raise after delivering it (None on success).

    The arguments are those of `Ending`; the first case of `CASES` that applies builds the result.
    """
    ending = Ending(bridge, reply, computed_usage, error, streamed, retries, model_from_reply, chunks_are_tokens)
    for applies, build in CASES:
        if applies(ending):
            return build(ending)
    raise AssertionError("the last case matches every ending")  # pragma: no cover
