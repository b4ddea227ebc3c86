"""Run a loaded workflow: steps in order, each LLM step streaming to its handlers.

`run` is `arun` on a fresh event loop; both take a path or a `LoadedWorkflow`. The step results keep
the model's full text whatever the handlers do with the stream.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import os
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ex.context import Context, new_run_id
from pipeline_ex.errors import PipelineError
from pipeline_ex.events import ErrorInfo, RunFinished, RunStatus
from pipeline_ex.llm.normalize import add_usage
from pipeline_ex.modes.session import session_for_run
from pipeline_ex.running_loop import run_to_completion
from pipeline_ex.streaming.resolve import HandlerSpec, resolve_handler
from pipeline_ex.tracing import active_tracer, run_span
from pipeline_ex.workflow.checkpoints import CheckpointStore
from pipeline_ex.workflow.durable import DurableRun
from pipeline_ex.workflow.engine import Engine, Scope, emit_keeping_the_outcome, error_info_of
from pipeline_ex.workflow.inputs import InputValueError, typed_value
from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow, check_live_providers, load_workflow
from pipeline_ex.workflow.observers import RunObservers
from pipeline_ex.workflow.outputs import output_directory, output_path
from pipeline_ex.workflow.results import FailedResult, SkippedResult, jsonable, result_json
from pipeline_ex.workflow.schema import LLMStep, PythonStep


class InputError(PipelineError):
    """The inputs given to a run do not match the workflow's declared inputs."""

    def __init__(self, message: str, *, missing: str | None = None) -> None:
        self.missing = missing
        """The name of a required input that was not given, if that is the problem."""
        super().__init__(message)


@dataclass
class RunResult:
    """What a run produced: each step's result, python step values, variables and files."""

    run_id: str
    workflow: str
    steps: dict[str, Any] = field(default_factory=dict)
    """Step id -> result: an LLM step's `StepResult` (parallel children too, by their own ids), a group's
    result (`ForEachResult`, `LoopResult`, `ParallelResult`, `NestedResult`), `SkippedResult` or `FailedResult`."""
    values: dict[str, Any] = field(default_factory=dict)
    """Python step id -> the value its callable returned."""
    vars: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    """Step path -> the file `output_to_file` wrote."""
    status: RunStatus = "ok"

    @property
    def text(self) -> str:
        """The text of the last LLM step that ran at the top level."""
        texts = [value.text for value in self.steps.values() if hasattr(value, "done")]
        return texts[-1] if texts else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: every step's text, finish reason, usage and timing; groups with their children."""
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "steps": {step_id: result_json(result) for step_id, result in self.steps.items()},
            "values": {k: jsonable(v) for k, v in self.values.items()},
            "vars": {k: jsonable(v) for k, v in self.vars.items()},
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }


