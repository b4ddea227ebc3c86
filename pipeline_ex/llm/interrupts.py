"""Hold Ctrl-C back while a sync step is not waiting on its provider.

Python raises `KeyboardInterrupt` between any two bytecodes of the main thread. Landing in the middle of
a fan-out, it would leave one handler with a delta the next one never got, while the step's text already
counts it; landing while the step concludes, it would leave the handlers without their Done. So while a
sync step runs on the main thread, its SIGINT handler is replaced by an `InterruptGate`: the step is held
closed from its start to its end, and opened only around the provider call (and the pause between
retries), where Ctrl-C interrupts at once, as usual (a blocking read from the provider is interrupted
too). Inside the provider call, each fan-out of a delta closes the gate again. An interrupt that arrives
while the gate is closed is noted and raised as soon as the gate opens: when the fan-out is over, or when
the step has delivered its Done. A second Ctrl-C while one is held is raised at once; the dispatcher still
hands the event being delivered to the remaining handlers before it propagates.

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
    """Notes a Ctrl-C that arrives while the gate is closed, to be raised once it opens.

    `closed` counts the nested holds (the step, then a fan-out inside the provider call); 0 is open.
    """

    __slots__ = ("closed", "pending")

    def __init__(self) -> None:
        self.closed = 1  # held from the start of the step
        self.pending = False

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler while the gate is installed."""
        if self.closed and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def release(self) -> None:
        """Raise the interrupt that was held back, if there is one."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Let Ctrl-C interrupt at once inside the block (raising first one that was held back)."""
        self.closed -= 1
        try:
            if not self.closed:
                self.release()
            yield
        finally:
            self.closed += 1


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
        gate.release()
