"""Run a loaded workflow: steps in order, each LLM step streaming to its handlers.

`run` is `arun` on a fresh event loop; both take a path or a `LoadedWorkflow`. The step results keep
the model's full text whatever the handlers do with the stream.
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ex.context import Context
from pipeline_ex.errors import Issue, PipelineError, StepError, WorkflowError
from pipeline_ex.streaming.resolve import HandlerSpec
from pipeline_ex.workflow import templates
from pipeline_ex.workflow.inputs import InputValueError, typed_value
from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow, load_workflow, parse_workflow
from pipeline_ex.workflow.schema import LLMStep, PythonStep, SetStep
from pipeline_ex.workflow.yaml_source import escaped, lone_surrogate

OUTPUT_DIR_ENV = "PIPELINE_OUTPUT_DIR"
DEFAULT_OUTPUT_DIR = "outputs"

ProgressCallback = Callable[[int, int, str], None]


class InputError(PipelineError):
    """The inputs given to a run do not match the workflow's declared inputs."""

    def __init__(self, message: str, *, missing: str | None = None) -> None:
        self.missing = missing
        """The name of a required input that was not given, if that is the problem."""
        super().__init__(message)


@dataclass
class RunResult:
    """What a run produced: each LLM step's `StepResult`, python step values, variables and files."""

    run_id: str
    workflow: str
    steps: dict[str, Any] = field(default_factory=dict)
    """LLM step id -> `StepResult`."""
    values: dict[str, Any] = field(default_factory=dict)
    """Python step id -> the value its callable returned."""
    vars: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    """Step id -> the file `output_to_file` wrote."""

    @property
    def text(self) -> str:
        """The text of the last LLM step."""
        last = list(self.steps.values())[-1:] or [None]
        return last[0].text if last[0] is not None else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: every step's text, finish reason, usage and timing."""
        steps: dict[str, Any] = {}
        for step_id, result in self.steps.items():
            done = result.done
            steps[step_id] = {
                "text": done.response.text,
                "finish_reason": done.response.finish_reason,
                "model": done.response.model,
                "provider": done.response.provider,
                "usage": done.response.usage.model_dump() if done.response.usage else None,
                "streamed": done.streamed,
                "ttft_ms": done.ttft_ms,
                "duration_ms": done.duration_ms,
            }
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "steps": steps,
            "values": {k: _jsonable(v) for k, v in self.values.items()},
            "vars": {k: _jsonable(v) for k, v in self.vars.items()},
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


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


def _output_path(output_dir: Path, relative: str, step_id: str) -> Path:
    """Where a step's `output_to_file` goes; checked against what is on disk now.

    :raises PipelineError: naming the step and the path, when the path is outside the output directory,
        is a directory, or has a file where a folder of the path should be.
    """
    target = (output_dir / relative).resolve()
    if not target.is_relative_to(output_dir.resolve()):
        raise PipelineError(f"step {step_id!r}: output_to_file {relative!r} points outside {output_dir}")
    shown = output_dir / relative  # as the user gave the folder, so a server's messages hold no absolute path
    if target.is_dir():
        raise PipelineError(
            f"step {step_id!r}: output_to_file {relative!r} is a directory ({shown}); "
            "give a file name, or move the directory away"
        )
    for folder in shown.parents:
        if folder.exists():
            if not folder.is_dir():
                raise PipelineError(
                    f"step {step_id!r}: output_to_file {relative!r} cannot be written: {folder} is a file, "
                    "not a directory; choose another output directory or file name"
                )
            break
    return target


