"""Load a workflow file: YAML -> schema -> checked references -> resolved handlers and providers.

Everything that can be checked before a provider is called is checked here, and every problem is
reported at once with its file, line, column and key path. Nothing here imports haystack.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from pathlib import PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline_ex.deprecation import warn_deprecated
from pipeline_ex.errors import (
    HandlerResolutionError,
    Issue,
    Location,
    ProviderConfigError,
    ProviderNotInstalledError,
    WorkflowError,
)
from pipeline_ex.llm.options import STEP_OPTION_NAMES
from pipeline_ex.llm.providers import check_provider
from pipeline_ex.llm.providers.mock import MockReply
from pipeline_ex.llm.tools import ToolSpecError, import_reference, tool_name
from pipeline_ex.modes.session import active_override, mode_from_env
from pipeline_ex.streaming.resolve import HandlerSpec, ensure_cwd_importable, resolve_handler
from pipeline_ex.workflow.checks import TemplateChecker
from pipeline_ex.workflow.inputs import InputValueError, typed_value
from pipeline_ex.workflow.overrides import Override, OverrideWarning, RunOverrides
from pipeline_ex.workflow.schema import (
    DEFAULT_MAX_TOOL_ROUNDS,
    DEFAULT_SCHEMA_RETRIES,
    HANDLER_SHAPE_TAGS,
    STEP_LIST_FIELDS,
    STEP_MODELS,
    AnyStep,
    Defaults,
    ForEachStep,
    GenerationFields,
    HandlerWithOptions,
    InputSpec,
    LLMStep,
    LoopSpec,
    LoopStep,
    ModelReference,
    ParallelStep,
    PythonStep,
    StepLimits,
    Workflow,
    WorkflowStep,
    children_of,
)
from pipeline_ex.workflow.yaml_source import (
    Path,
    YamlSource,
    escaped,
    format_path,
    load_yaml,
    read_workflow_text,
)

_INHERITED_KEYS = (*GenerationFields.model_fields, *StepLimits.model_fields)
"""Step settings a step takes from `defaults:` when it does not set them itself."""


def _active_mode() -> str:
    override = active_override()
    return override.mode if override is not None else mode_from_env()


def offline_mode_requested(mock: bool) -> bool:
    """Whether a workflow loads for a run that needs no provider packages or keys: mock runs and replays."""
    return mock or _active_mode() in ("mock", "replay")


@dataclass
class LoadedStep:
    """A validated step with everything resolved that can be resolved before running it."""

    spec: AnyStep
    path: Path
    """Where the step is in the workflow body (`("steps", 1, "parallel", 0)`)."""
    handlers: list[HandlerSpec] = field(default_factory=list)
    stream: bool = True
    provider: str | None = None
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Provider options and step options (`timeout`, `retries`, ...)."""
    mock_response: str | list[str] | MockReply | None = None
    """The reply the step gets in mock runs."""
    tools: list[Any] = field(default_factory=list)
    """The step's tools: haystack `Tool`s resolved at load, and template expressions giving declared tools."""
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    output_schema: Any = None
    """The step's resolved `OutputSchema`, or None."""
    schema_retries: int = DEFAULT_SCHEMA_RETRIES
    function: Callable[..., Any] | None = None
    children: list[LoadedStep] = field(default_factory=list)
    """The steps of a `parallel` group, or the body of a `for_each` or `loop`."""
    nested: LoadedWorkflow | None = None
    """The workflow a `workflow:` step runs."""
    provider_at: Path = ()
    """Where the step's provider is set (for errors about it)."""

    @property
    def id(self) -> str:
        """The step id."""
        return self.spec.id

    @property
    def kind(self) -> str:
        """The step's kind: llm, python, set, parallel, for_each, loop or workflow."""
        return self.spec.type

    def walk(self) -> list[LoadedStep]:
        """The step and every step inside it (not inside nested workflows), in file order."""
        found = [self]
        for child in self.children:
            found.extend(child.walk())
        return found


@dataclass
class LoadedWorkflow:
    """A workflow ready to run: its schema model, its source positions and its resolved steps."""

    workflow: Workflow
    source: YamlSource
    steps: list[LoadedStep]
    prefix: Path | None
    """Where the workflow body sits in the file: ("workflow",), (), or None for a bare list of steps."""
    checked_offline: bool
    """Loaded for a mock run or a replay: provider packages and API keys were not checked."""
    overrides: RunOverrides = field(default_factory=RunOverrides)
    """The defaults given on the command line (`--provider`, `--model`, `--set`) that replaced the file's."""

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self.workflow.name

    @property
    def file(self) -> str:
        """The file the workflow was loaded from."""
        return self.source.file

    def location(self, *path: str | int, at_key: bool = False) -> Location:
        """Where a key path (relative to the workflow body) is in the file."""
        return self.source.location(yaml_path(self.prefix, path), at_key=at_key)

    def all_steps(self) -> list[LoadedStep]:
        """Every step of the workflow, groups and their children included, in file order."""
        return [found for step in self.steps for found in step.walk()]


