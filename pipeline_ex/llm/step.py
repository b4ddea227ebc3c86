"""The LLM step: `invoke` and `ainvoke` run one prompt on a provider and stream its events.

Every call ends with exactly one `Done`, delivered to every handler: on success, on a provider error
(with the partial text), on a stream that ends without a finish reason ("truncated"), on a handler
error and on cancellation. After a failed step's Done is delivered, the exception is raised.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from pipeline_ex.context import Context
from pipeline_ex.debug import debug_logger
from pipeline_ex.errors import (
    HandlerError,
    PipelineError,
    ProviderError,
    StepError,
    StepTimeoutError,
    StreamTruncatedError,
)
from pipeline_ex.events import Delta, Done, ErrorInfo, ErrorType, Response
from pipeline_ex.llm.bridge import HybridPump, StreamAbort, StreamBridge, in_daemon_thread
from pipeline_ex.llm.interrupts import interrupt_gate
from pipeline_ex.llm.normalize import map_finish_reason, normalize_usage, raw_finish_reason
from pipeline_ex.llm.policy import StepPolicy, StepTimeout, dropped_connection, rejects_streaming, retry_delay
from pipeline_ex.llm.providers import BuiltGenerator, MockOptions, build_generator, check_provider
from pipeline_ex.llm.supervise import run_with_limits
from pipeline_ex.modes.session import LiveCallBlocked
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.streaming.ambient import ambient_handlers
from pipeline_ex.streaming.dispatch import Dispatcher, HandlerFailure
from pipeline_ex.streaming.resolve import HandlerSpec, resolve_handler

logger = redacting_logger("pipeline_ex")

_CANCELLATIONS = (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, StreamAbort)
_sync_callback_only: set[type] = set()
"""Generator classes whose `run_async` turned out to accept only sync callbacks (hybrid from then on)."""


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step: the final `Done` and, through it, the full text and response."""

    done: Done

    @property
    def text(self) -> str:
        """The model's full text (all text deltas joined)."""
        return self.done.response.text

    @property
    def response(self) -> Response:
        """The final response: text, model, provider, finish reason, usage and metadata."""
        return self.done.response


def _handler_specs(on_event: Any, ctx: Context) -> list[HandlerSpec]:
    refs: list[Any] = []
    if on_event is not None:
        is_many = isinstance(on_event, Sequence) and not isinstance(on_event, str)
        refs.extend(on_event if is_many else [on_event])
    refs.extend(ctx.handlers)
    refs.extend(ambient_handlers())
    return [ref if isinstance(ref, HandlerSpec) else resolve_handler(ref) for ref in refs]


_streaming_classes: dict[type, bool] = {}


def _can_stream(generator_class: type) -> bool:
    """Whether a generator class's `run` takes a `streaming_callback` (decided once per class)."""
    known = _streaming_classes.get(generator_class)
    if known is None:
        run = getattr(generator_class, "run")  # noqa: B009 - a class attribute of an arbitrary component
        known = _streaming_classes[generator_class] = "streaming_callback" in inspect.signature(run).parameters
    return known


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or "Timeout" in type(error).__name__


def _qualname(error: BaseException) -> str:
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def conversation(system: str | None, prompt: str) -> list[tuple[str, str]]:
    """The messages a step sends, as (role, text) pairs: what the model is asked, and what a cassette records."""
    return ([("system", system)] if system else []) + [("user", prompt)]