class _Runner:
    def __init__(
        self,
        loaded: LoadedWorkflow,
        ctx: Context,
        *,
        output_dir: Path,
        default_handler: HandlerSpec | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.loaded = loaded
        self.ctx = ctx
        self.output_dir = output_dir
        self.default_handler = default_handler
        self.progress = progress
        self.result = RunResult(ctx.run_id, loaded.name)

    def _template_values(self) -> dict[str, Any]:
        return {"inputs": self.ctx.inputs, "steps": self.ctx.steps, "vars": self.ctx.vars}

    def _render(self, source: str, item: LoadedStep, key: str) -> str:
        try:
            text = templates.render(source, self._template_values())
        except Exception as error:
            raise WorkflowError(
                [Issue(self.loaded.location(*item.path, key), f"template failed: {type(error).__name__}: {error}")]
            ) from error
        at = lone_surrogate(text)
        if at is not None:
            message = (
                f"the rendered {key} has a lone surrogate ({escaped(text[at])}) at character {at + 1}, which is "
                "not text; it comes from a value the template reads (a python step's result?)"
            )
            raise WorkflowError([Issue(self.loaded.location(*item.path, key), message)])
        return text

    async def _llm(self, item: LoadedStep, step: LLMStep) -> None:
        from pipeline_ex.llm.step import ainvoke

        handlers: list[Any] = list(item.handlers)
        if not handlers and self.default_handler is not None:
            handlers = [self.default_handler]
        prompt = self._render(step.prompt, item, "prompt")
        system = self._render(item.system, item, "system") if item.system else None
        try:
            result = await ainvoke(
                self.ctx,
                prompt=prompt,
                provider=item.provider,
                model=item.model,
                system=system,
                stream=item.stream,
                on_event=handlers,
                step=step.id,
                **item.options,
            )
        except StepError as error:
            try:
                self._write_output(step, error.done.response.text)
            except PipelineError as output_error:
                error.add_note(str(output_error))  # the step's own failure stays the error raised
            raise
        self.ctx.steps[step.id] = result
        self.result.steps[step.id] = result
        self._write_output(step, result.text)

    def _write_output(self, step: LLMStep, text: str) -> None:
        if step.output_to_file is None:
            return
        target = _output_path(self.output_dir, step.output_to_file, step.id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except (OSError, UnicodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise PipelineError(
                f"step {step.id!r}: output_to_file {step.output_to_file!r} cannot be written to "
                f"{self.output_dir / step.output_to_file}: {reason}"
            ) from error
        self.result.outputs[step.id] = target

    async def _python(self, item: LoadedStep, step: PythonStep) -> None:
        assert item.function is not None
        value = item.function(self.ctx, **step.args)
        if asyncio.iscoroutine(value):
            value = await value
        self.ctx.steps[step.id] = value
        self.result.values[step.id] = value

    def _set(self, item: LoadedStep, step: SetStep) -> None:
        for name, value in step.vars.items():
            rendered = self._render(value, item, f"vars.{name}") if isinstance(value, str) else value
            self.ctx.vars[name] = rendered
        self.result.vars = dict(self.ctx.vars)

    def check_outputs(self) -> None:
        """Fail before the first step when an `output_to_file` cannot be written as things are on disk."""
        for item in self.loaded.steps:
            if isinstance(item.spec, LLMStep) and item.spec.output_to_file is not None:
                _output_path(self.output_dir, item.spec.output_to_file, item.id)

    async def run(self) -> RunResult:
        self.check_outputs()
        total = len(self.loaded.steps)
        for index, item in enumerate(self.loaded.steps, start=1):
            if self.progress is not None:
                self.progress(index, total, item.id)
            step = item.spec
            if isinstance(step, LLMStep):
                await self._llm(item, step)
            elif isinstance(step, PythonStep):
                await self._python(item, step)
            else:
                self._set(item, step)
        return self.result


def _as_loaded(workflow: str | os.PathLike[str] | LoadedWorkflow, mock: bool) -> LoadedWorkflow:
    if isinstance(workflow, LoadedWorkflow):
        if mock and not workflow.mock:
            return parse_workflow(workflow.source.text, workflow.file, mock=True)
        return workflow
    return load_workflow(workflow, mock=mock)


def output_directory(output_dir: str | os.PathLike[str] | None) -> Path:
    """The output directory: the argument, else `PIPELINE_OUTPUT_DIR`, else `./outputs`."""
    return Path(output_dir or os.environ.get(OUTPUT_DIR_ENV) or DEFAULT_OUTPUT_DIR)


async def arun(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    output_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    _default_handler: HandlerSpec | None = None,
    _progress: ProgressCallback | None = None,
) -> RunResult:
    """Run a workflow on the running event loop and return its `RunResult`.

    :param workflow: a path to a workflow file, or a workflow from `load_workflow`.
    :param inputs: values for the declared inputs; missing ones take their defaults.
    :param mock: run every LLM step on the mock provider (as `PIPELINE_TEST_MODE=mock` does).
    :param on_event: an extra handler (or list) that receives every event of every step, in addition
        to the handlers the workflow configures.
    :param output_dir: where `output_to_file` writes (default: `PIPELINE_OUTPUT_DIR`, then `./outputs`).
    :param run_id: the id every event carries (a fresh one by default).
    :raises StepError: after the failing step's Done was delivered.
    """
    loaded = _as_loaded(workflow, mock)
    extra = [] if on_event is None else (list(on_event) if isinstance(on_event, list | tuple) else [on_event])
    ctx = Context(inputs=resolve_inputs(loaded, inputs), handlers=extra, name=loaded.name)
    if run_id is not None:
        ctx.run_id = run_id
    runner = _Runner(
        loaded, ctx, output_dir=output_directory(output_dir), default_handler=_default_handler, progress=_progress
    )
    return await runner.run()


def run(
    workflow: str | os.PathLike[str] | LoadedWorkflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    mock: bool = False,
    on_event: Any = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Run a workflow to completion and return its `RunResult` (see `arun`).

    Ctrl-C cancels the running step, which delivers its `Done(finish_reason="cancelled")` before
    `KeyboardInterrupt` propagates.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(workflow, inputs, mock=mock, on_event=on_event, output_dir=output_dir))
    raise PipelineError("run() was called inside a running event loop; use 'await arun(...)' there")
