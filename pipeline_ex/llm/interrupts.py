"""Hold Ctrl-C back while a sync step hands an event to its handlers.

Python raises `KeyboardInterrupt` between any two bytecodes of the main thread. Landing in the middle of
a fan-out, it would leave one handler with a delta the next one never got, while the step's text already
counts it. While a sync step runs on the main thread, its SIGINT handler is replaced by one that, during
a fan-out, only notes the interrupt; the bridge raises it as soon as every handler has the event. Outside
a fan-out, Ctrl-C interrupts at once, as usual (a blocking read from the provider is interrupted too). A
second Ctrl-C during the same fan-out interrupts at once.

Async runs need none of this: `asyncio.run` turns Ctrl-C into a cancellation, which lands only at an
`await`, and the dispatcher completes a fan-out that a cancellation interrupted.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class InterruptGate:
    """Notes a Ctrl-C that arrives while `holding` is set, to be raised by `release()`."""

    __slots__ = ("holding", "pending")

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler while the gate is installed."""
        if self.holding and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def release(self) -> None:
        """Raise the interrupt that was held back, if there is one."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold Ctrl-C back inside the block; raise it when the block ends."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        self.release()


@contextmanager
def interrupt_gate() -> Iterator[InterruptGate | None]:
    """Install an `InterruptGate` as the SIGINT handler for the block, if this is the main thread.

    Yields None (and changes nothing) on other threads, or when SIGINT already has a handler other than
    Python's default one (an application's own, or asyncio's inside `asyncio.run`). An interrupt still
    held when the block ends is raised then.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # pragma: no cover - no signal support in this interpreter
        previous = None
    if previous is not signal.default_int_handler:
        yield None
        return
    gate = InterruptGate()
    signal.signal(signal.SIGINT, gate.on_sigint)
    try:
        yield gate
    finally:
        signal.signal(signal.SIGINT, previous)
        gate.holding = False
        gate.release()
