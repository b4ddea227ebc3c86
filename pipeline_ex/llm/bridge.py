"""The bridge from haystack streaming callbacks to typed events, for sync, async and hybrid runs.

- sync: the generator's `run` calls `StreamBridge.on_chunk` on the caller's thread, which delivers the
  events to the handlers right there.
- native async: `run_async` awaits `StreamBridge.on_chunk_async` on the event loop.
- hybrid: a sync-only generator runs in a worker thread. `HybridPump.on_chunk` queues the chunks' text
  on that thread; the event loop numbers them (so `seq` follows delivery order even when several steps
  run at once) and delivers them. The worker never waits for the loop and
  the loop is woken only when the queue goes from empty to non-empty, so there is no polling and no
  per-chunk `run_coroutine_threadsafe` round trip.

Stopping a stream early (a handler failed, or the run was cancelled) raises `StreamAbort` from inside
the callback. It is a `BaseException`, so it passes through generators that catch and log every
`Exception` their callback raises (llama-cpp-haystack does).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from haystack.dataclasses import StreamingChunk

from pipeline_ex.events import Delta, DeltaKind, Done, ErrorInfo, FinishReason, Partial, Response, Usage, new_delta
from pipeline_ex.llm.interrupts import InterruptGate
from pipeline_ex.redaction import redact_text
from pipeline_ex.streaming.dispatch import Dispatcher, HandlerFailure

_native_workers: set[threading.Thread] = set()
"""Worker threads inside native calls that must not be torn down mid-call (llama.cpp); see `wait_for_workers`."""


def in_daemon_thread(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Any], *, finish_before_exit: bool = False
) -> asyncio.Future[Any]:
    """Run `work` on a new daemon thread; the returned future settles on `loop` when it returns.

    Not the loop's default executor: `asyncio.run` waits for executor threads when it finishes, so a
    sync-only generator stuck in a blocking call would hold up a step that already timed out or was
    cancelled. A daemon thread is simply left to finish (it stops at its next chunk). `work` runs in a
    copy of the caller's contextvars, as an asyncio task would: spans it opens (haystack's, an HTTP
    client's) have the step's span as their parent.

    :param finish_before_exit: `work` runs native code that frees nothing it uses until it returns
        (llama.cpp computing with its model): the interpreter waits for it at exit, because tearing the
        model down under it crashes the process.
    """
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome = (True, context.run(work))
        except BaseException as error:
            outcome = (False, error)
        finally:
            _native_workers.discard(threading.current_thread())
        with contextlib.suppress(RuntimeError):  # the loop is closed: whoever waited has gone
            loop.call_soon_threadsafe(settle, *outcome)

    worker = threading.Thread(target=target, name="pipeline-ex-hybrid", daemon=True)
    if finish_before_exit:
        _native_workers.add(worker)
    worker.start()
    return future


@atexit.register
def wait_for_workers() -> None:
    """Before the interpreter exits, wait for workers still inside native calls that must finish.

    A cancelled step's worker may still be inside llama.cpp, processing the prompt; it stops at the next
    token. Tearing the interpreter (and the model) down under it would crash the process, so exit waits
    for it, saying so if that takes a moment. Ctrl-C while waiting ends the process at once, with 130 and
    without teardown.
    """
    try:
        for worker in list(_native_workers):
            worker.join(1.0)
        if any(worker.is_alive() for worker in _native_workers):
            print(
                "pipeline-ex: waiting for the model to finish its current computation "
                "(press Ctrl-C again to exit at once)...",
                file=sys.stderr,
                flush=True,
            )
            for worker in list(_native_workers):
                worker.join()
    except KeyboardInterrupt:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal.SIGINT)


class StreamAbort(BaseException):
    """Raised inside a streaming callback to stop the provider stream."""


class StreamBridge:
    """Turns one step run's haystack chunks into events and keeps what the final `Done` needs.

    `parts` holds exactly the text of the text deltas that were delivered, so `Done.response.text`
    always equals the joined deltas, also when the stream stops early.
    """

    def __init__(
        self,
        *,
        step: str,
        run_id: str,
        next_seq: Callable[[], int],
        provider: str,
        model: str | None,
        dispatcher: Dispatcher,
        debug_log: Any | None = None,
        track_chunks: bool = False,
    ) -> None:
        self.step = step
        self.run_id = run_id
        self.next_seq = next_seq
        self.provider = provider
        self.model = model
        self.dispatcher = dispatcher
        self.debug_log = debug_log
        self.parts: list[str] = []
        self.started = time.perf_counter()
        self.first_delta_at: float | None = None
        self.tail: deque[StreamingChunk] = deque(maxlen=8)
        """The last chunks: the provider's finish reason and usage arrive at the end of a stream."""
        self.failure: HandlerFailure | None = None
        self.delivered = 0
        """How many deltas were delivered (after the first one, a retry would repeat output)."""
        self.track_chunks = track_chunks
        self.last_chunk_at: float | None = None
        """When the latest chunk arrived; kept only when a `chunk_timeout` needs it."""
        self.gate: InterruptGate | None = None
        """Holds Ctrl-C back during a fan-out (sync steps on the main thread), once `use_gate` set it."""
        self.calls: dict[int, tuple[int, str | None, str | None]] = {}
        """This round's tool calls so far: provider index -> (position in the round, id, tool name)."""
        self.partials: Any = None
        """With an output schema: the `PartialObjects` parser of the current attempt's reply."""
        self.attempt = 1
        self.model_call = 1
        self.running_tools: str | None = None
        """The tools running right now, named in a `chunk_timeout` error (async runs)."""
        """Which model call of the step is streaming (1 for the first; each tool round and repair adds one)."""
        self.reply_text = ""
        """The text of the current round (what an output schema validates)."""
        if debug_log is not None:
            self._emit = self._emit_logged
        else:
            self._emit = dispatcher.emit

    # -- building events -------------------------------------------------------------------------

    def make_delta(
        self,
        content: str,
        kind: DeltaKind = "text",
        index: int = 0,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
    ) -> Delta:
        """A Delta for this step, with the run's next sequence number."""
        if kind != "tool_call":
            return new_delta(content, self.step, self.run_id, self.next_seq(), kind)
        return Delta(
            content=content,
            step=self.step,
            run_id=self.run_id,
            seq=self.next_seq(),
            index=index,
            kind=kind,
            tool_call_id=tool_call_id,
            tool_name=tool_name,
        )

    def tool_fragments(self, deltas: list[Any]) -> list[tuple[str, DeltaKind, int, str | None, str | None]]:
        """The `make_delta` arguments for a chunk's tool-call fragments (haystack `ToolCallDelta`s).

        A provider names a call's id and tool once, on its first fragment; later fragments carry only the
        provider's index. Each fragment's Delta carries the id and name, and the call's position in the
        round (providers number content blocks, not calls).
        """
        calls = self.calls
        made: list[tuple[str, DeltaKind, int, str | None, str | None]] = []
        for fragment in deltas:
            known = calls.get(fragment.index)
            if known is None:
                known = (len(calls), fragment.id, fragment.tool_name)
            elif fragment.id or fragment.tool_name:
                known = (known[0], known[1] or fragment.id, known[2] or fragment.tool_name)
            calls[fragment.index] = known
            if fragment.arguments:
                position, call_id, name = known
                made.append((fragment.arguments, "tool_call", position, call_id or self.call_id(position), name))
        return made

    def call_id(self, position: int) -> str:
        """The id of the current model call's call at `position`, for providers that give calls no id."""
        return f"call_{self.model_call}_{position}"

    def start_round(self, attempt: int | None = None) -> None:
        """A new model call of the step begins (a tool round, or a repair of a structured reply)."""
        self.tail.clear()  # the finish reason and usage of a call are those of its own last chunks
        self.calls = {}
        self.reply_text = ""
        self.model_call += 1
        if attempt is not None and self.partials is not None:
            self.attempt = attempt
            self.partials = type(self.partials)(self.partials.schema)

    def log_chunk(self, chunk: StreamingChunk) -> None:
        """Log a raw provider chunk (with `PIPELINE_STREAM_DEBUG`)."""
        assert self.debug_log is not None
        self.debug_log.debug("provider chunk", step=self.step, chunk={**chunk.to_dict(), "component_info": None})

    def record(self, delta: Delta) -> None:
        """Account for a delta that is about to be delivered."""
        self.delivered += 1
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
        if delta.kind == "text":
            self.parts.append(delta.content)

    @property
    def text(self) -> str:
        """The text delivered so far."""
        return "".join(self.parts)

    def build_done(
        self,
        *,
        finish_reason: FinishReason,
        usage: Usage | None,
        meta: dict[str, Any],
        model: str | None = None,
        error: ErrorInfo | None = None,
        streamed: bool = True,
    ) -> Done:
        """The Done event closing this step's stream (an error's message is redacted: clients see it)."""
        now = time.perf_counter()
        if error is not None:
            error = error.model_copy(update={"message": redact_text(error.message)})
        response = Response(
            text=self.text,
            model=model or self.model,
            provider=self.provider,
            finish_reason=finish_reason,
            usage=usage,
            meta=meta,
        )
        ttft = None if self.first_delta_at is None else (self.first_delta_at - self.started) * 1000
        return Done(
            response=response,
            step=self.step,
            run_id=self.run_id,
            seq=self.next_seq(),
            error=error,
            streamed=streamed,
            ttft_ms=ttft,
            duration_ms=(now - self.started) * 1000,
        )

    # -- sync and native-async callbacks ---------------------------------------------------------

    def _emit_logged(self, event: Delta | Done) -> None:
        assert self.debug_log is not None
        self.debug_log.debug("event", **event.model_dump(mode="json"))
        self.dispatcher.emit(event)

    def deliver(self, delta: Delta) -> None:
        """Deliver one delta to sync handlers; a handler failure stops the stream."""
        # `record`, inlined: this runs once per chunk
        self.delivered += 1
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
        if delta.kind == "text":
            self.parts.append(delta.content)
        try:
            self._emit(delta)
        except HandlerFailure as failure:
            self.failure = failure
            raise StreamAbort from failure

    def deliver_event(self, event: Any) -> None:
        """Deliver a `ToolCall`, `ToolResult` or `Partial` to sync handlers; a handler failure stops the step.

        Like a Delta's, the fan-out holds Ctrl-C back until every handler has the event (see `use_gate`).
        """
        self.delivered += 1
        gate = self.gate
        if gate is not None:
            gate.closed += 1
        try:
            self._emit(event)
        except HandlerFailure as failure:
            self.failure = failure
            raise StreamAbort from failure
        finally:
            if gate is not None:
                gate.closed -= 1
        if gate is not None and gate.pending and not gate.closed:
            gate.release()

    async def adeliver_event(self, event: Any) -> None:
        """Async twin of `deliver_event`."""
        self.delivered += 1
        if self.debug_log is not None:
            self.debug_log.debug("event", **event.model_dump(mode="json"))
        try:
            await self.dispatcher.aemit(event)
        except HandlerFailure as failure:
            self.failure = failure
            raise StreamAbort from failure

    def use_partials(self, partials: Any) -> None:
        """Follow the reply with `partials` (a `PartialObjects`), sending a `Partial` each time it grows.

        Chosen once per step, as `use_gate` is: a step without an output schema pays nothing per chunk.
        """
        self.partials = partials
        plain, aplain = self.deliver, self.adeliver

        def deliver(delta: Delta) -> None:
            plain(delta)
            if delta.kind == "text" and (partial := self._grown(delta.content)) is not None:
                self.deliver_event(partial)

        async def adeliver(delta: Delta) -> None:
            await aplain(delta)
            if delta.kind == "text" and (partial := self._grown(delta.content)) is not None:
                await self.adeliver_event(partial)

        self.deliver = deliver  # type: ignore[method-assign]
        self.adeliver = adeliver  # type: ignore[method-assign]

    def _grown(self, content: str) -> Partial | None:
        self.reply_text += content
        changed, value = self.partials.feed(self.reply_text)
        if not changed:
            return None
        return Partial(step=self.step, run_id=self.run_id, seq=self.next_seq(), data=value, attempt=self.attempt)

    def use_gate(self, gate: InterruptGate) -> None:
        """Hold Ctrl-C back during each fan-out (a sync step on the main thread; see `interrupts`)."""
        self.gate = gate
        self.deliver = self._deliver_gated  # type: ignore[method-assign]  # chosen once, not per chunk

    def _deliver_gated(self, delta: Delta) -> None:
        gate = self.gate
        assert gate is not None
        gate.closed += 1
        try:
            StreamBridge.deliver(self, delta)
        finally:
            gate.closed -= 1
        if gate.pending and not gate.closed:
            gate.release()

    async def adeliver(self, delta: Delta) -> None:
        """Deliver one delta to sync and async handlers; a handler failure stops the stream."""
        self.record(delta)
        if self.debug_log is not None:
            self.debug_log.debug("event", **delta.model_dump(mode="json"))
        try:
            await self.dispatcher.aemit(delta)
        except HandlerFailure as failure:
            self.failure = failure
            raise StreamAbort from failure

    def on_chunk(self, chunk: StreamingChunk) -> None:
        """The sync `streaming_callback`: deliver the chunk's text (and reasoning) right away."""
        if self.track_chunks:
            self.last_chunk_at = time.perf_counter()
        content = chunk.content
        if content:
            self.deliver(new_delta(content, self.step, self.run_id, self.next_seq()))  # make_delta, inlined
        reasoning = chunk.reasoning
        if reasoning is not None and reasoning.reasoning_text:
            self.deliver(self.make_delta(reasoning.reasoning_text, "reasoning"))
        if chunk.tool_calls:
            for fragment in self.tool_fragments(chunk.tool_calls):
                self.deliver(self.make_delta(*fragment))
        self.tail.append(chunk)
        if self.debug_log is not None:
            self.log_chunk(chunk)

    async def on_chunk_async(self, chunk: StreamingChunk) -> None:
        """The async `streaming_callback` for generators with a native `run_async`."""
        if not self.dispatcher.is_async:
            self.on_chunk(chunk)
            return
        if self.track_chunks:
            self.last_chunk_at = time.perf_counter()
        content = chunk.content
        if content:
            await self.adeliver(new_delta(content, self.step, self.run_id, self.next_seq()))  # make_delta, inlined
        reasoning = chunk.reasoning
        if reasoning is not None and reasoning.reasoning_text:
            await self.adeliver(self.make_delta(reasoning.reasoning_text, "reasoning"))
        if chunk.tool_calls:
            for fragment in self.tool_fragments(chunk.tool_calls):
                await self.adeliver(self.make_delta(*fragment))
        self.tail.append(chunk)
        if self.debug_log is not None:
            self.log_chunk(chunk)


