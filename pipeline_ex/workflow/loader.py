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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from pathlib import PurePosixPath
from typing import Any

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
from pipeline_ex.llm.policy import STEP_OPTION_NAMES
from pipeline_ex.llm.providers import check_provider
from pipeline_ex.modes.session import active_override, mode_from_env
from pipeline_ex.streaming.resolve import HandlerSpec, ensure_cwd_importable, resolve_handler
from pipeline_ex.workflow import templates
from pipeline_ex.workflow.inputs import InputValueError, typed_value
from pipeline_ex.workflow.schema import (
    STEP_MODELS,
    Defaults,
    GenerationFields,
    InputSpec,
    LLMStep,
    PythonStep,
    SetStep,
    StepLimits,
    Workflow,
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


def mock_mode_requested(mock: bool) -> bool:
    """Whether a run should use the mock provider: `mock=True`, `PIPELINE_TEST_MODE=mock` or `llm_mock`."""
    return mock or _active_mode() == "mock"


def offline_mode_requested(mock: bool) -> bool:
    """Whether provider packages and keys are not needed: mock runs and cassette replays."""
    return mock_mode_requested(mock) or _active_mode() == "replay"


@dataclass
class LoadedStep:
    """A validated step with everything resolved that can be resolved before running it."""

    spec: LLMStep | PythonStep | SetStep
    path: Path
    handlers: list[HandlerSpec] = field(default_factory=list)
    stream: bool = True
    provider: str | None = None
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    function: Callable[..., Any] | None = None

    @property
    def id(self) -> str:
        """The step id."""
        return self.spec.id


@dataclass
class LoadedWorkflow:
    """A workflow ready to run: its schema model, its source positions and its resolved steps."""

    workflow: Workflow
    source: YamlSource
    steps: list[LoadedStep]
    prefix: Path | None
    """Where the workflow body sits in the file: ("workflow",), (), or None for a bare list of steps."""
    mock: bool

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
    model: type[BaseModel] | None = Workflow
    for part in loc[:-1]:
        if model is Workflow and part == "defaults":
            model = Defaults
        elif model is Workflow and part == "steps":
            model = None
        elif model is None and part in STEP_MODELS:
            model = STEP_MODELS[str(part)]
        elif model is Workflow and part == "inputs":
            model = None
        elif model is None and isinstance(part, str) and loc[0] == "inputs":
            model = InputSpec
        elif model is None and isinstance(part, int):
            continue
        else:
            return model if part in ("options", "stream_handler_options") else None
    return model


def _data_path(loc: tuple[str | int, ...], data: Any) -> Path:
    """Turn a pydantic error location into a path in the YAML data.

    pydantic adds the names of union members to locations (the step type `llm`, or `str` and
    `list[str]` for a field that takes either); they are not keys of the file and are dropped.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and part in STEP_MODELS and len(path) >= 2 and path[-2] == "steps":
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
    return len(path) == 2 and path[0] == "steps" and isinstance(path[1], int)


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
            known = list(model.model_fields) if model is not None else []
            close = _close_key(key, tuple(known))
            hint = f" (did you mean {close!r}?)" if close else (f"; allowed: {', '.join(known)}" if known else "")
            checker.add(path, f"unknown key {key!r}{hint}", at_key=True)
        elif kind == "missing":
            checker.add(path[:-1], f"missing required key {last!r}")
        elif kind == "step_type" and not isinstance(item.get("input"), dict):
            checker.add(path, "a step must be a mapping with an id, a type and its settings")
        elif kind == "step_type" or (kind == "literal_error" and len(path) == 3 and _is_step_path(path[:2])):
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


def _deletions(name: str) -> set[str]:
    """`name`, and `name` with any one character deleted."""
    return {name, *(name[:at] + name[at + 1 :] for at in range(len(name)))}


class _EarlierNames:
    """The names defined so far, in order, with "did you mean" lookups that stay cheap for many names.

    difflib compares a name with every candidate, so asking it about each of n steps is quadratic in n.
    Up to `EXACT` names, difflib is asked about all of them, as everywhere else. Past that, the candidates
    are the names within one edit (a typo, a missing or extra character, two swapped ones), found in an
    index of each name with one character deleted, and difflib ranks those. difflib has no index, hence
    this one.
    """

    EXACT = 64
    INDEXED_LENGTH = 64
    LISTED = 10

    def __init__(self) -> None:
        self.order: list[str] = []
        self.known: set[str] = set()
        self._by_deletion: dict[str, list[str]] = {}

    def add(self, name: str) -> None:
        if name in self.known:
            return
        self.known.add(name)
        self.order.append(name)
        if len(name) <= self.INDEXED_LENGTH:
            for variant in _deletions(name):
                self._by_deletion.setdefault(variant, []).append(name)

    def close_match(self, name: str) -> str | None:
        if len(self.order) <= self.EXACT:
            candidates = sorted(self.order)
        elif len(name) <= self.INDEXED_LENGTH:
            candidates = sorted({found for variant in _deletions(name) for found in self._by_deletion.get(variant, ())})
        else:
            return None
        close = difflib.get_close_matches(name, candidates, n=1)
        return close[0] if close else None

    def listing(self) -> str:
        """The names, for a message: all of them sorted, or the last few and how many there are."""
        if not self.order:
            return ": none (this is the first step)"
        if len(self.order) <= self.LISTED:
            return ": " + ", ".join(sorted(self.order))
        return f" include {', '.join(self.order[-self.LISTED :])} ({len(self.order)} in all)"


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


def _check_templates(workflow: Workflow, checker: _Checker) -> None:
    env_globals = set(templates.environment().globals)
    env_filters = set(templates.environment().filters)
    known_inputs = set(workflow.inputs)
    earlier_steps = _EarlierNames()
    all_steps = {step.id for step in workflow.steps}
    known_vars: set[str] = set()

    def check(source: str, path: Path) -> None:
        try:
            found = templates.references(source)
        except templates.TemplateSyntaxError as error:
            checker.add(path, f"template syntax error on template line {error.lineno}: {error.message}")
            return
        except (RecursionError, ValueError, MemoryError) as error:
            checker.add(path, f"template cannot be parsed: {type(error).__name__}: {error}"[:300])
            return
        for name in sorted(found.by_root["steps"] - earlier_steps.known):
            if name in all_steps:
                later, hint = " (it runs later)", ""
            else:
                close = earlier_steps.close_match(name)
                later, hint = "", f"; did you mean {close!r}?" if close else "; earlier steps" + earlier_steps.listing()
            checker.add(path, f"template reads steps.{name}, but no earlier step has id {name!r}{later}{hint}")
        for name in sorted(found.by_root["inputs"] - known_inputs):
            checker.add(path, f"template reads inputs.{name}, but the workflow declares no input {name!r}")
        for name in sorted(found.by_root["vars"] - known_vars):
            checker.add(path, f"template reads vars.{name}, but no earlier 'set' step sets it")
        for name in sorted(found.unknown_roots - env_globals):
            checker.add(path, f"template reads {name!r}; templates can use inputs, steps and vars")
        for name in sorted(found.filters - env_filters):
            checker.add(path, f"template uses an unknown filter {name!r}")

    if workflow.defaults.system:
        check(workflow.defaults.system, ("defaults", "system"))  # the first step renders it with no earlier steps
    for index, step in enumerate(workflow.steps):
        if isinstance(step, LLMStep):
            check(step.prompt, ("steps", index, "prompt"))
            if step.system:
                check(step.system, ("steps", index, "system"))
        elif isinstance(step, SetStep):
            for name, value in step.vars.items():
                if isinstance(value, str):
                    check(value, ("steps", index, "vars", name))
            known_vars.update(step.vars)
        earlier_steps.add(step.id)


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def _resolve_step_handlers(step: LLMStep, index: int, defaults: Defaults, checker: _Checker) -> list[HandlerSpec]:
    owner: Path
    options_path: Path
    if step.stream_handler is not None:
        refs, options, owner = step.stream_handler, step.stream_handler_options, ("steps", index)
        options_path = ("steps", index, "stream_handler_options")
    elif defaults.stream_handler is not None:
        refs, options, owner = defaults.stream_handler, defaults.stream_handler_options, ("defaults",)
        options_path = ("defaults", "stream_handler_options")
        if step.stream_handler_options is not None:
            options = step.stream_handler_options
            options_path = ("steps", index, "stream_handler_options")
    else:
        if step.stream_handler_options:
            checker.add(("steps", index, "stream_handler_options"), "given without a stream_handler", at_key=True)
        return []
    ref_list = [refs] if isinstance(refs, str) else list(refs)
    if len(ref_list) > 1 and options:
        checker.add((*owner, "stream_handler_options"), "options need a single stream_handler, not a list")
        return []
    specs = []
    for position, ref in enumerate(ref_list):
        ref_path: Path = (*owner, "stream_handler") + ((position,) if isinstance(refs, list) else ())
        attempt = (ref, json.dumps(options, sort_keys=True, default=repr))
        error = checker.handler_failures.get(attempt)
        if error is None:
            try:
                specs.append(resolve_handler(ref, options, location=checker.at(ref_path)))
                continue
            except HandlerResolutionError as failure:
                error = checker.handler_failures[attempt] = failure
        where = options_path if error.about_options else ref_path
        checker.add(where, _one_line(error.describe()))
    return specs


def _provider_options(step: LLMStep, defaults: Defaults, provider: str | None, mock: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    custom = step.generator is not None and not mock
    if not mock or provider == "mock":  # a step on the mock provider keeps its own options in mock runs
        if step.generator is None and (step.provider is None or step.provider == defaults.provider):
            options.update(defaults.options or {})
        options.update(step.options or {})
    if custom and step.generator is not None:
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
    if (mock or provider == "mock") and step.mock_response is not None:
        options["mock_response"] = step.mock_response
    return options


def _resolve_python(step: PythonStep, index: int, checker: _Checker) -> Callable[..., Any] | None:
    module_name, _, attribute = step.callable.replace(":", ".").rpartition(".")
    path: Path = ("steps", index, "callable")
    ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name) if module_name else None
        function: Any = getattr(module, attribute) if module is not None else None
    except Exception as error:
        checker.add(path, f"cannot import {step.callable!r}: {type(error).__name__}: {error}")
        return None
    if not callable(function):
        checker.add(path, f"{step.callable!r} is not a callable; give 'package.module.function'")
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
    folders: dict[tuple[str, ...], int] = {}
    files: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(loaded):
        target = item.spec.output_to_file if isinstance(item.spec, LLMStep) else None
        if target is None or _output_file_problem(target, item.id) is not None:
            continue
        parts = PurePosixPath(target.replace("\\", "/")).parts
        files.setdefault(parts, index)
        for end in range(1, len(parts)):
            folders.setdefault(parts[:end], index)
    for parts, index in files.items():
        if parts in folders:
            other = folders[parts]
            checker.add(
                ("steps", index, "output_to_file"),
                f"{'/'.join(parts)!r} is the folder that steps[{other}] ({loaded[other].id!r}) writes into; "
                "give this step another file name",
            )


def _load_steps(workflow: Workflow, checker: _Checker, mock: bool, offline: bool) -> list[LoadedStep]:
    defaults = workflow.defaults
    loaded: list[LoadedStep] = []
    seen: dict[str, int] = {}
    for index, step in enumerate(workflow.steps):
        if step.id in seen:
            checker.add(("steps", index, "id"), f"duplicate step id {step.id!r} (first used by steps[{seen[step.id]}])")
        seen.setdefault(step.id, index)
        item = LoadedStep(step, ("steps", index))
        if isinstance(step, LLMStep):
            item.stream = (
                step.stream if step.stream is not None else (defaults.stream if defaults.stream is not None else True)
            )
            item.handlers = _resolve_step_handlers(step, index, defaults, checker)
            if step.generator is not None and step.provider is not None:
                checker.add(
                    ("steps", index, "generator"), "give either 'provider' or 'generator', not both", at_key=True
                )
            provider = "generator" if step.generator is not None else (step.provider or defaults.provider)
            item.model = step.model or defaults.model
            item.system = step.system if step.system is not None else defaults.system
            item.options = _provider_options(step, defaults, provider, mock)
            provider_path: Path = (
                ("steps", index, "generator")
                if step.generator is not None
                else ("steps", index, "provider")
                if step.provider
                else (("defaults", "provider") if defaults.provider else ("steps", index))
            )
            real_options = _provider_options(step, defaults, provider, mock=False) if mock else item.options
            real_options = {k: v for k, v in real_options.items() if k not in STEP_OPTION_NAMES}
            try:
                item.provider = check_provider(provider, real_options, offline=offline)
            except ProviderNotInstalledError as error:
                checker.add(provider_path, str(error))
            except ProviderConfigError as error:
                checker.add(provider_path, _one_line(str(error)))
            if mock:
                item.provider = "mock"
            problem = None if step.output_to_file is None else _output_file_problem(step.output_to_file, step.id)
            if problem is not None:
                checker.add(("steps", index, "output_to_file"), problem)
        elif isinstance(step, PythonStep):
            item.function = _resolve_python(step, index, checker)
        loaded.append(item)
    _check_output_folders(loaded, checker)
    return loaded


def parse_workflow(text: str, file: str = "<workflow>", *, mock: bool = False) -> LoadedWorkflow:
    """Load a workflow from YAML text. `file` is the name used in messages.

    :raises WorkflowError: listing every problem found, each with file:line:column and key path.
    """
    offline = offline_mode_requested(mock)
    mock = mock_mode_requested(mock)
    source = load_yaml(text, file)
    checker = _Checker(source, ())
    body, prefix = _split_body(source, checker)
    checker.prefix = prefix
    if checker.issues or body is None:
        raise WorkflowError(checker.issues)
    if isinstance(body, dict):
        steps = body.get("steps")
        if isinstance(steps, list):
            for index, raw in enumerate(steps):
                if isinstance(raw, dict):
                    _normalize_legacy(raw, ("steps", index), checker)
        if isinstance(body.get("defaults"), dict):
            _normalize_legacy(body["defaults"], ("defaults",), checker)
    try:
        workflow = Workflow.model_validate(body)
    except ValidationError as error:
        _schema_issues(error, body, checker)
        raise WorkflowError(sorted(checker.issues, key=_issue_order)) from None
    _check_input_defaults(workflow, checker)
    _check_templates(workflow, checker)
    steps = _load_steps(workflow, checker, mock, offline)
    if checker.issues:
        raise WorkflowError(sorted(checker.issues, key=_issue_order))
    return LoadedWorkflow(workflow, source, steps, prefix, mock)


def _issue_order(issue: Issue) -> tuple[int, int]:
    return issue.location.line or 0, issue.location.column or 0


def load_workflow(path: str | os.PathLike[str], *, mock: bool = False) -> LoadedWorkflow:
    """Load and check a workflow file (handlers and providers are resolved now, before any run).

    :param mock: check it for a mock run: provider packages and API keys are not required.
    :raises WorkflowError: listing every problem found, each with file:line:column and key path.
    """
    name = os.fspath(path)
    return parse_workflow(read_workflow_text(name), name, mock=mock)


__all__ = ["LoadedStep", "LoadedWorkflow", "format_path", "load_workflow", "mock_mode_requested", "parse_workflow"]
