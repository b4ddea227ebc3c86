"""`CallbackHandler`: route deltas and the final Done to two plain Python functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline_ex.events import Delta, Done, Event


class CallbackHandler:
    """Calls `on_delta(delta)` for each Delta and `on_done(done)` for the Done. Python API only.

    Either callback may be omitted. For a single function that sees every event, pass the function
    itself as `on_event=` instead.
    """

    def __init__(
        self,
        on_delta: Callable[[Delta], Any] | None = None,
        on_done: Callable[[Done], Any] | None = None,
    ) -> None:
        self.on_delta = on_delta
        self.on_done = on_done

    def handle_event(self, event: Event) -> None:
        """Forward the event to the matching callback."""
        if isinstance(event, Delta):
            if self.on_delta is not None:
                self.on_delta(event)
        elif isinstance(event, Done) and self.on_done is not None:
            self.on_done(event)