class _StepRun:
    """One execution of an LLM step: the generator, the handlers, and the bridge between them."""

    def __init__(
        self,
        ctx: Context,
        *,
        step: str,
        prompt: str,
        system: str | None,
        built: BuiltGenerator,
        handlers: list[HandlerSpec],
        stream: bool,
        policy: StepPolicy,
    ) -> None:
        from haystack.dataclasses import ChatMessage

        self.built = built
        self.policy = policy
        as_message = {"system": ChatMessage.from_system, "user": ChatMessage.from_user}
        self.messages = [as_message[role](text) for role, text in conversation(system, prompt)]
        self.dispatcher = Dispatcher([spec.bind() for spec in handlers], on_error=policy.on_handler_error)
        can_stream = _can_stream(type(built.generator))
        if stream and not can_stream:
            logger.warning(
                "step %r: model %r (%s) cannot stream; making one call and emitting its reply as one Delta",
                step,
                built.model,
                type(built.generator).__name__,
            )
        self.streaming = stream and can_stream
        self.bridge = StreamBridge(
            step=step,
            run_id=ctx.run_id,
            next_seq=ctx.seq_source,
            provider=built.provider,
            model=built.model,
            dispatcher=self.dispatcher,
            debug_log=debug_logger() if ctx.debug else None,
            track_chunks=policy.chunk_timeout is not None,
        )

    # -- calling the generator -------------------------------------------------------------------

    def _run_generator(self, callback: Any) -> tuple[Any, dict[str, Any] | None]:
        """Call the generator's sync `run` (under its lock); return the reply and computed usage."""
        built = self.built
        kwargs: dict[str, Any] = {"messages": self.messages, "generation_kwargs": dict(built.generation_kwargs)}
        if not self.streaming:
            kwargs["generation_kwargs"].pop("stream_options", None)
        elif callback is not None:
            kwargs["streaming_callback"] = callback
        with built.lock or nullcontext():
            replies = built.generator.run(**kwargs)["replies"]
            reply = replies[0] if replies else None
            usage = None
            if built.count_usage is not None and reply is not None:
                usage = built.count_usage(reply.text or "")
        return reply, usage

    async def _run_generator_async(self) -> tuple[Any, dict[str, Any] | None]:
        built = self.built
        generator = built.generator
        hybrid = built.async_mode == "hybrid" or type(generator) in _sync_callback_only
        if not hybrid and not inspect.iscoroutinefunction(getattr(generator, "run_async", None)):
            hybrid = True
        if hybrid:
            loop = asyncio.get_running_loop()
            if not self.streaming:
                result_: tuple[Any, dict[str, Any] | None] = await in_daemon_thread(
                    loop, lambda: self._run_generator(None), finish_before_exit=self.built.finish_before_exit
                )
                return result_
            pump = HybridPump(self.bridge, loop, finish_before_exit=self.built.finish_before_exit)
            result: tuple[Any, dict[str, Any] | None] = await pump.run(lambda: self._run_generator(pump.on_chunk))
            return result
        kwargs: dict[str, Any] = {"messages": self.messages, "generation_kwargs": dict(built.generation_kwargs)}
        if self.streaming:
            kwargs["streaming_callback"] = self.bridge.on_chunk_async
        else:
            kwargs["generation_kwargs"].pop("stream_options", None)
        try:
            replies = (await generator.run_async(**kwargs))["replies"]
        except ValueError as error:
            if "coroutine" not in str(error) or self.bridge.parts or not self.streaming:
                raise
            # The generator's run_async hands the callback to its sync run (llama-cpp-haystack does):
            # nothing was generated yet, so run it as hybrid, now and from now on.
            _sync_callback_only.add(type(generator))
            return await self._run_generator_async()
        return (replies[0] if replies else None), None

    # -- concluding ------------------------------------------------------------------------------

    def _unstreamed_delta(self, reply: Any) -> Delta | None:
        text = reply.text if reply is not None else None
        return self.bridge.make_delta(text) if text else None

    def _conclude(
        self, reply: Any, computed_usage: dict[str, Any] | None, error: BaseException | None
    ) -> tuple[Done, BaseException | None]:
        """Build the Done for how the run ended, and the exception to raise after delivering it."""
        bridge = self.bridge
        meta: dict[str, Any] = {}
        streamed = self.streaming
        if error is None:
            reply_meta = dict(reply.meta) if reply is not None else {}
            raw_finish = raw_finish_reason(bridge.tail if streamed else (), reply_meta)
            usage = normalize_usage(reply_meta.get("usage")) or normalize_usage(computed_usage)
            if computed_usage is not None and not reply_meta.get("usage"):
                meta["usage_source"] = "counted by pipeline_ex"
            model = (reply_meta.get("model") or None) if self.built.model_from_reply else None
            if streamed and raw_finish is None:
                done = bridge.build_done(
                    finish_reason="error",
                    usage=usage,
                    meta=meta,
                    model=model,
                    streamed=streamed,
                    error=ErrorInfo(
                        type="truncated",
                        message="the provider stream ended without a finish reason; the reply is incomplete",
                    ),
                )
                return done, StreamTruncatedError(
                    f"step {bridge.step!r}: the stream ended without a finish reason (truncated reply)",
                    step=bridge.step,
                    done=done,
                )
            meta["finish_reason_raw"] = raw_finish
            done = bridge.build_done(
                finish_reason=map_finish_reason(raw_finish), usage=usage, meta=meta, model=model, streamed=streamed
            )
            return done, None
        if bridge.failure is not None:
            failure = bridge.failure
            done = bridge.build_done(
                finish_reason="error",
                usage=None,
                meta=meta,
                streamed=streamed,
                error=ErrorInfo(type="handler", message=str(failure), exception=_qualname(failure.error)),
            )
            err = HandlerError(f"step {bridge.step!r}: {failure}", step=bridge.step, done=done, handler=failure.handler)
            err.__cause__ = failure.error
            return done, err
        if isinstance(error, _CANCELLATIONS):
            done = bridge.build_done(
                finish_reason="cancelled",
                usage=None,
                meta=meta,
                streamed=streamed,
                error=ErrorInfo(type="cancelled", message="the step was cancelled", exception=_qualname(error)),
            )
            return done, error
        if isinstance(error, Exception):
            kind: ErrorType
            error_class: type[StepError]
            # the stream had started and the connection broke: a reply cut off mid-body is a truncation
            dropped = dropped_connection(error) if bridge.tail else None
            if dropped is not None:
                kind, error_class = "truncated", StreamTruncatedError
                what = "the provider connection was dropped mid-stream (truncated reply)"
                message = (
                    f"the provider connection was dropped mid-stream ({type(dropped).__name__}: {dropped}); "
                    "the reply is incomplete"
                )
            else:
                kind = "timeout" if _is_timeout(error) else "provider"
                error_class = StepTimeoutError if isinstance(error, StepTimeout) else ProviderError
                what = "timed out" if isinstance(error, StepTimeout) else f"provider {bridge.provider!r} failed"
                message = str(error) or type(error).__name__
            done = bridge.build_done(
                finish_reason="error",
                usage=None,
                meta=meta,
                streamed=streamed,
                error=ErrorInfo(type=kind, message=message, exception=_qualname(error)),
            )
            not_retried = ""
            if self.policy.retries and bridge.delivered:
                not_retried = f" (not retried: {bridge.delivered} deltas were already delivered)"
            step_error = error_class(
                f"step {bridge.step!r}: {what}: {type(error).__name__}: {error}{not_retried}",
                step=bridge.step,
                done=done,
            )
            step_error.__cause__ = error
            return done, step_error
        done = bridge.build_done(
            finish_reason="cancelled",
            usage=None,
            meta=meta,
            streamed=streamed,
            error=ErrorInfo(type="cancelled", message=f"interrupted by {type(error).__name__}"),
        )
        return done, error

    def _finish(self, done: Done, error: BaseException | None, late: HandlerFailure | None) -> StepResult:
        if error is None and late is not None:
            error = HandlerError(
                f"step {done.step!r}: {late} (while receiving Done)", step=done.step, done=done, handler=late.handler
            )
            error.__cause__ = late.error
        if error is not None:
            raise error
        return StepResult(done)

    # -- the two entry points --------------------------------------------------------------------

    def _next_attempt(self, error: BaseException, attempt: int) -> Literal["fallback", "retry"] | None:
        """Whether to try again after `error`: without streaming, as a retry, or not at all."""
        bridge = self.bridge
        if not isinstance(error, Exception) or bridge.failure is not None or bridge.delivered:
            return None  # cancelled, a handler failed, or output was delivered: a retry would repeat it
        if self.streaming and rejects_streaming(error):
            logger.warning(
                "step %r: model %r rejected streaming (%s); making one call and emitting its reply as one Delta",
                bridge.step,
                self.built.model,
                error,
            )
            self.streaming = False
            return "fallback"
        deadline = None if self.policy.timeout is None else bridge.started + self.policy.timeout
        out_of_time = deadline is not None and time.perf_counter() + retry_delay(attempt) >= deadline
        if attempt > self.policy.retries or out_of_time:
            return None
        logger.warning(
            "step %r: attempt %d of %d failed before any output (%s: %s); retrying",
            bridge.step,
            attempt,
            self.policy.retries + 1,
            type(error).__name__,
            error,
        )
        return "retry"

    def execute(self) -> StepResult:
        """Run the step synchronously on the calling thread.

        On the main thread, Ctrl-C interrupts only the provider call and the pause between retries; at
        any other moment (a fan-out, the step's conclusion, the delivery of its Done) it is held back
        until every handler has what it is being given (see `interrupts`).
        """
        with interrupt_gate() as gate:
            opened = nullcontext if gate is None else gate.opened
            if gate is not None:
                self.bridge.use_gate(gate)
            reply: Any = None
            usage: dict[str, Any] | None = None
            error: BaseException | None = None
            attempt = 0
            while True:
                attempt += 1
                try:
                    with opened():
                        reply, usage = self._run_generator(self.bridge.on_chunk if self.streaming else None)
                    if not self.streaming and (delta := self._unstreamed_delta(reply)) is not None:
                        self.bridge.deliver(delta)
                    error = None
                except BaseException as caught:
                    error = caught
                    decision = self._next_attempt(caught, attempt)
                    if decision is not None:
                        if decision == "retry":
                            try:
                                with opened():
                                    time.sleep(retry_delay(attempt))
                            except BaseException as stop:  # interrupted during the pause
                                error = stop
                                break
                        continue
                break
            try:
                self.built.close()
            except Exception:
                logger.exception("closing the %s generator failed", self.built.provider)
            done, to_raise = self._conclude(reply, usage, error)
            if self.bridge.debug_log is not None:
                self.bridge.debug_log.debug("event", **done.model_dump(mode="json"))
            late = self.dispatcher.emit_done(done)
        return self._finish(done, to_raise, late)

    async def _attempt_async(self) -> tuple[Any, dict[str, Any] | None]:
        if not self.policy.has_limits:
            return await self._run_generator_async()
        bridge = self.bridge
        bridge.last_chunk_at = None
        return await run_with_limits(
            self._run_generator_async(),
            self.policy,
            started=bridge.started,
            attempt_started=time.perf_counter(),
            last_chunk=lambda: bridge.last_chunk_at,
        )

    async def aexecute(self) -> StepResult:
        """Run the step on the running event loop (natively async, or hybrid for sync-only generators).

        A cancellation may land at any `await`: in the generator, in an async handler, in the pause
        between retries or while the generator's clients close. Whichever it is, every handler still
        gets the Done, and the cancellation is raised afterwards.
        """
        reply: Any = None
        usage: dict[str, Any] | None = None
        error: BaseException | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                reply, usage = await self._attempt_async()
                if not self.streaming and (delta := self._unstreamed_delta(reply)) is not None:
                    await self.bridge.adeliver(delta)
                error = None
            except BaseException as caught:
                error = caught
                decision = self._next_attempt(caught, attempt)
                if decision is not None:
                    if decision == "retry":
                        try:
                            await asyncio.sleep(retry_delay(attempt))
                        except BaseException as stop:  # cancelled during the pause
                            error = stop
                            break
                    continue
            break
        late_cancel: BaseException | None = None
        try:
            await self.built.aclose()
        except Exception:
            logger.exception("closing the %s generator failed", self.built.provider)
        except BaseException as stop:  # cancelled while the clients closed: the Done still goes out
            if error is None:
                error = stop
            elif not isinstance(error, _CANCELLATIONS):
                late_cancel = stop
        done, to_raise = self._conclude(reply, usage, error)
        if self.bridge.debug_log is not None:
            self.bridge.debug_log.debug("event", **done.model_dump(mode="json"))
        late = await self.dispatcher.aemit_done(done)
        if late_cancel is not None:
            raise late_cancel
        return self._finish(done, to_raise, late)