def yaml_path(prefix: Path | None, path: Path) -> Path:
    """Map a path in the workflow body to the path in the file (`prefix` None: a bare list of steps)."""
    if prefix is None:
        return path[1:] if path[:1] == ("steps",) else path
    return (*prefix, *path)


class _Checker:
    """Collects issues while a workflow is checked, so all of them are reported together."""

    def __init__(self, source: YamlSource, prefix: Path | None) -> None:
        self.source = source
        self.prefix = prefix
        self.issues: list[Issue] = []
        self._seen: set[Issue] = set()
        self.handler_failures: dict[tuple[str, str], HandlerResolutionError] = {}
        """Handler references (with their options) that failed to resolve: each is tried once per file,
        since a failure lists the installed handlers, which takes milliseconds."""

    def at(self, path: Path, *, at_key: bool = False) -> Location:
        return self.source.location(yaml_path(self.prefix, path), at_key=at_key)

    def add(self, path: Path, message: str, *, at_key: bool = False) -> None:
        issue = Issue(self.at(path, at_key=at_key), message)
        if issue not in self._seen:
            self._seen.add(issue)
            self.issues.append(issue)

    def alias(self, old: Path, new: Path) -> None:
        """Let errors about `new` (a renamed legacy key) point at where `old` is written."""
        self.source.rename(yaml_path(self.prefix, old), yaml_path(self.prefix, new))

    def warn(self, path: Path, message: str) -> None:
        location = self.at(path, at_key=True)
        warn_deprecated(f"{location.file}:{location.line}: {message}")


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The schema model that owns the last key of a pydantic error location."""
    if len(loc) >= 2 and loc[-2] == "with-options" and "stream_handler" in loc:
        return HandlerWithOptions
    model: type[BaseModel] | None = Workflow
    in_steps = False
    in_inputs = False
    for part in loc[:-1]:
        if in_steps:
            if isinstance(part, int):
                continue
            in_steps = False
            model = STEP_MODELS.get(str(part))
            if model is None:
                return None
        elif in_inputs:
            in_inputs = False
            model = InputSpec
        elif model is Workflow and part == "defaults":
            model = Defaults
        elif model is Workflow and part == "inputs":
            in_inputs = True
        elif part in STEP_LIST_FIELDS and model in (Workflow, ParallelStep, ForEachStep, LoopStep):
            in_steps = True
        elif model is LoopStep and part == "loop":
            model = LoopSpec
        else:
            return model if part in ("options", "stream_handler_options") else None
    return None if in_steps or in_inputs else model


def _field_names(model: type[BaseModel]) -> list[str]:
    """The keys a model takes, as a file writes them (its aliases: `as`, not `as_`)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _data_path(loc: tuple[str | int, ...], data: Any) -> Path:
    """Turn a pydantic error location into a path in the YAML data.

    pydantic adds the names of union members to locations (the step type `llm`, or `str` and
    `list[str]` for a field that takes either); they are not keys of the file and are dropped.
    """
    path: list[str | int] = []
    node = data
    last_was_index = False
    for part in loc:
        if part in HANDLER_SHAPE_TAGS and "stream_handler" in path:
            continue  # how a stream_handler value is written (pydantic's union tag), not a key of the file
        after_step_index = len(path) >= 2 and path[-2] in STEP_LIST_FIELDS and isinstance(path[-1], int)
        if part in STEP_MODELS and after_step_index and last_was_index:
            last_was_index = False
            continue  # the name of the step kind pydantic tried, not a key of the file
        last_was_index = isinstance(part, int)
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and part in STEP_MODELS and len(path) >= 2 and path[-2] in STEP_LIST_FIELDS:
            continue
        elif isinstance(node, dict) and isinstance(part, str):
            path.append(part)  # a missing key
            node = None
        elif node is None and not path:
            path.append(part)
        else:
            continue  # a union member's name under a scalar value
    return tuple(path)


def _describe_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_MESSAGES: dict[tuple[str, str | int], str] = {
    ("too_short", "steps"): "a workflow needs at least one step",
    ("string_pattern_mismatch", "id"): "a step id starts with a letter or _ and has only letters, digits, _ and -",
}


def _is_step_path(path: Path) -> bool:
    return len(path) >= 2 and path[-2] in STEP_LIST_FIELDS and isinstance(path[-1], int)


