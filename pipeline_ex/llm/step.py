"""The LLM step: `invoke` and `ainvoke` run one prompt (or conversation) on a provider and stream its events.

Every call ends with exactly one `Done`, delivered to every handler: on success, on a provider error
(with the partial text), on a stream that ends without a finish reason ("truncated"), on a handler
error and on cancellation. After a failed step's Done is delivered, the exception is raised.

`retry.Attempts` decides whether a failed attempt is tried again; `rounds.Conversation` what follows each
reply (a tool round, a repair of a structured reply, or the end); `outcome.conclude` turns how the run
ended into its Done.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from pipeline_ex.context import Context
from pipeline_ex.debug import debug_logger
from pipeline_ex.errors import HandlerError, PipelineError, ProviderConfigError, StepError
from pipeline_ex.events import Delta, Done, Response, ToolCallInfo
from pipeline_ex.llm.bridge import HybridPump, StreamBridge, in_daemon_thread
from pipeline_ex.llm.interrupts import interrupt_gate
from pipeline_ex.llm.messages import chat_messages, last_user_text, message_text, prompt_messages
from pipeline_ex.llm.normalize import add_usage
from pipeline_ex.llm.options import DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_SCHEMA_RETRIES
from pipeline_ex.llm.outcome import CANCELLATIONS, conclude
from pipeline_ex.llm.policy import StepPolicy
from pipeline_ex.llm.providers import BuiltGenerator, MockOptions, build_generator, check_provider
from pipeline_ex.llm.providers.mock import MockReply
from pipeline_ex.llm.retry import Attempts
from pipeline_ex.llm.rounds import Conversation
from pipeline_ex.llm.supervise import run_with_limits
from pipeline_ex.llm.tools import Toolbox, arun_call, run_call
from pipeline_ex.modes.session import LiveCallBlocked
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.running_loop import run_to_completion
from pipeline_ex.streaming.ambient import ambient_handlers
from pipeline_ex.streaming.dispatch import Dispatcher, HandlerFailure
from pipeline_ex.streaming.resolve import HandlerSpec, normalize_handlers, resolve_handler
from pipeline_ex.tracing import (
    chat_span,
    finish_chat,
    finish_tool,
    haystack_component_span,
    haystack_tracing_enabled,
    tool_span,
)

logger = redacting_logger("pipeline_ex")

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

    @property
    def data(self) -> Any:
        """The validated value of a step with an `output_schema` (None without one)."""
        return self.done.response.data

    @property
    def tool_calls(self) -> list[ToolCallInfo]:
        """The tool calls the step made, with their results."""
        return self.done.response.tool_calls


def _handler_specs(on_event: Any, ctx: Context) -> list[HandlerSpec]:
    """The step's handlers: the run's own (shared by every step) first, then the step's.

    The run-level handlers come first so that, while steps run at the same time, each of them receives
    the run's events in `seq` order: an event reaches them as soon as it is numbered, before any of the
    step's own async handlers is awaited (when the run-level ones are sync).
    """
    refs: list[Any] = [*ctx.handlers, *ambient_handlers(), *normalize_handlers(on_event)]
    return [ref if isinstance(ref, HandlerSpec) else resolve_handler(ref) for ref in refs]


_run_parameters: dict[tuple[type, str], bool] = {}


def _run_accepts(generator_class: type, parameter: str) -> bool:
    """Whether a generator class's `run` takes `parameter` (`streaming_callback`, `tools`), decided once."""
    key = (generator_class, parameter)
    known = _run_parameters.get(key)
    if known is None:
        run = getattr(generator_class, "run")  # noqa: B009 - a class attribute of an arbitrary component
        known = _run_parameters[key] = parameter in inspect.signature(run).parameters
    return known


_native_run_async: dict[type, bool] = {}

