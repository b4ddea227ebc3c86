"""The garbage-collector settings of `pipeline-ex serve`: a process that runs many streams at once.

Every run keeps some dozens of container objects alive while it streams (its coroutines, tasks, step and
bridge). With a thousand runs at once these outlive the young generation by the hundred thousand, and
CPython's default thresholds (700, 10, 10) then run full collections, each walking every object in the
process (haystack's and the app's own included), many times a second. `bench/many_streams.py` measures
it: at 5,000 concurrent 50-chunk streams the collector was about half of `arun`'s overhead per event.

So, once the app is built, `serve` moves everything made at start-up to the permanent generation
(`gc.freeze()`: the collector no longer walks it) and raises the young generation's threshold to
`GEN0_THRESHOLD`. The other thresholds are kept. This is the process's own policy, set by the command
that owns the process; `arun` and `astream` never change the collector of the program that calls them.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
"""Container allocations (net) between young-generation collections in `serve` (CPython's default: 700)."""


def tune_for_many_streams() -> tuple[int, int, int]:
    """Freeze the objects alive now and raise the young generation's threshold; return the old thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, previous[1], previous[2])
    return previous


def restore(previous: tuple[int, int, int]) -> None:
    """Undo `tune_for_many_streams`: unfreeze and set the thresholds back to `previous`."""
    gc.unfreeze()
    gc.set_threshold(*previous)