@functools.lru_cache(maxsize=1024)
def _close_key(key: str, known: tuple[str, ...]) -> str | None:
    """The known key closest to an unknown one (cached: a file tends to repeat its typos)."""
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def _schema_issues(error: ValidationError, body: Any, checker: _Checker) -> None:
    seen: set[Path] = set()
    for item in error.errors():
        loc = tuple(item["loc"])
        path = _data_path(loc, body)
        kind = item["type"]
        if kind not in ("extra_forbidden", "missing"):
            if path in seen:  # one message per value, not one per union member
                continue
            seen.add(path)
        last = path[-1] if path else ""
        if kind == "extra_forbidden":
            key = str(last)
            model = _model_at(loc)
            known = _field_names(model) if model is not None else []
            close = _close_key(key, tuple(known))
            hint = f" (did you mean {close!r}?)" if close else (f"; allowed: {', '.join(known)}" if known else "")
            checker.add(path, f"unknown key {key!r}{hint}", at_key=True)
        elif kind == "missing":
            checker.add(path[:-1], f"missing required key {last!r}")
        elif kind == "conversation":
            checker.add(path, item["msg"])
        elif kind == "step_type" and not isinstance(item.get("input"), dict):
            checker.add(path, "a step must be a mapping with an id, a type and its settings")
        elif kind == "step_type" or (kind == "literal_error" and path[-1:] == ("type",) and _is_step_path(path[:-1])):
            where = path if kind == "literal_error" else (*path, "type")
            checker.add(where, "unknown step type; expected one of: " + ", ".join(STEP_MODELS))
        elif (kind, last) in _MESSAGES:
            checker.add(path, f"{_MESSAGES[kind, last]}, got {_describe_input(item.get('input'))}")
        else:
            got = _describe_input(item.get("input"))
            checker.add(path, f"{item['msg'].replace('Input should be', 'expected')}, got {got}")


def _split_body(source: YamlSource, checker: _Checker) -> tuple[Any, Path | None]:
    data = source.data
    if isinstance(data, list):
        return {"name": FilePath(source.file).stem, "steps": data}, None
    if isinstance(data, dict) and "workflow" in data:
        for key in data:
            if key != "workflow":
                checker.prefix = ()
                checker.add((key,), f"unknown top-level key {key!r}; everything goes under 'workflow:'", at_key=True)
        if data["workflow"] is None:
            checker.prefix = ()
            checker.add(("workflow",), "'workflow:' is empty; give it a name and steps", at_key=True)
        return data["workflow"], ("workflow",)
    if isinstance(data, dict):
        return data, ()
    checker.add((), "expected a mapping with 'workflow:' or a list of steps")
    return None, ()


def _as_yaml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else repr(value)


def _normalize_legacy(raw: dict[str, Any], path: Path, checker: _Checker) -> None:
    """Fold `async_stream` / `async_handler` into `stream` / `stream_handler`, with warnings.

    Also catches `stream_handler: null`: YAML reads it as "no value", not as the `null` handler.
    """
    for key in ("stream_handler", "async_handler"):
        if key in raw and raw[key] is None:
            checker.add(
                (*path, key),
                'is empty (YAML reads `null` as no value); to discard events write "null" in quotes, or remove the key',
                at_key=True,
            )
            del raw[key]
    for legacy, current in (("async_stream", "stream"), ("async_handler", "stream_handler")):
        if raw.get(legacy) is None:
            continue
        if raw.get(current) is not None and raw[current] != raw[legacy]:
            checker.add(
                (*path, legacy),
                f"conflicts with {current!r} ({_as_yaml(raw[current])} vs {_as_yaml(raw[legacy])}); "
                f"keep only {current!r}",
                at_key=True,
            )
            continue
        checker.warn((*path, legacy), f"{legacy!r} is deprecated; rename it to {current!r}")
        raw[current] = raw.pop(legacy)
        checker.alias((*path, legacy), (*path, current))


def _check_input_defaults(workflow: Workflow, checker: _Checker) -> None:
    """Each input default must have the input's type; one written as text is read as that type."""
    for name, spec in workflow.inputs.items():
        if "default" not in spec.model_fields_set:
            continue
        try:
            spec.default = typed_value(spec.type, spec.default)
        except InputValueError as problem:
            if spec.default is None:
                hint = "; remove 'default' to make the input required, or write \"\" for empty text"
            elif spec.type == "string":
                hint = "; quote it to keep it as text, or declare the input's type"
            else:
                hint = ""
            checker.add(("inputs", name, "default"), f"the default {problem}{hint}")


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


@dataclass(frozen=True)
class _HandlerEntry:
    """One handler a step names: the reference, its own options (a list item's), and where it is written."""

    ref: str
    options: dict[str, Any] | None
    path: Path


def _handler_entries(value: Any, owner: Path) -> list[_HandlerEntry]:
    """The entries of a `stream_handler:` value: one name, one `{handler:, options:}`, or a list of these."""
    listed = isinstance(value, list)
    entries = []
    for position, item in enumerate(value if listed else [value]):
        where: Path = (*owner, "stream_handler") + ((position,) if listed else ())
        if isinstance(item, HandlerWithOptions):
            entries.append(_HandlerEntry(item.handler, item.options, where))
        else:
            entries.append(_HandlerEntry(item, None, where))
    return entries