_MOCK_KEYS = frozenset(MockOptions.model_fields)


def _select_generator(
    ctx: Context,
    step: str,
    prompt: str,
    provider: str | None,
    model: str | None,
    options: dict[str, Any],
    handlers: list[HandlerSpec],
    system: str | None = None,
    mock_response: str | list[str] | None = None,
) -> BuiltGenerator:
    """Build the step's generator as the run's test mode says: live, mock, record or replay.

    Record and replay identify the step's request by its step path, messages, model and options: a
    recording is saved with its request, and replays only for the same one.
    """
    session = ctx.test_session()
    request = None
    if session.mode in ("record", "replay"):
        from pipeline_ex.modes.request import StepRequest

        messages = conversation(system, prompt)
        request = StepRequest.of(step, provider=provider, model=model, messages=messages, options=options)
    if session.mode == "replay":
        from pipeline_ex.modes.cassette_generator import CassetteChatGenerator

        assert session.cassette is not None and request is not None
        recording = session.cassette.next_recording(request)
        response = recording.done.response
        return BuiltGenerator(CassetteChatGenerator(recording, session.replay_speed), response.provider, response.model)
    if session.mode == "mock" or session.mock_steps or provider == "mock":
        mock_options = {k: v for k, v in options.items() if k in _MOCK_KEYS}
        if mock_response is not None:
            mock_options["mock_response"] = mock_response
        scripted = session.script.pick(prompt) if session.script is not None else None
        if scripted is not None:
            mock_options.update(scripted.provider_options())
        built = build_generator("mock", model, mock_options)
    elif not session.live_allowed:
        name = check_provider(provider, options)  # a misspelt provider or option is the more useful error
        raise LiveCallBlocked(
            f"{session.label or 'this test'} tried a real call to provider {name!r} "
            f"(step {step!r}); allow it with @pytest.mark.live or pytest --pipeline-live, "
            "or script the reply with the llm_mock fixture"
        )
    else:
        built = build_generator(provider, model, options)
    if session.mode == "record":
        assert session.cassette is not None and request is not None
        handlers.append(resolve_handler(session.cassette.recorder(request)))
    return built