def resolve_inputs(loaded: LoadedWorkflow, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check `given` against the declared inputs and fill in defaults.

    Text is read as the declared type; other values must already have it (see `pipeline_ex.workflow.inputs`).

    :raises InputError: for an undeclared input (with "did you mean"), a missing required one, or a value
        that does not have the declared type, naming the input and the line that declares it.
    """
    declared = loaded.workflow.inputs
    given = dict(given or {})
    for name in given:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=1)
            known = ", ".join(declared) or "none"
            raise InputError(
                f"unknown input {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; declared: {known}"
            )
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            try:
                values[name] = typed_value(spec.type, given[name])
            except InputValueError as problem:
                raise InputError(f"input {name!r} {problem} (declared at {_declared_at(loaded, name)})") from None
        elif "default" in spec.model_fields_set:
            values[name] = spec.default
        else:
            raise InputError(f"missing input {name!r} (declared at {_declared_at(loaded, name)})", missing=name)
    return values


def _declared_at(loaded: LoadedWorkflow, name: str) -> str:
    """`file.yaml:LINE` of an input's declaration: the file's name only, so no server path is shown."""
    where = loaded.location("inputs", name, at_key=True)
    return f"{Path(where.file or '').name}:{where.line}"


def check_outputs(loaded: LoadedWorkflow, output_dir: Path) -> None:
    """Fail before the first step when an `output_to_file` cannot be written as things are on disk."""
    for item in loaded.all_steps():
        target = item.spec.output_to_file if isinstance(item.spec, LLMStep) else None
        if target is not None and "{" not in target:
            output_path(output_dir, target, item.id)


def _record_top(result: RunResult) -> Any:
    def record(item: LoadedStep, value: Any) -> None:
        if isinstance(value, SkippedResult | FailedResult) or item.kind not in ("python", "set"):
            result.steps[item.id] = value
        elif isinstance(item.spec, PythonStep):
            result.values[item.id] = value

    return record


def _as_loaded(workflow: str | os.PathLike[str] | LoadedWorkflow, mock: bool) -> LoadedWorkflow:
    if isinstance(workflow, LoadedWorkflow):
        return workflow
    return load_workflow(workflow, mock=mock)


async def arun(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    lifecycle: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    default_handler: Any = None,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
    on_output: Callable[[str, Path], None] | None = None,
) -> RunResult:
    """Run a workflow on the running event loop and return its `RunResult`.

    :param workflow: a path to a workflow file, or a workflow from `load_workflow`.
    :param inputs: values for the declared inputs; missing ones take their defaults.
    :param mock: run every LLM step on the mock provider (as `PIPELINE_TEST_MODE=mock` does).
    :param on_event: an extra handler (or list) that receives every event of every step, in addition
        to the handlers the workflow configures.
    :param lifecycle: `on_event` handlers also receive `StepStarted`, `StepFinished` and `RunFinished`
        (a handler class that declares `lifecycle = True` always does).
    :param output_dir: where `output_to_file` writes (default: `PIPELINE_OUTPUT_DIR`, then `./outputs`).
    :param run_id: the id every event carries (a fresh one by default).
    :param default_handler: the handler (a reference, as `on_event` takes) of steps that configure none;
        `pipeline-ex run` uses the console.
    :param checkpoints: save a checkpoint after each top-level step there (see `checkpoints`); removed
        when the run succeeds.
    :param resume: continue the checkpoint `checkpoints` has for `run_id`, if it has one: its finished
        steps are not run again, the interrupted one starts as its next attempt, and the inputs are the
        checkpoint's (pass none, or the same).
    :param on_output: called with the step path and the file each time `output_to_file` writes one, a
        failed step's partial text included, so a caller knows the files also when the run fails.
    :raises StepError: after the failing step's Done was delivered (and `RunFinished`).
    :raises InputError, WorkflowError, PipelineError: for inputs, providers or output paths that cannot
        work, before the first step starts (and before any event).
    :raises ResumeError: `resume` found a checkpoint that does not fit (another workflow, a changed file,
        other inputs).
    """
    loaded = _as_loaded(workflow, mock)
    if resume and (checkpoints is None or run_id is None):
        raise PipelineError("resume=True needs checkpoints= and the run_id= of the run to continue")
    durable: DurableRun | None = None
    if checkpoints is None:
        resolved = resolve_inputs(loaded, inputs)
    else:
        run_id = run_id or new_run_id()
        found = await checkpoints.load(run_id) if resume else None
        resolved = resolve_inputs(loaded, inputs if found is None or inputs else found.inputs)
        durable = await DurableRun.open(checkpoints, loaded, run_id, resolved, found=found, given_inputs=bool(inputs))
    ctx = Context(inputs=resolved, name=loaded.name)
    ctx.session = session_for_run(loaded.name, mock=mock)
    if ctx.session.mode in ("live", "record") and not ctx.session.mock_steps and loaded.checked_offline:
        check_live_providers(loaded)
    if run_id is not None:
        ctx.run_id = run_id
    observers = RunObservers.of(on_event, lifecycle=lifecycle)
    ctx.handlers = observers.step_handlers
    folder = output_directory(output_dir)
    check_outputs(loaded, folder)
    fallback = None
    if default_handler is not None:
        fallback = default_handler if isinstance(default_handler, HandlerSpec) else resolve_handler(default_handler)
    engine = Engine(ctx, observers, default_handler=fallback)
    engine.output_root = folder
    engine.on_output = on_output
    result = RunResult(ctx.run_id, loaded.name)
    scope = Scope(loaded, ctx.inputs, ctx.vars, ctx.steps, ctx.steps, folder, on_record=_record_top(result))
    started = time.perf_counter()
    status: RunStatus = "ok"
    error_info: ErrorInfo | None = None
    if durable is not None and durable.resumed:
        durable.restore(ctx, engine, result)
    tracer = ctx.tracer = active_tracer()
    traced = nullcontext() if tracer is None else run_span(tracer, loaded.name, ctx.run_id)
    with traced:
        try:
            if durable is None:
                await engine.run_steps(loaded.steps, scope)
            else:
                for item in loaded.steps:
                    if durable.finished(item.id):
                        continue
                    engine.attempt = await durable.step_started(item.id, ctx)
                    await engine.run_step(item, scope)
                    await durable.step_finished(item.id, ctx, engine, result)
        except asyncio.CancelledError:
            status, error_info = "cancelled", ErrorInfo(type="cancelled", message="the run was cancelled")
            raise
        except BaseException as error:
            status = "cancelled" if isinstance(error, KeyboardInterrupt) else "failed"
            error_info = error_info_of(error)
            raise
        finally:
            result.vars = dict(ctx.vars)
            result.outputs = dict(engine.outputs)
            result.status = status
            if observers.wants_lifecycle:
                finished = RunFinished(
                    run_id=ctx.run_id,
                    seq=ctx.next_seq(),
                    status=status,
                    usage=functools.reduce(add_usage, engine.usage, None),
                    duration_ms=(time.perf_counter() - started) * 1000,
                    error=error_info,
                )
                await emit_keeping_the_outcome(observers, finished, failing=status != "ok")
            if durable is not None:
                await durable.ended(None if status == "ok" else status, ctx)
    return result


def run(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    lifecycle: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    default_handler: Any = None,
) -> RunResult:
    """Run a workflow to completion and return its `RunResult` (see `arun`).

    Ctrl-C cancels the running steps, which deliver their `Done(finish_reason="cancelled")` before
    `KeyboardInterrupt` propagates. Called inside a running event loop (a Jupyter cell), the run goes on
    a worker thread with its own loop and this call waits for it; in async code, `await arun(...)`
    instead lets the loop go on (see `pipeline_ex.running_loop`).
    """
    return run_to_completion(
        lambda: arun(
            workflow,
            inputs,
            mock=mock,
            on_event=on_event,
            lifecycle=lifecycle,
            output_dir=output_dir,
            default_handler=default_handler,
        ),
        entry="run",
        twin="arun",
    )
