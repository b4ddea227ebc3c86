"""Telling whoever runs a step that a model is being loaded into this process (the embedded local model).

Loading a llama.cpp model takes a moment before the first token. A caller that wants to show it (the
command line, on a terminal) opens `showing_model_loads(watcher)` around its run; the code that loads a
model wraps the load in `model_loading(name, path)`. The watcher is kept in a `ContextVar`, so it follows
the run into its asyncio tasks and is gone when the block ends: nothing carries over to the next run,
and a run without a watcher pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol


class ModelLoadWatcher(Protocol):
    """Told when a model starts loading and when the load has ended, whether it succeeded or failed."""

    def load_started(self, name: str, size_bytes: int | None) -> None:
        """A model named `name` (its file `size_bytes` long, if known) starts loading."""

    def load_ended(self) -> None:
        """The load that started last has ended (loaded, or failed)."""


_WATCHER: ContextVar[ModelLoadWatcher | None] = ContextVar("pipeline_ex_model_load_watcher", default=None)


@contextmanager
def showing_model_loads(watcher: ModelLoadWatcher) -> Iterator[None]:
    """Within the block, every model load in this context (and the tasks it starts) is told to `watcher`."""
    token = _WATCHER.set(watcher)
    try:
        yield
    finally:
        _WATCHER.reset(token)


@contextmanager
def model_loading(name: str, path: Path) -> Iterator[None]:
    """Wrap the load of a model: the watcher of this context, if any, hears its start and its end.

    The end is told also when the load raises, before the error propagates.
    """
    watcher = _WATCHER.get()
    if watcher is None:
        yield
        return
    try:
        size: int | None = path.stat().st_size
    except OSError:
        size = None
    watcher.load_started(name, size)
    try:
        yield
    finally:
        watcher.load_ended()
