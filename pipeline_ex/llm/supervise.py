"""Run a step's generator call under its time limits: the whole-step `timeout` and the `chunk_timeout`.

The call runs as a task; the supervisor sleeps until the nearer limit and, if the task has not finished
and no chunk arrived in time, cancels it (which closes the provider stream) and raises `StepTimeout`.
It wakes only at deadlines, never on a polling interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pipeline_ex.llm.policy import StepPolicy, StepTimeout

T = TypeVar("T")


async def run_with_limits(
    call: Awaitable[T],
    policy: StepPolicy,
    *,
    started: float,
    attempt_started: float,
    last_chunk: Callable[[], float | None],
    busy: Callable[[], str | None] = lambda: None,
) -> T:
    """Await `call`, cancelling it when a limit passes.

    :param started: when the step started (`time.perf_counter()`); `timeout` counts from here.
    :param attempt_started: when this attempt started; the first chunk's gap counts from here.
    :param last_chunk: the time the latest chunk arrived, or None before the first one.
    :param busy: what the step is doing besides waiting for chunks (the tools it runs), for the message.
    """
    task = asyncio.ensure_future(call)
    try:
        while True:
            step_deadline = started + policy.timeout if policy.timeout is not None else None
            gap_deadline = None
            if policy.chunk_timeout is not None:
                gap_deadline = (last_chunk() or attempt_started) + policy.chunk_timeout
            deadline = min(d for d in (step_deadline, gap_deadline) if d is not None)
            remaining = deadline - time.perf_counter()
            if remaining > 0:
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
                continue  # a chunk may have moved the gap deadline: recompute
            if step_deadline is not None and time.perf_counter() >= step_deadline:
                message = f"the step did not finish within its timeout of {policy.timeout:g} s"
            else:
                message = f"no chunk arrived for {policy.chunk_timeout:g} s (chunk_timeout)"
                running = busy()
                if running:
                    message += f" while the tool(s) {running} ran; chunk_timeout bounds tool rounds too: raise it"
            raise StepTimeout(message)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