def _prepare(
    ctx: Context | None,
    *,
    prompt: str,
    provider: str | None,
    model: str | None,
    system: str | None,
    stream: bool,
    on_event: Any,
    step: str,
    options: Mapping[str, Any],
) -> _StepRun:
    ctx = ctx if ctx is not None else Context()
    defaults = ctx.defaults
    provider_name = provider or defaults.get("provider")
    merged: dict[str, Any] = {}
    if provider is None or provider == defaults.get("provider"):
        merged.update(defaults.get("options") or {})
    merged.update(options)
    policy = StepPolicy.take_from(merged)
    mock_response = merged.pop("mock_response", None)  # the reply a mock run gives; never sent to a provider
    handlers = _handler_specs(on_event, ctx)
    system = system if system is not None else defaults.get("system")
    built = _select_generator(
        ctx,
        step,
        prompt,
        provider_name,
        model or defaults.get("model"),
        merged,
        handlers,
        system=system,
        mock_response=mock_response,
    )
    return _StepRun(
        ctx,
        step=step,
        prompt=prompt,
        system=system,
        built=built,
        handlers=handlers,
        stream=stream,
        policy=policy,
    )


def invoke(
    ctx: Context | None = None,
    *,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    system: str | None = None,
    stream: bool = True,
    on_event: Any = None,
    step: str = "llm",
    **options: Any,
) -> StepResult:
    """Run one LLM step and stream its events to `on_event`; return the `StepResult`.

    :param ctx: the run's `Context` (run id, defaults, run-wide handlers), or None for a fresh one.
    :param prompt: the user prompt.
    :param provider: "local" (the default), "openai" or "mock"; falls back to `ctx.defaults["provider"]`.
    :param model: the model name; falls back to `ctx.defaults["model"]`, then the provider's default.
    :param system: an optional system prompt.
    :param stream: stream deltas as they arrive; with False, one call is made and its reply is
        delivered as one Delta, then `Done(streamed=False)`.
    :param on_event: a handler reference or a list of them (a function, a class, a module, an object with
        `handle_event`, a short name such as "console", or a dotted path).
    :param step: the step id carried by every event.
    :param options: provider options such as `api_base_url`, `temperature` or `max_tokens`, and the step
        options `timeout`, `chunk_timeout`, `retries` and `on_handler_error` (see `StepPolicy`).
    :raises StepError: after the Done was delivered, when the step failed (`ProviderError`,
        `StreamTruncatedError`, `HandlerError`). Cancellation (KeyboardInterrupt) is re-raised as is.
    """
    run = _prepare(
        ctx,
        prompt=prompt,
        provider=provider,
        model=model,
        system=system,
        stream=stream,
        on_event=on_event,
        step=step,
        options=options,
    )
    if run.dispatcher.is_async or run.policy.has_limits:  # both need an event loop
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run.aexecute())
        reason = "an async handler" if run.dispatcher.is_async else "a timeout"
        raise PipelineError(
            f"step {step!r} has {reason} but invoke() was called inside a running event loop; "
            "use 'await ainvoke(...)' there"
        )
    return run.execute()


async def ainvoke(
    ctx: Context | None = None,
    *,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    system: str | None = None,
    stream: bool = True,
    on_event: Any = None,
    step: str = "llm",
    **options: Any,
) -> StepResult:
    """Async twin of `invoke`: native async for generators with `run_async`, hybrid for sync-only ones.

    A sync-only generator (no usable `run_async`) is detected automatically and run in a worker thread
    while its events are delivered on the event loop. Cancelling the awaiting task stops the provider
    stream, delivers `Done(finish_reason="cancelled")` and re-raises `CancelledError`.
    """
    run = _prepare(
        ctx,
        prompt=prompt,
        provider=provider,
        model=model,
        system=system,
        stream=stream,
        on_event=on_event,
        step=step,
        options=options,
    )
    return await run.aexecute()


__all__ = ["StepError", "StepResult", "ainvoke", "invoke"]
