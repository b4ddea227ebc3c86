"""`BufferHandler`: keeps a step run's events in memory so they can be queried afterwards."""

from __future__ import annotations

from pipeline_ex.events import Delta, Done, StepEvent


class BufferHandler:
    """Stores every event it receives.

    Query it with `.events`, `.deltas`, `.text` (the joined text deltas), `.done` (the last `Done`, or
    None) and `.by_step` (events grouped by step id).
    """

    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def handle_event(self, event: StepEvent) -> None:
        """Append the event."""
        self.events.append(event)

    @property
    def deltas(self) -> list[Delta]:
        """The Delta events, in arrival order."""
        return [e for e in self.events if isinstance(e, Delta)]

    @property
    def text(self) -> str:
        """The text deltas joined together."""
        return "".join(e.content for e in self.events if isinstance(e, Delta) and e.kind == "text")

    @property
    def done(self) -> Done | None:
        """The most recent Done event, or None if no step has finished yet."""
        for event in reversed(self.events):
            if isinstance(event, Done):
                return event
        return None

    @property
    def dones(self) -> list[Done]:
        """Every Done event, one per finished step run."""
        return [e for e in self.events if isinstance(e, Done)]

    @property
    def by_step(self) -> dict[str, list[StepEvent]]:
        """The events grouped by step id, each group in arrival order."""
        groups: dict[str, list[StepEvent]] = {}
        for event in self.events:
            groups.setdefault(event.step, []).append(event)
        return groups

    def clear(self) -> None:
        """Forget every stored event."""
        self.events.clear()
