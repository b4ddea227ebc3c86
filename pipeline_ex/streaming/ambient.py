"""Handlers that every step run in the current context receives, without being configured.

Test fixtures use this to record every run of a test (`stream_recorder`). It is a `ContextVar`, so it
follows the code that set it into asyncio tasks and does not leak into other threads' runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_AMBIENT: ContextVar[tuple[Any, ...]] = ContextVar("pipeline_ex_ambient_handlers", default=())


def ambient_handlers() -> tuple[Any, ...]:
    """The handler references every step run in this context receives in addition to its own."""
    return _AMBIENT.get()


@contextmanager
def deliver_everything_to(handler: Any) -> Iterator[None]:
    """Within the block, every step run also delivers its events to `handler`."""
    token = _AMBIENT.set((*_AMBIENT.get(), handler))
    try:
        yield
    finally:
        _AMBIENT.reset(token)
