"""Deliver a step's events to its handlers, in order, sync or async as each handler was resolved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline_ex.events import Done, Event
from pipeline_ex.redaction import redacting_logger

logger = redacting_logger("pipeline_ex")


@dataclass(frozen=True)
class BoundHandler:
    """A handler ready for one step run: its display name, its event function, and whether it is async."""

    name: str
    fn: Callable[[Event], Any]
    is_async: bool


class HandlerFailure(Exception):
    """Raised by `Dispatcher` when a handler raises; names the handler and keeps the original error."""

    def __init__(self, handler: str, error: Exception) -> None:
        self.handler = handler
        self.error = error
        super().__init__(f"stream handler {handler} raised {type(error).__name__}: {error}")


class Dispatcher:
    """Fans each event out to the handlers of one step run, in the order they were given.

    With `on_error="log"` a failing handler is logged once (with its traceback) and the stream goes on;
    the handler keeps receiving events. With "raise" (the default) the failure stops the stream.
    """

    def __init__(self, handlers: Sequence[BoundHandler], on_error: Literal["raise", "log"] = "raise") -> None:
        if on_error == "log":
            handlers = [_logging_once(h) for h in handlers]
        self.handlers = tuple(handlers)
        self.is_async = any(h.is_async for h in self.handlers)
        self._pairs = tuple((h.name, h.fn) for h in self.handlers)
        if len(self._pairs) == 1:
            self.emit = self._emit_one  # type: ignore[method-assign]  # the common case, without the loop

    def _emit_one(self, event: Event) -> None:
        name, fn = self._pairs[0]
        try:
            fn(event)
        except Exception as error:
            raise HandlerFailure(name, error) from error

    def emit(self, event: Event) -> None:
        """Deliver an event to sync handlers. Only valid when `is_async` is false.

        If a handler raises, the event still reaches the handlers after it (so every handler saw the
        same deltas), then the first failure is raised. An interruption inside a handler (Ctrl-C) is
        held the same way and re-raised once every handler has the event.
        """
        failure: HandlerFailure | None = None
        interrupted: BaseException | None = None
        for name, fn in self._pairs:
            try:
                fn(event)
            except Exception as error:
                failure = failure or HandlerFailure(name, error)
            except BaseException as stop:
                interrupted = interrupted or stop
        if interrupted is not None:
            raise interrupted
        if failure is not None:
            raise failure from failure.error

    async def aemit(self, event: Event) -> None:
        """Deliver an event to every handler, awaiting the async ones; failures as in `emit`.

        A cancellation that lands while an async handler awaits does not stop the event from reaching
        the handlers after it: it is re-raised once every handler has the event, so all of them keep
        the same deltas.
        """
        failure: HandlerFailure | None = None
        interrupted: BaseException | None = None
        for handler in self.handlers:
            try:
                if handler.is_async:
                    await handler.fn(event)
                else:
                    handler.fn(event)
            except Exception as error:
                failure = failure or HandlerFailure(handler.name, error)
            except BaseException as stop:
                interrupted = interrupted or stop
        if interrupted is not None:
            raise interrupted
        if failure is not None:
            raise failure from failure.error

    def emit_done(self, done: Done) -> HandlerFailure | None:
        """Deliver the Done to every sync handler even if one fails; return the first failure.

        An interruption inside a handler is re-raised after every handler received the Done.
        """
        try:
            self.emit(done)
        except HandlerFailure as failure:
            return failure
        return None

    async def aemit_done(self, done: Done) -> HandlerFailure | None:
        """Deliver the Done to every handler even if one fails; return the first failure.

        A cancellation that lands while an async handler receives the Done is re-raised only after
        every other handler received it too.
        """
        try:
            await self.aemit(done)
        except HandlerFailure as failure:
            return failure
        return None


def _logging_once(handler: BoundHandler) -> BoundHandler:
    """Wrap a handler so its exceptions are logged (the first one with a traceback) instead of raised."""
    failures = 0

    def report(event: Event, error: Exception) -> None:
        nonlocal failures
        failures += 1
        if failures == 1:
            logger.error(
                "stream handler %s failed on step %r; on_handler_error=log keeps the stream going "
                "(later failures of this handler are not logged)",
                handler.name,
                event.step,
                exc_info=error,
            )

    if handler.is_async:
        async_fn = handler.fn

        async def guarded_async(event: Event) -> None:
            try:
                await async_fn(event)
            except Exception as error:
                report(event, error)

        return BoundHandler(handler.name, guarded_async, True)

    sync_fn = handler.fn

    def guarded(event: Event) -> None:
        try:
            sync_fn(event)
        except Exception as error:
            report(event, error)

    return BoundHandler(handler.name, guarded, False)