def _separate_options_problem(
    entries: list[_HandlerEntry], options: dict[str, Any], names: str, inherited: bool
) -> str | None:
    """Why `stream_handler_options` cannot apply to these handlers, if it cannot.

    It is the options of one handler given by name. With several handlers (or one that carries its own
    `options:`) there is no telling which handler it is for, so the options go in the list items instead;
    the fix names the first handler that takes them.
    """
    where = "give this step its own stream_handler list, with" if inherited else "give"
    if len(entries) > 1:
        taker = next((entry.ref for entry in entries if entry.options is None and _takes(entry.ref, options)), None)
        item = (
            f"{{handler: {taker}, options: {yaml.safe_dump(options, default_flow_style=True, width=1000).strip()}}}"
            if taker is not None
            else f"{{handler: {entries[0].ref}, options: {{...}}}}"
        )
        return (
            f"options need a single stream_handler, not a list ({names} has {len(entries)}); {where} each "
            f"handler's options in its item: {item}"
        )
    if entries and entries[0].options is not None:
        return f"{names} gives its own options; keep them in one place, under its 'options:'"
    return None


def _takes(reference: str, options: dict[str, Any]) -> bool:
    """Whether this handler accepts these options (only asked to word an error's fix)."""
    try:
        resolve_handler(reference, options)
    except HandlerResolutionError:
        return False
    return True


def _resolve_step_handlers(step: LLMStep, path: Path, defaults: Defaults, checker: _Checker) -> list[HandlerSpec]:
    owner: Path
    options_path: Path
    if step.stream_handler is not None:
        value, options, owner = step.stream_handler, step.stream_handler_options, path
        options_path = (*path, "stream_handler_options")
    elif defaults.stream_handler is not None:
        value, options, owner = defaults.stream_handler, defaults.stream_handler_options, ("defaults",)
        options_path = ("defaults", "stream_handler_options")
        if step.stream_handler_options is not None:
            options = step.stream_handler_options
            options_path = (*path, "stream_handler_options")
    else:
        if step.stream_handler_options:
            checker.add((*path, "stream_handler_options"), "given without a stream_handler", at_key=True)
        return []
    entries = _handler_entries(value, owner)
    if options:
        names = format_path(yaml_path(checker.prefix, (*owner, "stream_handler")))
        problem = _separate_options_problem(entries, options, names, inherited=options_path[:1] != owner[:1])
        if problem is not None:
            checker.add(options_path, problem, at_key=True)
            return []
    specs = []
    for entry in entries:
        given = entry.options if entry.options is not None else options
        attempt = (entry.ref, json.dumps(given, sort_keys=True, default=repr))
        error = checker.handler_failures.get(attempt)
        if error is None:
            try:
                specs.append(resolve_handler(entry.ref, given, location=checker.at(entry.path)))
                continue
            except HandlerResolutionError as failure:
                error = checker.handler_failures[attempt] = failure
        if entry.options is not None and error.about_options:
            _item_options_issues(entry, error, checker)
        else:
            checker.add(options_path if error.about_options else entry.path, _one_line(error.describe()))
    return specs


def _item_options_issues(entry: _HandlerEntry, error: HandlerResolutionError, checker: _Checker) -> None:
    """One issue per invalid option of a list item, at the option's own key (`stream_handler[1].options.pth`)."""
    options = entry.options or {}
    base: Path = (*entry.path, "options")
    hint = f"; {error.hint}" if error.hint else ""
    for key, problem in error.option_problems or ((None, error.problem),):
        if key is not None and key in options:
            checker.add((*base, key), f"{entry.ref}: {problem}{hint}", at_key=True)
        else:
            checker.add(base if options else entry.path, f"{entry.ref}: {problem}{hint}")


def _provider_options(step: LLMStep, defaults: Defaults, provider: str | None) -> dict[str, Any]:
    """The options a step's provider is called with."""
    options: dict[str, Any] = {}
    custom = step.generator is not None
    if step.generator is None and (step.provider is None or step.provider == defaults.provider):
        options.update(defaults.options or {})
    options.update(step.options or {})
    if step.generator is not None:
        options.update(step.generator.model_dump())
    sampling: dict[str, Any] = {}
    for key in _INHERITED_KEYS:
        value = getattr(step, key)
        if value is None:
            value = getattr(defaults, key)
        if value is not None:
            (sampling if custom and key in GenerationFields.model_fields else options)[key] = value
    if sampling:  # a custom generator takes sampling options in its own names, as generation_kwargs
        options["generation_kwargs"] = {**sampling, **options.get("generation_kwargs", {})}
    return options


