"""Run-level observers: the extra handlers a run is given, and which of them receive lifecycle events.

A step's own `stream_handler` receives only that step's `Delta` and `Done`. The handlers given to a run
(`on_event=`, and those a test fixture adds) receive every step's events, and lifecycle events too
(`StepStarted`, `StepFinished`, `RunFinished`) when they ask for them:
- the run is started with `lifecycle=True`, or
- the handler (an object, or a class given as such) declares `lifecycle = True`, as `StreamingRecorder`
  does. A handler named by a string is known only by name here, so it needs `lifecycle=True`.

An observer that receives lifecycle events watches the whole run, so it is made once per run (a class is
instantiated once), not once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import LifecycleEvent
from pipeline_ex.streaming.ambient import ambient_handlers
from pipeline_ex.streaming.dispatch import BoundHandler, Dispatcher, HandlerFailure
from pipeline_ex.streaming.resolve import HandlerSpec, normalize_handlers, resolve_handler


def wants_lifecycle(handler: Any) -> bool:
    """Whether a handler (an object, its bound method, or its class) declares `lifecycle = True`."""
    owner = getattr(handler, "__self__", handler)
    return getattr(owner, "lifecycle", False) is True


@dataclass
class RunObservers:
    """The run-level handlers of one run: what every step also delivers to, and who gets lifecycle events.

    :param step_handlers: handler references each step adds to its own (they go on the run's `Context`).
    :param lifecycle: the observers that receive lifecycle events, bound once for the run.
    """

    step_handlers: list[Any] = field(default_factory=list)
    lifecycle: list[BoundHandler] = field(default_factory=list)
    _dispatcher: Dispatcher | None = None

    @classmethod
    def of(cls, on_event: Any, *, lifecycle: bool) -> RunObservers:
        """Sort a run's `on_event` handlers (and the ambient ones) into per-step and lifecycle observers."""
        observers = cls()
        for ref in normalize_handlers(on_event):
            spec = ref if isinstance(ref, HandlerSpec) else resolve_handler(ref)
            if lifecycle or wants_lifecycle(ref):  # an object or a class that declares it
                bound = spec.bind()
                observers.lifecycle.append(bound)
                observers.step_handlers.append(HandlerSpec(spec.name, spec.is_async, _same(bound)))
            else:
                observers.step_handlers.append(spec)
        for ref in ambient_handlers():  # the steps add these themselves; only their lifecycle events are ours
            handler = getattr(ref, "handle_event", ref)
            if wants_lifecycle(handler) and callable(handler):
                spec = resolve_handler(ref)
                observers.lifecycle.append(spec.bind())
        if observers.lifecycle:
            observers._dispatcher = Dispatcher(observers.lifecycle)
        return observers

    @property
    def wants_lifecycle(self) -> bool:
        """Whether any observer receives lifecycle events (otherwise the run builds none)."""
        return self._dispatcher is not None

    @property
    def is_async(self) -> bool:
        """Whether an observer is async (then delivery awaits it)."""
        return self._dispatcher is not None and self._dispatcher.is_async

    def emit_sync(self, event: LifecycleEvent) -> None:
        """Deliver a lifecycle event to sync observers (only valid when `is_async` is false)."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.emit(event)  # type: ignore[arg-type]
        except HandlerFailure as failure:
            raise _observer_failed(failure, event) from failure.error

    async def emit(self, event: LifecycleEvent) -> None:
        """Deliver a lifecycle event to every observer that asked for them.

        :raises PipelineError: naming the observer and the event, when an observer raises.
        """
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        if not dispatcher.is_async:
            self.emit_sync(event)
            return
        try:
            await dispatcher.aemit(event)  # type: ignore[arg-type]
        except HandlerFailure as failure:
            raise _observer_failed(failure, event) from failure.error


def _observer_failed(failure: HandlerFailure, event: LifecycleEvent) -> PipelineError:
    where = getattr(event, "step", None) or "the run"
    return PipelineError(f"{failure} (on the {event.type} event of {where})")


def _same(bound: BoundHandler) -> Any:
    def make() -> Any:
        return bound.fn

    return make
