"""`NullHandler`: accepts every event and does nothing."""

from __future__ import annotations

from pipeline_ex.events import Event


class NullHandler:
    """Discards every event. Useful to benchmark a step, or to silence a workflow's default handler."""

    def handle_event(self, event: Event) -> None:
        """Ignore the event."""