class HybridPump:
    """Moves events from a sync-only generator's worker thread to the event loop.

    The worker converts chunks and appends them to a deque; it wakes the loop with one
    `call_soon_threadsafe` only when no wake-up is already pending. The loop drains everything queued
    per wake-up, so a fast producer costs one wake-up per batch rather than one per chunk.
    """

    def __init__(
        self, bridge: StreamBridge, loop: asyncio.AbstractEventLoop, *, finish_before_exit: bool = False
    ) -> None:
        self.bridge = bridge
        self.loop = loop
        self.finish_before_exit = finish_before_exit
        self.pending: deque[tuple[Any, ...]] = deque()
        """`make_delta` arguments, queued by the worker thread."""
        self.produced: list[str] = []
        self.aborted = False
        self._wake = asyncio.Event()
        self._wake_scheduled = False

    def on_chunk(self, chunk: StreamingChunk) -> None:
        """The `streaming_callback` the worker thread calls."""
        if self.aborted:
            raise StreamAbort
        bridge = self.bridge
        if bridge.track_chunks:
            bridge.last_chunk_at = time.perf_counter()
        queued = False
        content = chunk.content
        if content:
            self.produced.append(content)
            self.pending.append((content, "text"))
            queued = True
        reasoning = chunk.reasoning
        if reasoning is not None and reasoning.reasoning_text:
            self.pending.append((reasoning.reasoning_text, "reasoning"))
            queued = True
        if chunk.tool_calls:
            fragments = bridge.tool_fragments(chunk.tool_calls)
            self.pending.extend(fragments)
            queued = queued or bool(fragments)
        bridge.tail.append(chunk)
        if bridge.debug_log is not None:
            bridge.log_chunk(chunk)
        if queued and not self._wake_scheduled:
            self._wake_scheduled = True
            self.loop.call_soon_threadsafe(self._wake.set)

    async def _drain(self) -> None:
        bridge = self.bridge
        pending = self.pending
        make = bridge.make_delta
        if bridge.dispatcher.is_async or bridge.debug_log is not None:
            while pending:
                await bridge.adeliver(make(*pending.popleft()))
        else:
            while pending:
                bridge.deliver(make(*pending.popleft()))

    async def run(self, work: Callable[[], Any]) -> Any:
        """Run `work` in a worker thread, delivering its events until it returns; return its result.

        If this coroutine is cancelled or a handler fails, the worker is told to stop at its next chunk
        and the exception propagates at once.
        """
        future = in_daemon_thread(self.loop, work, finish_before_exit=self.finish_before_exit)
        future.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._wake_scheduled = False  # cleared before draining, so a later append wakes us again
                await self._drain()
                if future.done():
                    await self._drain()
                    return future.result()
        except BaseException:
            self.aborted = True
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: the step reports the failure itself
            else:
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
