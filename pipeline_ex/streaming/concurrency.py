"""Which steps run at the same time: the region a `parallel` group or a `for_each` opens for its children.

The runner opens a `ConcurrentRegion` around the children of a group that can run more than one step at
once, and every step instance inside it sees the region as `current_region()` (a `ContextVar`, so it
follows the children into their asyncio tasks and worker threads). Handlers that write to a shared
place, such as the console, use it to avoid interleaving the tokens of concurrent steps. Outside any
region, steps run one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(eq=False)
class ConcurrentRegion:
    """A group of steps that may run at the same time.

    :param group: the path of the group step (`views`, `sections`, `report[2].views`).
    :param width: the most step instances that can run at once inside it (2 or more).
    """

    group: str
    width: int
    parent: ConcurrentRegion | None = None
    """The region this one is nested in (a `for_each` inside a `parallel` branch)."""
    closed: bool = False
    _on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def root(self) -> ConcurrentRegion:
        """The outermost region: shared places (the console) are coordinated there."""
        region = self
        while region.parent is not None:
            region = region.parent
        return region

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when the group has finished (right away if it already has)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        """The group finished: every step inside it has delivered its Done."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()


_REGION: ContextVar[ConcurrentRegion | None] = ContextVar("pipeline_ex_concurrent_region", default=None)


def current_region() -> ConcurrentRegion | None:
    """The innermost concurrent region the current step runs in, or None when it runs on its own."""
    return _REGION.get()


@contextmanager
def concurrent_region(group: str, width: int) -> Iterator[ConcurrentRegion]:
    """Open a region for the children of `group` (steps started inside the block see it); closed on exit.

    A region opened inside another one (a `for_each` inside a `parallel` branch) has it as `parent`;
    the outer one stays open until its own group ends.
    """
    region = ConcurrentRegion(group, width, parent=_REGION.get())
    token = _REGION.set(region)
    try:
        yield region
    finally:
        _REGION.reset(token)
        region.close()
