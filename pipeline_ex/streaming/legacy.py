"""Run handlers written for the legacy `("chunk", text)` / `("complete", result)` tuples."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline_ex.deprecation import warn_deprecated
from pipeline_ex.events import Delta, Done, Event

LegacyCallback = Callable[[tuple[str, Any]], Any]


class LegacyTupleHandler:
    """Adapts a legacy tuple callable to typed events, with a deprecation warning.

    A text `Delta` becomes `("chunk", text)` and the `Done` becomes `("complete", response)`, where
    `response` is the step's `Response`. Reasoning deltas are not passed on: legacy handlers never saw
    them. Migrate by matching on `Delta(content=...)` and `Done(response=...)` instead.
    """

    def __init__(self, callback: LegacyCallback) -> None:
        name = getattr(callback, "__qualname__", repr(callback))
        warn_deprecated(
            f"legacy tuple handler {name} receives ('chunk', text) / ('complete', result); "
            "rewrite it to take Delta/Done events (see MIGRATION.md, 'Updating Python steps')"
        )
        self.callback = callback
        self.is_async = inspect.iscoroutinefunction(callback)

    @staticmethod
    def to_legacy(event: Event) -> tuple[str, Any] | None:
        """The legacy tuple for an event, or None when legacy handlers never received it."""
        if isinstance(event, Delta):
            return ("chunk", event.content) if event.kind == "text" else None
        if isinstance(event, Done):
            return ("complete", event.response)
        return None  # tool calls and partial objects did not exist for legacy handlers

    def handle_event(self, event: Event) -> Any:
        """Call the legacy callback with the tuple form of the event (awaitable if the callback is async)."""
        legacy = self.to_legacy(event)
        if legacy is not None:
            return self.callback(legacy)
        return self._skip() if self.is_async else None

    @staticmethod
    def _skip() -> Awaitable[None]:
        async def nothing() -> None:
            return None

        return nothing()
