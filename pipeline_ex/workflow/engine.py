"""Run a workflow's steps: in order, and inside groups at the same time, each LLM step streaming its events.

Every step, of any kind, is bracketed by `StepStarted` and `StepFinished` for the run's lifecycle
observers. Each LLM step *instance* (one per item of a `for_each`, per iteration of a `loop`) is its own
stream: its events carry its path (`sections[2].draft`), it gets fresh handlers, and it ends with exactly
one `Done`, also when a sibling's failure (`on_error: fail_fast`) or the run's cancellation stops it.

Groups run their children as asyncio tasks on the run's loop and always wait for every started child to
finish (deliver its `Done`) before they return or raise, so nothing keeps streaming after its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import ChainMap
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline_ex import tracing
from pipeline_ex.context import Context
from pipeline_ex.errors import Issue, PipelineError, StepError, WorkflowError
from pipeline_ex.events import ErrorInfo, RunFinished, StepFinished, StepStarted, StepStatus, Usage
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.streaming.concurrency import concurrent_region
from pipeline_ex.streaming.resolve import HandlerSpec
from pipeline_ex.workflow import templates
from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow
from pipeline_ex.workflow.observers import RunObservers
from pipeline_ex.workflow.outputs import output_path, write_output
from pipeline_ex.workflow.results import (
    FailedResult,
    ForEachResult,
    LoopResult,
    NestedResult,
    ParallelResult,
    SkippedResult,
)
from pipeline_ex.workflow.schema import (
    ForEachStep,
    LLMStep,
    LoopStep,
    ParallelStep,
    PythonStep,
    SetStep,
    WorkflowStep,
)
from pipeline_ex.workflow.yaml_source import escaped, lone_surrogate

logger = redacting_logger("pipeline_ex")

_CURRENT_FOLDER = Path(".")


@dataclass
class Scope:
    """Where steps run: what their templates see, where their results go, and how their events are named.

    :param loaded: the workflow file the steps come from (for error locations).
    :param own: this scope's results by step id (the run's, an item's, an iteration's, a nested run's).
    :param view: what templates see as `steps`: `own` over the enclosing scopes' results.
    :param prefix: prepended to step ids in event paths (`sections[2].`, `appendix.`).
    """

    loaded: LoadedWorkflow
    inputs: Mapping[str, Any]
    vars: MutableMapping[str, Any]
    own: dict[str, Any]
    view: MutableMapping[str, Any]
    output_dir: Path
    prefix: str = ""
    locals: dict[str, Any] = field(default_factory=dict)
    on_record: Callable[[LoadedStep, Any], None] | None = None
    """Also told of every result recorded here (the run's top level fills `RunResult`)."""

    def values(self) -> dict[str, Any]:
        """What templates see."""
        return {**self.locals, "inputs": self.inputs, "steps": self.view, "vars": self.vars}

    def record(self, item: LoadedStep, result: Any) -> None:
        """Keep a step's result under its id."""
        self.own[item.id] = result
        if self.on_record is not None:
            self.on_record(item, result)

    def inner(
        self, prefix: str, *, own: dict[str, Any] | None = None, locals_: Mapping[str, Any] | None = None
    ) -> Scope:
        """A scope for one item or iteration of a body: its own results over this scope's."""
        own = {} if own is None else own
        return Scope(
            self.loaded,
            self.inputs,
            self.vars,
            own,
            ChainMap(own, self.view),
            self.output_dir,
            prefix,
            {**self.locals, **(locals_ or {})},
        )


class _Stopped(Exception):
    """A step of a body failed under `on_error: continue`: the rest of that item or iteration is skipped."""


class Engine:
    """Runs the steps of one run (see the module docstring)."""

    def __init__(
        self,
        ctx: Context,
        observers: RunObservers,
        *,
        default_handler: HandlerSpec | None,
    ) -> None:
        self.ctx = ctx
        self.observers = observers
        self.default_handler = default_handler
        self.usage: list[Usage] = []
        """The usage every LLM step instance reported, for `RunFinished`."""
        self.outputs: dict[str, Path] = {}
        """Step path -> the file its `output_to_file` wrote."""
        self.output_root = _CURRENT_FOLDER
        """The run's output directory (nested workflows write below it, in a folder named by their path)."""
        self.on_output: Callable[[str, Path], None] | None = None
        """Called with the step path and the file each time `output_to_file` writes one (see `arun`)."""
        self.attempt = 1
        """The attempt of the top-level step running, which its `StepStarted` events (its children's too) carry."""

    # -- templates ---------------------------------------------------------------------------------

    def _location_issue(self, scope: Scope, item: LoadedStep, key: str, message: str) -> WorkflowError:
        return WorkflowError([Issue(scope.loaded.location(*item.path, *key.split(".")), message)])

    def render(self, source: str, item: LoadedStep, key: str, scope: Scope) -> str:
        """Render one of a step's templates; a failure names the file, line and key."""
        try:
            text = templates.render(source, scope.values())
        except Exception as error:
            raise self._location_issue(scope, item, key, f"template failed: {type(error).__name__}: {error}") from error
        at = lone_surrogate(text)
        if at is not None:
            message = (
                f"the rendered {key} has a lone surrogate ({escaped(text[at])}) at character {at + 1}, which is "
                "not text; it comes from a value the template reads (a python step's result?)"
            )
            raise self._location_issue(scope, item, key, message)
        return text

    def evaluate(self, source: Any, item: LoadedStep, key: str, scope: Scope) -> Any:
        """The value of a condition, list or input: YAML values as they are, templates evaluated."""
        if not isinstance(source, str):
            return source
        try:
            return templates.evaluate(source, scope.values())
        except Exception as error:
            raise self._location_issue(scope, item, key, f"template failed: {type(error).__name__}: {error}") from error

    # -- steps -------------------------------------------------------------------------------------

    async def run_steps(self, items: list[LoadedStep], scope: Scope, *, keep_going: bool = False) -> None:
        """Run steps one after another. With `keep_going` a failed step is recorded and stops the rest."""
        for item in items:
            await self.run_step(item, scope, keep_going=keep_going)

    async def run_step(self, item: LoadedStep, scope: Scope, *, keep_going: bool = False) -> None:
        """Run one step of any kind between its `StepStarted` and `StepFinished`, in its span when traced.

        :param keep_going: see `_run_step`.
        """
        tracer = self.ctx.run_tracer()
        if tracer is None:
            await self._run_step(item, scope, keep_going)
            return
        stopped: _Stopped | None = None
        with tracing.step_span(tracer, scope.prefix + item.id, item.spec.type, self.attempt) as span:
            try:
                await self._run_step(item, scope, keep_going)
            except _Stopped as failure:  # recorded as the step's result; the span records the step's own error
                stopped = failure
                span.set_attribute("pipeline_ex.step.status", "failed")
                tracing.record_failure(span, failure.__cause__ or failure)
            else:
                if isinstance(scope.own.get(item.id), SkippedResult):
                    span.set_attribute("pipeline_ex.step.status", "skipped")
        if stopped is not None:
            raise stopped

    async def _run_step(self, item: LoadedStep, scope: Scope, keep_going: bool) -> None:
        """Run one step of any kind between its `StepStarted` and `StepFinished`.

        :param keep_going: the step is in a group with `on_error: continue`: a failure is recorded as its
            result (`FailedResult`) and `_Stopped` is raised instead of the error.
        """
        path = scope.prefix + item.id
        ctx = self.ctx
        observed = self.observers.wants_lifecycle  # without observers, no seq is spent on lifecycle events
        started = time.perf_counter()
        status: StepStatus = "ok"
        error_info: ErrorInfo | None = None
        try:
            if observed:
                kind = item.spec.type
                seq = ctx.next_seq()
                started_event = StepStarted(step=path, run_id=ctx.run_id, seq=seq, kind=kind, attempt=self.attempt)
                await self.observers.emit(started_event)
            when = item.spec.when
            if when is not None and not self.evaluate(when, item, "when", scope):
                status = "skipped"
                scope.record(item, SkippedResult(path))
            else:
                await self._dispatch(item, scope, path)
        except asyncio.CancelledError:
            status, error_info = "cancelled", ErrorInfo(type="cancelled", message="the run was cancelled")
            raise
        except Exception as error:
            status, error_info = "failed", error_info_of(error)
            if not keep_going:
                raise
            scope.record(item, _failed(path, error))
            raise _Stopped from error
        finally:
            if observed:
                duration = (time.perf_counter() - started) * 1000
                finished = StepFinished(
                    step=path,
                    run_id=ctx.run_id,
                    seq=ctx.next_seq(),
                    status=status,
                    duration_ms=duration,
                    error=error_info,
                )
                await emit_keeping_the_outcome(self.observers, finished, failing=status != "ok")

    async def _dispatch(self, item: LoadedStep, scope: Scope, path: str) -> None:
        spec = item.spec
        if isinstance(spec, LLMStep):
            await self._llm(item, spec, scope, path)
        elif isinstance(spec, PythonStep):
            await self._python(item, spec, scope)
        elif isinstance(spec, SetStep):
            self._set(item, spec, scope)
        elif isinstance(spec, ParallelStep):
            await self._parallel(item, spec, scope, path)
        elif isinstance(spec, ForEachStep):
            await self._for_each(item, spec, scope, path)
        elif isinstance(spec, LoopStep):
            await self._loop(item, spec, scope, path)
        elif isinstance(spec, WorkflowStep):
            await self._nested(item, spec, scope, path)

    async def _llm(self, item: LoadedStep, step: LLMStep, scope: Scope, path: str) -> None:
        from pipeline_ex.llm.step import ainvoke

        handlers: list[Any] = list(item.handlers)
        if not handlers and self.default_handler is not None:
            handlers = [self.default_handler]
        prompt = self.render(step.prompt, item, "prompt", scope) if step.prompt is not None else None
        system = self.render(item.system, item, "system", scope) if item.system else None
        messages = self._messages(item, step, scope, system) if step.messages is not None else None
        tools = self._tools(item, scope) if item.tools else None
        relative = step.output_to_file
        if relative is not None:
            if "{" in relative:
                relative = self.render(relative, item, "output_to_file", scope)
            output_path(scope.output_dir, relative, path)  # a file that cannot be written fails before the call
        options = item.options
        if item.mock_response is not None:  # the step's own reply wins over one in its options
            options = {**options, "mock_response": item.mock_response}
        try:
            result = await ainvoke(
                self.ctx,
                prompt=prompt,
                messages=messages,
                tools=tools,
                max_tool_rounds=item.max_tool_rounds,
                output_schema=item.output_schema,
                schema_retries=item.schema_retries,
                provider=item.provider,
                model=item.model,
                system=system,
                stream=item.stream,
                on_event=handlers,
                step=path,
                **options,
            )
        except StepError as error:
            self._count(error.done.response.usage)
            if relative is not None:
                try:
                    partial = write_output(scope.output_dir, relative, error.done.response.text, path)
                except PipelineError as output_error:
                    error.add_note(str(output_error))  # the step's own failure stays the error raised
                else:
                    self._wrote(path, partial)
            raise
        self._count(result.response.usage)
        scope.record(item, result)
        if relative is not None:
            self.outputs[path] = write_output(scope.output_dir, relative, result.text, path)
            self._wrote(path, self.outputs[path])

    def _wrote(self, path: str, file: Path) -> None:
        if self.on_output is not None:
            self.on_output(path, file)

    def _messages(self, item: LoadedStep, step: LLMStep, scope: Scope, system: str | None) -> list[Any]:
        """The step's conversation: its messages rendered, and the chat histories its expressions give."""
        from pipeline_ex.llm.messages import MessageError, chat_messages

        entries: list[Any] = []
        for position, entry in enumerate(step.messages or []):
            if isinstance(entry, str):
                history = self.evaluate(entry, item, "messages", scope)
                if isinstance(history, tuple):
                    history = list(history)
                if not isinstance(history, list):
                    message = f"this messages entry must give a list of messages, but it gave {_kind_of(history)}"
                    raise WorkflowError([Issue(scope.loaded.location(*item.path, "messages", position), message)])
                entries.extend(history)
            else:
                content = self.render(entry.content, item, "messages", scope)
                entries.append({"role": entry.role, "content": content})
        try:
            return chat_messages(entries, system)
        except MessageError as error:
            raise self._location_issue(scope, item, "messages", str(error)) from None

    def _tools(self, item: LoadedStep, scope: Scope) -> list[Any]:
        """The step's tools, with the declared tools its expressions give added."""
        from pipeline_ex.llm.tools import ToolSpecError, declared_tool, tool_name

        tools: list[Any] = []
        for position, entry in enumerate(item.tools):
            if not isinstance(entry, str):
                tools.append(entry)
                continue
            where = scope.loaded.location(*item.path, "tools", position)
            given = self.evaluate(entry, item, "tools", scope)
            if not isinstance(given, list | tuple):
                message = f"this tools entry must give a list of tool declarations, but it gave {_kind_of(given)}"
                raise WorkflowError([Issue(where, message)])
            for spec in given:
                try:
                    if not isinstance(spec, Mapping):
                        raise ToolSpecError(f"a tool declaration is a mapping with a 'name', got {_kind_of(spec)}")
                    tools.append(declared_tool(spec))
                except ToolSpecError as error:
                    raise WorkflowError([Issue(where, str(error))]) from None
        names = [tool_name(tool) for tool in tools]
        clash = next((name for name in names if name is not None and names.count(name) > 1), None)
        if clash is not None:
            message = f"two tools are named {clash!r} once the templated tools are added; give each its own name"
            raise self._location_issue(scope, item, "tools", message)
        return tools

    def _count(self, usage: Usage | None) -> None:
        if usage is not None:
            self.usage.append(usage)

    async def _python(self, item: LoadedStep, step: PythonStep, scope: Scope) -> None:
        assert item.function is not None
        ctx = self.ctx
        if scope.own is not ctx.steps:  # inside a body or a nested workflow: what its templates would see
            ctx = replace(ctx, steps=dict(scope.view), inputs=dict(scope.inputs), vars=dict(scope.vars))
        value = item.function(ctx, **step.args)
        if asyncio.iscoroutine(value):
            value = await value
        scope.record(item, value)

    def _set(self, item: LoadedStep, step: SetStep, scope: Scope) -> None:
        values: dict[str, Any] = {}
        for name, value in step.vars.items():
            values[name] = self.render(value, item, f"vars.{name}", scope) if isinstance(value, str) else value
            scope.vars[name] = values[name]
        scope.record(item, values)

    # -- groups ------------------------------------------------------------------------------------

    async def _parallel(self, item: LoadedStep, step: ParallelStep, scope: Scope, path: str) -> None:
        group = ParallelResult()
        keep_going = step.on_error == "continue"

        def child_runner(child: LoadedStep) -> Callable[[], Awaitable[None]]:
            async def run_child() -> None:
                with contextlib.suppress(_Stopped):
                    await self.run_step(child, scope, keep_going=keep_going)
                group.steps[child.id] = scope.own.get(child.id)

            return run_child

        width = min(step.max_parallel or len(item.children), len(item.children))
        await self._together([child_runner(c) for c in item.children], width, path, fail_fast=not keep_going)
        scope.record(item, group)

    async def _for_each(self, item: LoadedStep, step: ForEachStep, scope: Scope, path: str) -> None:
        values = self.evaluate(step.for_each, item, "for_each", scope)
        if isinstance(values, tuple):
            values = list(values)
        if not isinstance(values, list):
            raise self._location_issue(
                scope, item, "for_each", f"for_each needs a list, but it gave {_kind_of(values)}: {values!r:.80}"
            )
        group = ForEachResult(items=[{} for _ in values])
        scope.record(item, group)
        keep_going = step.on_error == "continue"

        def item_runner(index: int, value: Any) -> Callable[[], Awaitable[None]]:
            async def run_item() -> None:
                inner = scope.inner(f"{path}[{index}].", own=group.items[index], locals_={step.as_: value})
                inner.vars = ChainMap({}, scope.vars)  # what a `set` step of one item sets is that item's
                with contextlib.suppress(_Stopped):
                    await self.run_steps(item.children, inner, keep_going=keep_going)

            return run_item

        runners = [item_runner(i, v) for i, v in enumerate(values)]
        await self._together(runners, min(step.max_parallel, len(runners)), path, fail_fast=not keep_going)

    async def _loop(self, item: LoadedStep, step: LoopStep, scope: Scope, path: str) -> None:
        group = LoopResult()
        scope.record(item, group)
        until = step.loop.until
        for index in range(step.loop.max_iterations):
            inner = scope.inner(f"{path}[{index}].")
            await self.run_steps(item.children, inner)
            group.iterations.append(inner.own)
            if until is not None and self.evaluate(until, item, "loop.until", inner):
                group.stopped_by = "until"
                return
        group.stopped_by = "max_iterations"

    async def _nested(self, item: LoadedStep, step: WorkflowStep, scope: Scope, path: str) -> None:
        from pipeline_ex.workflow.runner import InputError, resolve_inputs

        nested = item.nested
        assert nested is not None
        given = {name: self.evaluate(value, item, f"inputs.{name}", scope) for name, value in step.inputs.items()}
        try:
            inputs = resolve_inputs(nested, given)
        except InputError as error:
            raise self._location_issue(scope, item, "inputs", f"{step.workflow!r}: {error}") from None
        result = NestedResult(nested.name)
        scope.record(item, result)
        inner = Scope(
            nested,
            inputs,
            {},
            result.steps,
            result.steps,
            self.output_root / _folder_of(path),
            f"{path}.",
        )
        await self.run_steps(nested.steps, inner)

    async def _together(
        self, runners: list[Callable[[], Awaitable[None]]], width: int, path: str, *, fail_fast: bool
    ) -> None:
        """Run `runners` at most `width` at a time; wait for every started one, whatever happens.

        With `fail_fast`, the first failure cancels the others (those not started never start) and is
        raised once every started one has delivered its Done. Cancelling this coroutine cancels them all
        the same way.
        """
        if width <= 1:
            for runner in runners:
                await runner()
            return
        gate = asyncio.Semaphore(width)

        async def gated(runner: Callable[[], Awaitable[None]]) -> None:
            async with gate:
                await runner()

        with concurrent_region(path, width):  # closed once every child has finished
            tasks = [asyncio.ensure_future(gated(runner)) for runner in runners]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION if fail_fast else asyncio.ALL_COMPLETED)
            except asyncio.CancelledError:
                await _cancel_and_settle(tasks)
                raise
            failure = next((t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
            if failure is not None or any(not t.done() for t in tasks):
                await _cancel_and_settle(tasks)
            if failure is not None:
                raise failure


async def emit_keeping_the_outcome(
    observers: RunObservers, event: StepFinished | RunFinished, *, failing: bool
) -> None:
    """Deliver the lifecycle event that ends a step or a run, from the `finally` that ends it.

    When the step or run is already failing or being cancelled, an observer that raises on this event
    must not replace that outcome: its failure is logged and the original exception goes on.
    """
    if not failing:
        await observers.emit(event)
        return
    try:
        await observers.emit(event)
    except PipelineError as error:
        logger.error("%s; the %s outcome stands", error, getattr(event, "step", None) or "run's")


async def _cancel_and_settle(tasks: Sequence[asyncio.Future[None]]) -> None:
    """Cancel every task that is not done and wait until all are, even if this wait is cancelled too."""
    for task in tasks:
        task.cancel()
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
            for task in pending:
                task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the group reports the first failure itself
    if interrupted:
        raise asyncio.CancelledError


def _folder_of(path: str) -> str:
    """The output folder of a nested workflow step: its path with indexes as folders (`sections/2/appendix`)."""
    return path.replace("[", "/").replace("]", "").replace(".", "/")


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "nothing (None)" if value is None else f"a {type(value).__name__}"


def error_info_of(error: BaseException) -> ErrorInfo:
    """What a lifecycle event says about a failure: the failing step's own error, or the exception's."""
    if isinstance(error, StepError) and error.done.error is not None:
        return error.done.error
    if isinstance(error, KeyboardInterrupt):
        return ErrorInfo(type="cancelled", message="interrupted")
    return ErrorInfo(
        type="provider" if isinstance(error, StepError) else "step",
        message=str(error)[:2000],
        exception=f"{type(error).__module__}.{type(error).__qualname__}",
    )


def _failed(path: str, error: BaseException) -> FailedResult:
    if isinstance(error, StepError):
        info = error.done.error
        return FailedResult(path, str(error), info.type if info is not None else "provider", error.done.response.text)
    return FailedResult(path, str(error), type(error).__name__)
