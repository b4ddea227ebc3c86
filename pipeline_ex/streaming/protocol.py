"""The handler protocol: anything with `handle_event(event)`, sync or `async def`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from pipeline_ex.events import Event

EventCallback = Callable[[Event], None] | Callable[[Event], Awaitable[None]]
"""A function that receives events: `on_event=` in the Python API."""


@runtime_checkable
class StreamHandler(Protocol):
    """A stream handler receives every event of a step run, in order, ending with one `Done`.

    `handle_event` may be a plain method or a coroutine method; which one is decided once, when the
    handler is resolved. A class handler gets a fresh instance for every step run, so instance state is
    per run.
    """

    def handle_event(self, event: Event) -> Awaitable[None] | None:
        """Receive one event."""