LONG_STREAM_CHUNKS = 8
_streams_long: dict[type, bool] = {}
"""Generator classes whose last streamed call delivered more than LONG_STREAM_CHUNKS events.

Their next `run_async` runs as a task of its own. Each time a generator awaits (its socket, between
chunks), asyncio resumes the task's whole chain of coroutines, a dozen from the run down to the
generator; in a task of its own that chain is two. That saves about 3 µs per chunk at 1,000 concurrent
streams and costs about 25 µs per call (the task, and two more loop turns), so it pays off only for
streams longer than this (bench/many_streams.py and bench/run_cost.py). Cancelling the step cancels the
task and waits for it, as a plain await does.
"""


def _has_native_run_async(generator_class: type) -> bool:
    """Whether a generator class's `run_async` is a coroutine function, decided once per class."""
    known = _native_run_async.get(generator_class)
    if known is None:
        known = _native_run_async[generator_class] = inspect.iscoroutinefunction(
            getattr(generator_class, "run_async", None)
        )
    return known


def _with_instructions(messages: list[Any], schema: Any) -> list[Any]:
    """The messages with the output schema's instructions added to the system prompt (or as one)."""
    from haystack.dataclasses import ChatMessage, ChatRole

    from pipeline_ex.llm.structured import instructions

    text = instructions(schema)
    if messages and messages[0].role == ChatRole.SYSTEM:
        return [ChatMessage.from_system(f"{messages[0].text}\n\n{text}"), *messages[1:]]
    return [ChatMessage.from_system(text), *messages]


