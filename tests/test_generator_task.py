"""A generator whose streams are long runs in a task of its own; short ones are awaited in the run's task."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pipeline_ex import Delta, Done, arun, astream
from pipeline_ex.llm import step
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator
from pipeline_ex.workflow import parse_workflow


class TaskReporter:
    """A handler noting the task each step's first Delta was delivered in (the generator's task)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []
        self._seen: set[str] = set()

    def __call__(self, event: Any) -> None:
        if isinstance(event, Delta) and event.run_id not in self._seen:
            self._seen.add(event.run_id)
            self.tasks.append(asyncio.current_task())


@pytest.fixture
def provider() -> Iterator[str]:
    name = "task-reporting"
    yield name
    PROVIDERS.pop(name, None)
    step._streams_long.pop(ScriptedChatGenerator, None)


def _register(name: str, generator: ScriptedChatGenerator) -> None:
    def build(model: str | None, options: Mapping[str, Any]) -> BuiltGenerator:
        return BuiltGenerator(generator, name, "test", owned=False)

    PROVIDERS[name] = build


def _workflow(provider: str) -> Any:
    return parse_workflow(f"- id: s\n  provider: {provider}\n  prompt: p\n  stream_handler: 'null'\n", "t.yaml")


@pytest.mark.streaming
@pytest.mark.live  # an in-process generator registered as a provider
def test_after_a_long_stream_the_next_call_runs_in_its_own_task_and_streams_the_same(provider: str) -> None:
    words = [f"w{i} " for i in range(step.LONG_STREAM_CHUNKS + 2)]
    _register(provider, ScriptedChatGenerator(words, usage=None, yield_to_loop=True))
    reporter = TaskReporter()
    flow = _workflow(provider)

    async def twice() -> list[Any]:
        results = []
        for _ in range(2):
            run_task = asyncio.current_task()
            result = await arun(flow, on_event=reporter)
            results.append((run_task, result))
        return results

    (first_task, first), (second_task, second) = asyncio.run(twice())
    assert reporter.tasks[0] is first_task  # the first call: no history, awaited in the run's own task
    assert reporter.tasks[1] is not second_task and reporter.tasks[1] is not None
    assert first.text == second.text == "".join(words)


@pytest.mark.streaming
@pytest.mark.live  # an in-process generator registered as a provider
def test_short_streams_stay_in_the_runs_task(provider: str) -> None:
    _register(provider, ScriptedChatGenerator(["one ", "two"], usage=None, yield_to_loop=True))
    reporter = TaskReporter()
    flow = _workflow(provider)

    async def twice() -> list[asyncio.Task[Any] | None]:
        tasks = []
        for _ in range(2):
            tasks.append(asyncio.current_task())
            await arun(flow, on_event=reporter)
        return tasks

    assert reporter.tasks == asyncio.run(twice())


@pytest.mark.streaming
@pytest.mark.live  # an in-process generator registered as a provider
def test_cancelling_a_run_whose_generator_has_its_own_task_cancels_that_task_and_ends_with_one_done(
    provider: str,
) -> None:
    words = [f"w{i} " for i in range(200)]
    _register(provider, ScriptedChatGenerator(words, usage=None, yield_to_loop=True))
    reporter = TaskReporter()
    flow = _workflow(provider)
    step._streams_long[ScriptedChatGenerator] = True

    async def cancel_midway() -> list[Any]:
        events = []
        stream = astream(flow, on_event=reporter)
        async for event in stream:
            events.append(event)
            if len(events) == 5:
                stream.cancel()
        return events

    events = asyncio.run(cancel_midway())
    inner = reporter.tasks[0]
    assert inner is not None and inner.cancelled()
    dones = [event for event in events if isinstance(event, Done)]
    assert len(dones) == 1 and dones[0].response.finish_reason == "cancelled"
    assert dones[0].response.text == "".join(words[: len(events) - 1])