def _resolve_python(step: PythonStep, path: Path, checker: _Checker) -> Callable[..., Any] | None:
    module_name, _, attribute = step.callable.replace(":", ".").rpartition(".")
    ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name) if module_name else None
        function: Any = getattr(module, attribute) if module is not None else None
    except Exception as error:
        checker.add((*path, "callable"), f"cannot import {step.callable!r}: {type(error).__name__}: {error}")
        return None
    if not callable(function):
        checker.add((*path, "callable"), f"{step.callable!r} is not a callable; give 'package.module.function'")
        return None
    resolved: Callable[..., Any] = function
    return resolved


def _stays_inside(relative: str) -> bool:
    path = PurePosixPath(relative.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and relative.strip() != ""


def _output_file_problem(relative: str, step_id: str) -> str | None:
    """What is wrong with an `output_to_file` path, if anything: it must name a file inside the output folder."""
    if not _stays_inside(relative):
        return f"{relative!r} must be a relative path inside the output directory"
    control = next((character for character in relative if ord(character) < 32 or ord(character) == 127), None)
    if control is not None:
        return f"{relative!r} has a control character ({escaped(control)}); give a file name without one"
    parts = relative.replace("\\", "/").split("/")
    if all(part in ("", ".") for part in parts):
        return f"{relative!r} names the output directory itself; give a file name, such as '{step_id}.md'"
    if parts[-1] in ("", "."):
        folder = PurePosixPath(relative.replace("\\", "/"))
        return f"{relative!r} names a directory; give a file name, such as '{folder / (step_id + '.md')}'"
    return None


def _check_output_folders(loaded: list[LoadedStep], checker: _Checker) -> None:
    """One step's output file must not be a folder another step writes into."""
    folders: dict[tuple[str, ...], LoadedStep] = {}
    files: dict[tuple[str, ...], LoadedStep] = {}
    for item in loaded:
        target = item.spec.output_to_file if isinstance(item.spec, LLMStep) else None
        if target is None or "{" in target or _output_file_problem(target, item.id) is not None:
            continue
        parts = PurePosixPath(target.replace("\\", "/")).parts
        files.setdefault(parts, item)
        for end in range(1, len(parts)):
            folders.setdefault(parts[:end], item)
    for parts, item in files.items():
        if parts in folders:
            other = folders[parts]
            checker.add(
                (*item.path, "output_to_file"),
                f"{'/'.join(parts)!r} is the folder that {format_path(other.path)} ({other.id!r}) writes into; "
                "give this step another file name",
            )


class _StepLoader:
    """Resolves every step of one file (groups' children too) and the workflows its steps nest."""

    def __init__(
        self,
        workflow: Workflow,
        checker: _Checker,
        *,
        offline: bool,
        mock: bool,
        stack: tuple[str, ...],
        overrides: RunOverrides,
    ):
        self.workflow = workflow
        self.defaults = workflow.defaults
        self.checker = checker
        self.offline = offline
        self.mock = mock
        self.stack = stack
        self.overrides = overrides
        self.not_followed: dict[str, list[str]] = {}
        """A command-line default's flag -> the steps that keep their own value, described."""
        self.other_provider: list[str] = []
        """The steps `--model` reaches that run on a provider of their own, described."""
        self.seen: dict[str, Path] = {}

    def steps(self, steps: list[AnyStep], base: Path, *, repeated: str | None = None) -> list[LoadedStep]:
        """Load a list of steps; `repeated` names the for_each or loop whose body they are."""
        return [self.step(step, (*base, index), repeated) for index, step in enumerate(steps)]

    def step(self, step: AnyStep, path: Path, repeated: str | None) -> LoadedStep:
        checker = self.checker
        if step.id in self.seen:
            first = format_path(self.seen[step.id])
            message = f"duplicate step id {step.id!r} (first used by {first}); ids are unique in a file"
            checker.add((*path, "id"), message)
        self.seen.setdefault(step.id, path)
        item = LoadedStep(step, path)
        if isinstance(step, LLMStep):
            self._llm(item, step, path, repeated)
        elif isinstance(step, PythonStep):
            item.function = _resolve_python(step, path, checker)
        elif isinstance(step, WorkflowStep):
            item.nested = self._nested(step, path)
        found = children_of(step)
        if found is not None:
            key, children = found
            inner = repeated
            if isinstance(step, ForEachStep | LoopStep):
                inner = f"{'for_each' if isinstance(step, ForEachStep) else 'loop'} {step.id!r}"
            item.children = self.steps(children, (*path, key), repeated=inner)
        return item

    def _llm(self, item: LoadedStep, step: LLMStep, path: Path, repeated: str | None) -> None:
        defaults, checker = self.defaults, self.checker
        inherited = defaults.stream if defaults.stream is not None else True
        item.stream = step.stream if step.stream is not None else inherited
        item.handlers = _resolve_step_handlers(step, path, defaults, checker)
        if step.generator is not None and step.provider is not None:
            checker.add((*path, "generator"), "give either 'provider' or 'generator', not both", at_key=True)
        provider = "generator" if step.generator is not None else (step.provider or defaults.provider)
        item.model = step.model or defaults.model
        item.system = step.system if step.system is not None else defaults.system
        item.options = _provider_options(step, defaults, provider)
        item.mock_response = step.mock_response
        self._conversation(item, step, path)
        provider_path: Path = (
            (*path, "generator")
            if step.generator is not None
            else (*path, "provider")
            if step.provider
            else (("defaults", "provider") if defaults.provider else path)
        )
        item.provider_at = provider_path
        item.provider = _checked_provider(provider, item, checker, offline=self.offline)
        for override in self.overrides:
            own = _own_setting(step, override, defaults, path)
            if own is not None:
                reason, where = own
                at = checker.at(where, at_key=True)
                self.not_followed.setdefault(override.flag, []).append(f"{step.id!r} ({reason}, {at.file}:{at.line})")
            elif override.key == "model" and step.model is None and step.provider not in (None, defaults.provider):
                at = checker.at((*path, "provider"), at_key=True)
                self.other_provider.append(f"{step.id!r} (provider {step.provider!r}, {at.file}:{at.line})")
        target = step.output_to_file
        if target is None:
            return
        if "{" in target:
            return  # a template: checked (inside the output folder, a file name) once it is rendered
        problem = _output_file_problem(target, step.id)
        if problem is None and repeated is not None:
            problem = (
                f"{target!r} would be written by every run of {repeated}; put the item or iteration in the "
                "name, such as 'drafts/{{ topic }}.md'"
            )
        if problem is not None:
            checker.add((*path, "output_to_file"), problem)

    def _conversation(self, item: LoadedStep, step: LLMStep, path: Path) -> None:
        """Check `messages`, and resolve the step's tools and output schema."""
        checker = self.checker
        for position, message in enumerate(step.messages or []):
            if isinstance(message, str) and "{{" not in message:
                checker.add(
                    (*path, "messages", position),
                    "a messages entry is a mapping such as {role: user, content: ...}, or one expression that "
                    'gives a list of messages, such as "{{ inputs.history }}"',
                )
        if step.max_tool_rounds is not None:
            item.max_tool_rounds = step.max_tool_rounds
        if step.schema_retries is not None:
            item.schema_retries = step.schema_retries
        for position, entry in enumerate(step.tools or []):
            where = (*path, "tools", position)
            if isinstance(entry, str) and "{" in entry:
                item.tools.append(entry)  # a template: its declared tools are known when it is rendered
                continue
            try:
                item.tools.append(import_reference(entry) if isinstance(entry, str) else entry)
            except ToolSpecError as error:
                checker.add(where, str(error))
        named = [tool_name(tool) for tool in item.tools if not isinstance(tool, str)]
        for name in sorted({n for n in named if n is not None and named.count(n) > 1}):
            checker.add((*path, "tools"), f"two tools are named {name!r}; give each tool its own name")
        if step.max_tool_rounds is not None and not step.tools:
            checker.add((*path, "max_tool_rounds"), "max_tool_rounds is given but the step has no tools", at_key=True)
        if step.schema_retries is not None and step.output_schema is None:
            checker.add(
                (*path, "schema_retries"), "schema_retries is given but the step has no output_schema", at_key=True
            )
        if step.output_schema is not None:
            from pipeline_ex.llm.structured import OutputSchemaError, resolve_output_schema

            spec = step.output_schema
            try:
                item.output_schema = resolve_output_schema(
                    spec.model_dump() if isinstance(spec, ModelReference) else spec
                )
            except OutputSchemaError as error:
                checker.add((*path, "output_schema"), str(error))

    def _nested(self, step: WorkflowStep, path: Path) -> LoadedWorkflow | None:
        """Load the workflow a step nests, relative to this file; check its inputs and recursion."""
        checker = self.checker
        here = FilePath(checker.source.file)
        folder = here.parent if checker.source.file != "<workflow>" else FilePath.cwd()
        target = (folder / step.workflow).resolve()
        where = (*path, "workflow")
        if str(target) in self.stack:
            chain = " -> ".join(FilePath(f).name for f in (*self.stack, str(target)))
            checker.add(where, f"workflow files include each other in a loop ({chain}); a workflow cannot nest itself")
            return None
        if not target.is_file():
            checker.add(where, f"{step.workflow!r} is not a file (looked for {target.name} next to {here.name})")
            return None
        try:
            nested = _load_file(
                str(folder / step.workflow), mock=self.mock, stack=(*self.stack, str(target)), overrides=self.overrides
            )
        except WorkflowError as error:
            checker.add(where, f"{step.workflow!r} has {len(error.issues)} problem(s), listed below")
            for issue in error.issues:
                if issue not in checker._seen:
                    checker._seen.add(issue)
                    checker.issues.append(issue)
            return None
        except (OSError, UnicodeError, ValueError) as error:
            checker.add(where, f"{step.workflow!r} cannot be read: {error}")
            return None
        declared = nested.workflow.inputs
        for name in step.inputs:
            if name not in declared:
                close = _close_key(name, tuple(declared))
                hint = f" (did you mean {close!r}?)" if close else f"; it declares: {', '.join(declared) or 'none'}"
                checker.add((*path, "inputs", name), f"{step.workflow!r} has no input {name!r}{hint}", at_key=True)
        for name, spec in declared.items():
            if name not in step.inputs and "default" not in spec.model_fields_set:
                checker.add((*path, "inputs"), f"{step.workflow!r} needs the input {name!r}, which is not given")
            elif name in step.inputs and not isinstance(step.inputs[name], str):
                try:
                    typed_value(spec.type, step.inputs[name])
                except InputValueError as problem:
                    checker.add((*path, "inputs", name), f"{step.workflow!r} input {name!r} {problem}")
        return nested


def _own_setting(step: LLMStep, override: Override, defaults: Defaults, path: Path) -> tuple[str, Path] | None:
    """Why a step does not follow a command-line default, and the key that says so; None when it follows it."""
    top, entry = override.top, override.entry
    if top in ("provider", "model", "options") and step.generator is not None:
        return "runs its own generator", (*path, "generator")
    if top == "options":
        if step.provider is not None and step.provider != defaults.provider:
            return f"runs on its own provider {step.provider!r}", (*path, "provider")
        own_options = step.options or {}
        if entry is not None:
            return (f"sets options.{entry}", (*path, "options", entry)) if entry in own_options else None
        shared = sorted(set(own_options) & set(override.value or {}))
        return (f"sets options {', '.join(shared)}", (*path, "options")) if shared else None
    if top == "stream_handler_options" and step.stream_handler is not None:
        return "sets its own stream_handler", (*path, "stream_handler")
    value = getattr(step, top, None)
    if value is None or value == override.value:
        return None
    return f"sets {top}: {_as_yaml(value) if not isinstance(value, str) else value}", (*path, top)


def _apply_overrides(body: dict[str, Any], overrides: RunOverrides, checker: _Checker) -> None:
    """Put the command line's defaults into the file's `defaults:` mapping, remembering where each was given."""
    written = body.get("defaults")
    if written is None:
        written = {}
    if not isinstance(written, dict):
        return  # the schema reports the file's defaults
    dropped = overrides.dropped(written)
    body["defaults"] = overrides.merged_into(written)
    for override in overrides:
        checker.source.given[yaml_path(checker.prefix, ("defaults", *override.key.split(".", 1)))] = override.flag
    if dropped:
        provider = overrides.get("provider")
        assert provider is not None
        at = checker.at(("defaults", dropped[0]), at_key=True)
        keys = " and ".join(f"defaults.{key}" for key in dropped)
        warnings.warn(
            OverrideWarning(
                f"{provider.flag} replaces the provider of {at.file} ({written.get('provider') or 'local'!r}), so "
                f"its {keys} (line {at.line}), written for that provider, are not used; give --model or "
                f"--set options.NAME=VALUE for {provider.value!r}"
            ),
            stacklevel=2,
        )


def _warn_not_followed(loader: _StepLoader) -> None:
    """One warning per command-line default that some steps do not follow, naming them and their own setting."""
    for flag, steps in loader.not_followed.items():
        listed = steps[0] if len(steps) == 1 else ", ".join(steps[:-1]) + " and " + steps[-1]
        warnings.warn(
            OverrideWarning(
                f"{flag} does not apply to step{'s' if len(steps) > 1 else ''} {listed}: a step's own setting "
                "wins over the defaults the command line sets"
            ),
            stacklevel=2,
        )
    model = loader.overrides.get("model")
    if model is not None and loader.other_provider:
        warnings.warn(
            OverrideWarning(
                f"{model.flag} is also the model of {', '.join(loader.other_provider)}, which runs on a provider of "
                "its own and names no model, as every step without a model takes the default one; give such a "
                "step its own model"
            ),
            stacklevel=2,
        )


def _checked_provider(provider: str | None, item: LoadedStep, checker: _Checker, *, offline: bool) -> str | None:
    """The provider's name, once its package and settings are checked (not its key, when `offline`)."""
    real_options = {k: v for k, v in item.options.items() if k not in STEP_OPTION_NAMES}
    try:
        return check_provider(provider, real_options, offline=offline)
    except ProviderNotInstalledError as error:
        checker.add(item.provider_at, str(error))
    except ProviderConfigError as error:
        checker.add(item.provider_at, _one_line(str(error)))
    return provider


def check_live_providers(loaded: LoadedWorkflow) -> None:
    """Check what a workflow loaded for a mock run or a replay needs for a live one: packages and keys.

    :raises WorkflowError: listing every provider that cannot be called, with file:line.
    """
    checker = _Checker(loaded.source, loaded.prefix)
    for item in loaded.all_steps():
        if isinstance(item.spec, LLMStep):
            provider = "generator" if item.spec.generator is not None else item.provider
            _checked_provider(provider, item, checker, offline=False)
        if item.nested is not None:
            try:
                check_live_providers(item.nested)
            except WorkflowError as error:
                checker.issues.extend(error.issues)
    if checker.issues:
        raise WorkflowError(sorted(checker.issues, key=_issue_order(loaded.file)))


def _normalize_steps(steps: Any, base: Path, checker: _Checker) -> None:
    """Fold legacy keys in every step of a list, the children of groups too."""
    if not isinstance(steps, list):
        return
    for index, raw in enumerate(steps):
        if isinstance(raw, dict):
            _normalize_legacy(raw, (*base, index), checker)
            for key in STEP_LIST_FIELDS:
                if isinstance(raw.get(key), list):
                    _normalize_steps(raw[key], (*base, index, key), checker)


def _parse(text: str, file: str, *, mock: bool, stack: tuple[str, ...], overrides: RunOverrides) -> LoadedWorkflow:
    offline = offline_mode_requested(mock)
    source = load_yaml(text, file)
    checker = _Checker(source, ())
    body, prefix = _split_body(source, checker)
    checker.prefix = prefix
    if checker.issues or body is None:
        raise WorkflowError(checker.issues)
    if isinstance(body, dict):
        _normalize_steps(body.get("steps"), ("steps",), checker)
        if isinstance(body.get("defaults"), dict):
            _normalize_legacy(body["defaults"], ("defaults",), checker)
        if overrides:
            _apply_overrides(body, overrides, checker)
    try:
        workflow = Workflow.model_validate(body)
    except ValidationError as error:
        _schema_issues(error, body, checker)
        raise WorkflowError(sorted(checker.issues, key=_issue_order(file))) from None
    _check_input_defaults(workflow, checker)
    TemplateChecker(workflow, checker.add).check_all()
    loader = _StepLoader(workflow, checker, offline=offline, mock=mock, stack=stack, overrides=overrides)
    steps = loader.steps(workflow.steps, ("steps",))
    _check_output_folders([found for step in steps for found in step.walk()], checker)
    if checker.issues:
        raise WorkflowError(sorted(checker.issues, key=_issue_order(file)))
    _warn_not_followed(loader)
    return LoadedWorkflow(workflow, source, steps, prefix, offline, overrides)


def parse_workflow(
    text: str, file: str = "<workflow>", *, mock: bool = False, overrides: RunOverrides | None = None
) -> LoadedWorkflow:
    """Load a workflow from YAML text. `file` names it in messages; nested workflow files are found next to it.

    :param mock: check it for a mock run: provider packages and API keys are not required.
    :param overrides: defaults that replace the file's (as `load_workflow` takes them).
    :raises WorkflowError: listing every problem found, each with file:line:column and key path.
    """
    here = str(FilePath(file).resolve()) if file != "<workflow>" else file
    return _parse(text, file, mock=mock, stack=(here,), overrides=overrides or RunOverrides())


def _issue_order(file: str) -> Callable[[Issue], tuple[bool, str, int, int]]:
    """Issues of this file first, then those of the files it nests, each in line order."""

    def order(issue: Issue) -> tuple[bool, str, int, int]:
        other = (issue.location.file or file) != file
        return other, issue.location.file or "", issue.location.line or 0, issue.location.column or 0

    return order


def _load_file(name: str, *, mock: bool, stack: tuple[str, ...], overrides: RunOverrides) -> LoadedWorkflow:
    return _parse(read_workflow_text(name), name, mock=mock, stack=stack, overrides=overrides)


def load_workflow(
    path: str | os.PathLike[str], *, mock: bool = False, overrides: RunOverrides | None = None
) -> LoadedWorkflow:
    """Load and check a workflow file and the files it nests (handlers and providers are resolved now).

    :param mock: check it for a mock run: provider packages and API keys are not required.
    :param overrides: defaults that replace those of the file and of the files it nests, for this load
        (`RunOverrides.from_command_line(provider=..., model=..., settings=["temperature=0.2"])`); a step that
        sets its own value keeps it, with an `OverrideWarning`.
    :raises WorkflowError: listing every problem found, each with file:line:column and key path.
    """
    name = os.fspath(path)
    return _load_file(name, mock=mock, stack=(str(FilePath(name).resolve()),), overrides=overrides or RunOverrides())


__all__ = [
    "LoadedStep",
    "LoadedWorkflow",
    "check_live_providers",
    "format_path",
    "load_workflow",
    "offline_mode_requested",
    "parse_workflow",
]