class _StepRun:
    """One execution of an LLM step: the generator, the handlers, and the bridge between them."""

    def __init__(
        self,
        ctx: Context,
        *,
        step: str,
        talk: Conversation,
        built: BuiltGenerator,
        handlers: list[HandlerSpec],
        stream: bool,
        policy: StepPolicy,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.built = built
        self.options = options or {}
        """The step's provider options (`max_tokens`, `temperature`, ...), as its `chat` span reports them."""
        self.policy = policy
        self.tracer = ctx.run_tracer()
        """The run's OpenTelemetry tracer, or None when the run is not traced (see `pipeline_ex.tracing`)."""
        self.done: Done | None = None
        """The step's Done, once built (what its `chat` span reports)."""
        self.traced_generator = haystack_tracing_enabled()
        """Whether haystack's own tracing is on, so each generator call opens its component span."""
        if talk.toolbox is not None and not _run_accepts(type(built.generator), "tools"):
            raise ProviderConfigError(
                f"step {step!r}: provider {built.provider!r} ({type(built.generator).__name__}) cannot call tools; "
                "use a provider whose model calls tools (openai, anthropic, ollama, gemini, mock)"
            )
        if talk.schema is not None and built.structured != "native":
            talk.messages = _with_instructions(talk.messages, talk.schema)
        self.talk = talk
        self.dispatcher = Dispatcher([spec.bind() for spec in handlers], on_error=policy.on_handler_error)
        can_stream = _run_accepts(type(built.generator), "streaming_callback")
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
        kwargs: dict[str, Any] = {
            "messages": self.talk.messages,
            "generation_kwargs": dict(built.generation_kwargs),
            **self.talk.generator_kwargs(),
        }
        if not self.streaming:
            kwargs["generation_kwargs"].pop("stream_options", None)
        elif callback is not None:
            kwargs["streaming_callback"] = callback
        with built.lock or nullcontext():
            if self.traced_generator:
                with haystack_component_span(built.generator, kwargs) as output:
                    output.update(built.generator.run(**kwargs))
                replies = output["replies"]
            else:
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
        if not hybrid and not _has_native_run_async(type(generator)):
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
        kwargs: dict[str, Any] = {
            "messages": self.talk.messages,
            "generation_kwargs": dict(built.generation_kwargs),
            **self.talk.generator_kwargs(),
        }
        if self.streaming:
            kwargs["streaming_callback"] = self.bridge.on_chunk_async
        else:
            kwargs["generation_kwargs"].pop("stream_options", None)
        call = generator.run_async(**kwargs)
        if _streams_long.get(type(generator), False):
            call = asyncio.get_running_loop().create_task(call)
        try:
            if self.traced_generator:
                with haystack_component_span(generator, kwargs) as output:
                    output.update(await call)
                replies = output["replies"]
            else:
                replies = (await call)["replies"]
        except ValueError as error:
            if "coroutine" not in str(error) or self.bridge.parts or not self.streaming:
                raise
            # The generator's run_async hands the callback to its sync run (llama-cpp-haystack does):
            # nothing was generated yet, so run it as hybrid, now and from now on.
            _sync_callback_only.add(type(generator))
            return await self._run_generator_async()
        if self.streaming:
            _streams_long[type(generator)] = self.bridge.delivered > LONG_STREAM_CHUNKS
        return (replies[0] if replies else None), None

    # -- the conversation: a model call per tool round and per repair -----------------------------

    def _follow_partials(self) -> None:
        """With an output schema, send `Partial` events as the reply's JSON grows."""
        if self.talk.schema is not None:
            from pipeline_ex.llm.structured import PartialObjects

            self.bridge.use_partials(PartialObjects(self.talk.schema))

    def _converse(self, opened: Any) -> tuple[Any, dict[str, Any] | None]:
        """Make the step's model calls on this thread until a reply ends it; return the last reply."""
        talk, bridge = self.talk, self.bridge
        while True:
            with opened():
                reply, usage = self._run_generator(bridge.on_chunk if self.streaming else None)
            if not self.streaming and (delta := self._unstreamed_delta(reply)) is not None:
                bridge.deliver(delta)
            follows = talk.after_reply(reply, usage, bridge.call_id)
            if follows == "done":
                return reply, usage
            if follows == "tools":
                for event in talk.call_events(bridge.step, bridge.run_id, bridge.next_seq):
                    bridge.deliver_event(event)
                assert talk.toolbox is not None
                with opened():
                    results = [self._run_tool(talk.toolbox, c.id, c.name, c.arguments) for c in talk.to_run()]
                for result in talk.record(results, bridge.step, bridge.run_id, bridge.next_seq):
                    bridge.deliver_event(result)
                if talk.hands_back():
                    return reply, usage
            talk.bank(reply, usage)
            bridge.start_round(talk.repairs + 1 if follows == "repair" else None)

    async def _aconverse(self) -> tuple[Any, dict[str, Any] | None]:
        """Async twin of `_converse`: the calls on the event loop, sync tools on threads, async ones awaited."""
        talk, bridge = self.talk, self.bridge
        while True:
            reply, usage = await self._run_generator_async()
            if not self.streaming and (delta := self._unstreamed_delta(reply)) is not None:
                await bridge.adeliver(delta)
            follows = talk.after_reply(reply, usage, bridge.call_id)
            if follows == "done":
                return reply, usage
            if follows == "tools":
                for event in talk.call_events(bridge.step, bridge.run_id, bridge.next_seq):
                    await bridge.adeliver_event(event)
                toolbox = talk.toolbox
                assert toolbox is not None
                call = arun_call if self.tracer is None else self._arun_tool
                calls = [call(toolbox, c.id, c.name, c.arguments) for c in talk.to_run()]
                bridge.running_tools = ", ".join(c.name for c in talk.to_run())
                try:
                    results = await asyncio.gather(*calls)
                finally:
                    bridge.running_tools = None
                for result in talk.record(results, bridge.step, bridge.run_id, bridge.next_seq):
                    await bridge.adeliver_event(result)
                if talk.hands_back():
                    return reply, usage
                if bridge.track_chunks:  # the gap before the next round's first chunk starts now
                    bridge.last_chunk_at = time.perf_counter()
            talk.bank(reply, usage)
            bridge.start_round(talk.repairs + 1 if follows == "repair" else None)

    def _run_tool(self, toolbox: Toolbox, call_id: str, name: str, arguments: dict[str, Any]) -> ToolCallInfo:
        """Run one tool call on this thread, in its `execute_tool` span when traced."""
        if self.tracer is None:
            return run_call(toolbox, call_id, name, arguments)
        with tool_span(self.tracer, name, call_id) as span:
            info = run_call(toolbox, call_id, name, arguments)
            finish_tool(span, info.error, info.result)
        return info

    async def _arun_tool(self, toolbox: Toolbox, call_id: str, name: str, arguments: dict[str, Any]) -> ToolCallInfo:
        """`arun_call` in the call's `execute_tool` span (traced runs only)."""
        with tool_span(self.tracer, name, call_id) as span:
            info = await arun_call(toolbox, call_id, name, arguments)
            finish_tool(span, info.error, info.result)
        return info

    # -- concluding ------------------------------------------------------------------------------

    def _unstreamed_delta(self, reply: Any) -> Delta | None:
        text = reply.text if reply is not None else None
        return self.bridge.make_delta(text) if text else None

    def _conclude(
        self, reply: Any, usage: dict[str, Any] | None, error: BaseException | None
    ) -> tuple[Done, BaseException | None]:
        """Build the Done for how the run ended (see `outcome`), and log it with `PIPELINE_STREAM_DEBUG`."""
        done, to_raise = conclude(
            self.bridge,
            reply,
            usage,
            error,
            streamed=self.streaming,
            retries=self.policy.retries,
            model_from_reply=self.built.model_from_reply,
            chunks_are_tokens=self.built.chunks_are_tokens,
        )
        talk = self.talk
        if talk.calls or talk.banked or talk.data is not None:
            response = done.response
            update: dict[str, Any] = {"tool_calls": list(talk.calls)}
            if talk.banked:  # the earlier calls' usage, and the last one's unless the step failed without it
                last = response.usage
                earlier = talk.earlier_usage
                update["usage"] = add_usage(earlier, last)
            if done.error is None:
                update["data"] = talk.data
            done = done.model_copy(update={"response": response.model_copy(update=update)})
            if to_raise is not None and isinstance(to_raise, StepError):
                to_raise.done = done
        if self.bridge.debug_log is not None:
            self.bridge.debug_log.debug("event", **done.model_dump(mode="json"))
        self.done = done
        return done, to_raise

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

    def chat_span(self) -> Any:
        """The step's `chat` span (see `pipeline_ex.tracing`); only for a traced run."""
        built = self.built
        return chat_span(
            self.tracer,
            step=self.bridge.step,
            provider=built.provider,
            model=built.model,
            stream=self.streaming,
            options=self.options,
        )

    def traced_execute(self) -> StepResult:
        """`execute` in the step's `chat` span."""
        with self.chat_span() as span:
            try:
                result = self.execute()
            except BaseException as error:
                finish_chat(span, self.done, error)
                raise
            finish_chat(span, self.done, None)
        return result

    async def traced_aexecute(self) -> StepResult:
        """`aexecute` in the step's `chat` span."""
        with self.chat_span() as span:
            try:
                result = await self.aexecute()
            except BaseException as error:
                finish_chat(span, self.done, error)
                raise
            finish_chat(span, self.done, None)
        return result

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
            self._follow_partials()
            reply: Any = None
            usage: dict[str, Any] | None = None
            error: BaseException | None = None
            attempts = Attempts(self.policy, self.bridge, self.built.model)
            while True:
                attempts.begin()
                try:
                    reply, usage = self._converse(opened)
                    error = None
                except BaseException as caught:
                    error = caught
                    again = attempts.after_failure(caught, streaming=self.streaming)
                    if again is not None:
                        self.streaming = again.stream
                        if again.pause:
                            try:
                                with opened():
                                    time.sleep(again.pause)
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
            late = self.dispatcher.emit_done(done)
        return self._finish(done, to_raise, late)

    async def _attempt_async(self) -> tuple[Any, dict[str, Any] | None]:
        if not self.policy.has_limits:
            return await self._aconverse()
        bridge = self.bridge
        bridge.last_chunk_at = None
        return await run_with_limits(
            self._aconverse(),
            self.policy,
            started=bridge.started,
            attempt_started=time.perf_counter(),
            last_chunk=lambda: bridge.last_chunk_at,
            busy=lambda: bridge.running_tools,
        )

    async def aexecute(self) -> StepResult:
        """Run the step on the running event loop (natively async, or hybrid for sync-only generators).

        A cancellation may land at any `await`: in the generator, in an async handler, in the pause
        between retries or while the generator's clients close. Whichever it is, every handler still
        gets the Done, and the cancellation is raised afterwards.
        """
        self._follow_partials()
        reply: Any = None
        usage: dict[str, Any] | None = None
        error: BaseException | None = None
        attempts = Attempts(self.policy, self.bridge, self.built.model)
        while True:
            attempts.begin()
            try:
                reply, usage = await self._attempt_async()
                error = None
            except BaseException as caught:
                error = caught
                again = attempts.after_failure(caught, streaming=self.streaming)
                if again is not None:
                    self.streaming = again.stream
                    if again.pause:
                        try:
                            await asyncio.sleep(again.pause)
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
            elif not isinstance(error, CANCELLATIONS):
                late_cancel = stop
        done, to_raise = self._conclude(reply, usage, error)
        late = await self.dispatcher.aemit_done(done)
        if late_cancel is not None:
            raise late_cancel
        return self._finish(done, to_raise, late)


_MOCK_KEYS = frozenset(MockOptions.model_fields)


def _select_generator(
    ctx: Context,
    step: str,
    talk: Conversation,
    provider: str | None,
    model: str | None,
    options: dict[str, Any],
    handlers: list[HandlerSpec],
    mock_response: str | list[str] | MockReply | None = None,
) -> BuiltGenerator:
    """Build the step's generator as the run's test mode says: live, mock, record or replay.

    Record and replay identify the step's request by its step path, messages, model and options: a
    recording is saved with its request, and replays only for the same one.
    """
    session = ctx.test_session()
    request = None
    if session.mode in ("record", "replay"):
        from pipeline_ex.modes.request import StepRequest

        messages = [message_text(m) for m in talk.messages]
        tools = talk.toolbox.tools if talk.toolbox is not None else ()
        asked = dict(options)
        if talk.toolbox is not None:
            asked["max_tool_rounds"] = talk.max_tool_rounds
        if talk.schema is not None:  # a recording made for another schema must not replay
            asked.update(output_schema=talk.schema.json_schema, schema_retries=talk.schema_retries)
        request = StepRequest.of(step, provider=provider, model=model, messages=messages, options=asked, tools=tools)
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
        scripted = session.script.pick(last_user_text(talk.messages)) if session.script is not None else None
        if scripted is not None:
            mock_options.update(scripted.provider_options())
        built = build_generator("mock", model, mock_options, output_schema=talk.schema)
    elif not session.live_allowed:
        name = check_provider(provider, options)  # a misspelt provider or option is the more useful error
        raise LiveCallBlocked(
            f"{session.label or 'this test'} tried a real call to provider {name!r} "
            f"(step {step!r}); allow it with @pytest.mark.live or pytest --pipeline-live, "
            "or script the reply with the llm_mock fixture"
        )
    else:
        built = build_generator(provider, model, options, output_schema=talk.schema)
    if session.mode == "record":
        assert session.cassette is not None and request is not None
        handlers.append(resolve_handler(session.cassette.recorder(request)))
    return built


def _prepare(
    ctx: Context | None,
    *,
    prompt: str | None,
    messages: Sequence[Any] | None,
    tools: Sequence[Any] | None,
    max_tool_rounds: int,
    output_schema: Any,
    schema_retries: int,
    provider: str | None,
    model: str | None,
    system: str | None,
    stream: bool,
    on_event: Any,
    step: str,
    options: Mapping[str, Any],
    mock_response: str | list[str] | MockReply | None = None,
) -> _StepRun:
    ctx = ctx if ctx is not None else Context()
    defaults = ctx.defaults
    provider_name = provider or defaults.get("provider")
    merged: dict[str, Any] = {}
    if provider is None or provider == defaults.get("provider"):
        merged.update(defaults.get("options") or {})
    merged.update(options)
    policy = StepPolicy.take_from(merged)
    handlers = _handler_specs(on_event, ctx)
    system = system if system is not None else defaults.get("system")
    talk = _conversation(step, prompt, messages, system, tools, max_tool_rounds, output_schema, schema_retries)
    built = _select_generator(
        ctx, step, talk, provider_name, model or defaults.get("model"), merged, handlers, mock_response=mock_response
    )
    return _StepRun(
        ctx, step=step, talk=talk, built=built, handlers=handlers, stream=stream, policy=policy, options=merged
    )


def _conversation(
    step: str,
    prompt: str | None,
    messages: Sequence[Any] | None,
    system: str | None,
    tools: Sequence[Any] | None,
    max_tool_rounds: int,
    output_schema: Any,
    schema_retries: int,
) -> Conversation:
    """The step's conversation: its messages, tools and output schema, checked."""
    if (prompt is None) == (messages is None):
        raise PipelineError(
            f"step {step!r}: give either prompt= (one user message) or messages= (a conversation)"
            + (", not both" if prompt is not None else "")
        )
    if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
        raise ProviderConfigError(
            f"step {step!r}: max_tool_rounds must be a whole number of 0 or more, got {max_tool_rounds!r}"
        )
    if isinstance(schema_retries, bool) or not isinstance(schema_retries, int) or schema_retries < 0:
        raise ProviderConfigError(
            f"step {step!r}: schema_retries must be a whole number of 0 or more, got {schema_retries!r}"
        )
    if isinstance(prompt, str):  # the common case, without the detour through OpenAI-format mappings
        from haystack.dataclasses import ChatMessage

        chat = [ChatMessage.from_user(prompt)]
        if system:
            chat.insert(0, ChatMessage.from_system(system))
    else:
        entries = prompt_messages(system, prompt) if prompt is not None else list(messages or [])
        chat = chat_messages(entries, system if prompt is None else None)
    schema = None
    if output_schema is not None:
        from pipeline_ex.llm.structured import resolve_output_schema

        schema = resolve_output_schema(output_schema)
    toolbox = Toolbox.of(tools) if tools else None
    return Conversation(chat, toolbox, max_tool_rounds, schema, schema_retries)


def invoke(
    ctx: Context | None = None,
    *,
    prompt: str | None = None,
    messages: Sequence[Any] | None = None,
    tools: Sequence[Any] | None = None,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    output_schema: Any = None,
    schema_retries: int = DEFAULT_SCHEMA_RETRIES,
    provider: str | None = None,
    model: str | None = None,
    system: str | None = None,
    stream: bool = True,
    on_event: Any = None,
    step: str = "llm",
    mock_response: str | list[str] | MockReply | None = None,
    **options: Any,
) -> StepResult:
    """Run one LLM step and stream its events to `on_event`; return the `StepResult`.

    :param ctx: the run's `Context` (run id, defaults, run-wide handlers), or None for a fresh one.
    :param prompt: the user prompt; or give `messages`.
    :param messages: the conversation to send instead of a prompt: haystack `ChatMessage`s, or mappings in
        OpenAI's chat format (`{"role": "user", "content": "..."}`, assistant `tool_calls`, `tool` results).
    :param tools: tools the model may call: Python functions (described by their type hints and docstring),
        haystack `Tool`s, dotted paths to either, or declared tools (`{name, description, parameters}`, whose
        calls are handed back: the step ends with `finish_reason="tool_calls"`). The step runs the calls,
        sends the results back and calls the model again, streaming `Delta(kind="tool_call")` fragments,
        then a `ToolCall` and a `ToolResult` event per call.
    :param max_tool_rounds: the most tool rounds; a model still calling tools after them fails the step
        with `ToolRoundsError` (`Done.response.finish_reason == "tool_calls"`).
    :param output_schema: the reply must be JSON matching this: a JSON Schema (a mapping), a pydantic model
        class, or `{"model": "package.module:Model"}`. `Partial` events stream the object as it grows, and
        the validated value is `StepResult.data` (and `Done.response.data`).
    :param schema_retries: how many times an invalid structured reply is sent back with the validation
        errors; after that the step fails with `StructuredOutputError` (`error.type == "schema"`).
    :param provider: "local" (the default), "openai" or "mock"; falls back to `ctx.defaults["provider"]`.
    :param model: the model name; falls back to `ctx.defaults["model"]`, then the provider's default.
    :param system: an optional system prompt.
    :param stream: stream deltas as they arrive; with False, one call is made and its reply is
        delivered as one Delta, then `Done(streamed=False)`.
    :param on_event: a handler reference or a list of them (a function, a class, a module, an object with
        `handle_event`, a short name such as "console", or a dotted path).
    :param step: the step id (or path) carried by every event.
    :param mock_response: the reply (or exact chunks) this step gets when the run is a mock run; a live
        run ignores it.
    :param options: provider options such as `api_base_url`, `temperature` or `max_tokens`, and the step
        options `timeout`, `chunk_timeout`, `retries` and `on_handler_error` (see `StepPolicy`).
    :raises StepError: after the Done was delivered, when the step failed (`ProviderError`,
        `StreamTruncatedError`, `HandlerError`, `ToolRoundsError`, `StructuredOutputError`). Cancellation
        (KeyboardInterrupt) is re-raised as is.

    A step with an async handler, an async tool or a timeout runs on an event loop of its own; called
    inside a running loop (a Jupyter cell), that loop runs on a worker thread and this call waits for it.
    """
    run = _prepare(
        ctx,
        prompt=prompt,
        messages=messages,
        tools=tools,
        max_tool_rounds=max_tool_rounds,
        output_schema=output_schema,
        schema_retries=schema_retries,
        provider=provider,
        model=model,
        system=system,
        stream=stream,
        on_event=on_event,
        step=step,
        options=options,
        mock_response=mock_response,
    )
    async_tools = run.talk.toolbox is not None and run.talk.toolbox.has_async
    if run.dispatcher.is_async or run.policy.has_limits or async_tools:  # these need an event loop
        return run_to_completion(
            run.aexecute if run.tracer is None else run.traced_aexecute, entry="invoke", twin="ainvoke"
        )
    return run.execute() if run.tracer is None else run.traced_execute()


async def ainvoke(
    ctx: Context | None = None,
    *,
    prompt: str | None = None,
    messages: Sequence[Any] | None = None,
    tools: Sequence[Any] | None = None,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    output_schema: Any = None,
    schema_retries: int = DEFAULT_SCHEMA_RETRIES,
    provider: str | None = None,
    model: str | None = None,
    system: str | None = None,
    stream: bool = True,
    on_event: Any = None,
    step: str = "llm",
    mock_response: str | list[str] | MockReply | None = None,
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
        messages=messages,
        tools=tools,
        max_tool_rounds=max_tool_rounds,
        output_schema=output_schema,
        schema_retries=schema_retries,
        provider=provider,
        model=model,
        system=system,
        stream=stream,
        on_event=on_event,
        step=step,
        options=options,
        mock_response=mock_response,
    )
    if run.tracer is None:
        return await run.aexecute()
    return await run.traced_aexecute()


__all__ = ["StepError", "StepResult", "ainvoke", "invoke"]
