"""Template checks before a run: every name a template reads must exist, and have run, where it is read.

Steps run in order, so a template reads the steps before its own. Inside groups:
- `parallel` children run at the same time: a child cannot read its siblings; after the group, every
  child is readable by its id;
- a `for_each` body reads the item (by its `as` name) and the body steps before it; after the group,
  `steps.<group>.items[i].<child>` holds them;
- a `loop` body reads the body steps before it and `steps.<loop>` (the finished iterations); `until`
  reads the whole body; after the group, `steps.<loop>.last.<child>` holds them;
- conditions, `for_each:` lists and the inputs of nested workflows are checked where the step is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline_ex.workflow import templates
from pipeline_ex.workflow.schema import (
    AnyStep,
    ForEachStep,
    LLMStep,
    LoopStep,
    ParallelStep,
    SetStep,
    Workflow,
    WorkflowStep,
)
from pipeline_ex.workflow.yaml_source import Path

Report = Callable[[Path, str], None]


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

    def copy(self) -> _EarlierNames:
        """A copy to extend in a nested scope (a group's children) without changing this one."""
        other = _EarlierNames()
        other.order = list(self.order)
        other.known = set(self.known)
        other._by_deletion = {key: list(value) for key, value in self._by_deletion.items()}
        return other

    def listing(self) -> str:
        """The names, for a message: all of them sorted, or the last few and how many there are."""
        if not self.order:
            return ": none (this is the first step)"
        if len(self.order) <= self.LISTED:
            return ": " + ", ".join(sorted(self.order))
        return f" include {', '.join(self.order[-self.LISTED :])} ({len(self.order)} in all)"


@dataclass
class _Scope:
    """What a template may read at one place in the file."""

    steps: _EarlierNames
    locals: frozenset[str] = frozenset()
    blocked: dict[str, str] = field(default_factory=dict)
    """Step ids that exist but cannot be read here, with why and what to read instead."""

    def nested(self, *, locals_: frozenset[str] | None = None) -> _Scope:
        return _Scope(self.steps.copy(), self.locals if locals_ is None else locals_, dict(self.blocked))


class TemplateChecker:
    """Checks every template of a workflow against the scope it runs in; `report(path, message)` per problem."""

    def __init__(self, workflow: Workflow, report: Report) -> None:
        self.workflow = workflow
        self.report = report
        self.env_globals = set(templates.environment().globals)
        self.env_filters = set(templates.environment().filters)
        self.inputs = set(workflow.inputs)
        self.list_inputs = {name for name, spec in workflow.inputs.items() if spec.type == "list"}
        self.all_steps: set[str] = set()
        self.known_vars: set[str] = set()
        for step in workflow.steps:
            self._collect(step)

    def _collect(self, step: AnyStep) -> None:
        self.all_steps.add(step.id)
        for child in _children(step):
            self._collect(child)

    def check_all(self) -> None:
        """Check every template in the workflow."""
        scope = _Scope(_EarlierNames())
        if self.workflow.defaults.system:
            self.check(self.workflow.defaults.system, ("defaults", "system"), scope)
        self._steps(self.workflow.steps, ("steps",), scope)

    def check(self, source: str, path: Path, scope: _Scope) -> templates.References | None:
        """Check one template; return what it reads (None when it does not parse)."""
        try:
            found = templates.references(source)
        except templates.TemplateSyntaxError as error:
            self.report(path, f"template syntax error on template line {error.lineno}: {error.message}")
            return None
        except (RecursionError, ValueError, MemoryError) as error:
            self.report(path, f"template cannot be parsed: {type(error).__name__}: {error}"[:300])
            return None
        earlier = scope.steps
        for name in sorted(found.by_root["steps"] - earlier.known):
            if name in scope.blocked:
                self.report(path, f"template reads steps.{name}, but {scope.blocked[name]}")
                continue
            if name in self.all_steps:
                later, hint = " (it runs later)", ""
            else:
                close = earlier.close_match(name)
                later, hint = "", f"; did you mean {close!r}?" if close else "; earlier steps" + earlier.listing()
            self.report(path, f"template reads steps.{name}, but no earlier step has id {name!r}{later}{hint}")
        for name in sorted(found.by_root["inputs"] - self.inputs):
            self.report(path, f"template reads inputs.{name}, but the workflow declares no input {name!r}")
        for name in sorted(found.by_root["vars"] - self.known_vars):
            self.report(path, f"template reads vars.{name}, but no earlier 'set' step sets it")
        for name in sorted(found.unknown_roots - self.env_globals - scope.locals):
            where = "; templates can use inputs, steps and vars"
            if scope.locals:
                where += ", and here " + ", ".join(sorted(scope.locals))
            self.report(path, f"template reads {name!r}{where}")
        for name in sorted(found.filters - self.env_filters):
            self.report(path, f"template uses an unknown filter {name!r}")
        return found

    def _expression(self, value: Any, path: Path, scope: _Scope, what: str) -> str | None:
        """Check a value that must be one `{{ expression }}` (or not a string); return its expression."""
        if not isinstance(value, str):
            return None
        found = self.check(value, path, scope)
        if found is None:
            return None
        inner = templates.expression_source(value)
        if inner is None:
            self.report(path, f'{what} must be one expression such as "{{{{ steps.review.text }}}}", not text')
        return inner

    def _steps(self, steps: list[AnyStep], base: Path, scope: _Scope) -> None:
        for index, step in enumerate(steps):
            self._step(step, (*base, index), scope)

    def _step(self, step: AnyStep, path: Path, scope: _Scope) -> None:
        if step.when is not None:
            self._expression(step.when, (*path, "when"), scope, "when:")
        if isinstance(step, LLMStep):
            if step.prompt is not None:
                self.check(step.prompt, (*path, "prompt"), scope)
            for position, message in enumerate(step.messages or []):
                where = (*path, "messages", position)
                if isinstance(message, str):
                    self._expression(message, where, scope, "a messages entry that is not a mapping")
                else:
                    self.check(message.content, (*where, "content"), scope)
            for position, tool in enumerate(step.tools or []):
                if isinstance(tool, str) and "{" in tool:
                    self._expression(tool, (*path, "tools", position), scope, "a templated tools entry")
            if step.system:
                self.check(step.system, (*path, "system"), scope)
            if step.output_to_file is not None and "{" in step.output_to_file:
                self.check(step.output_to_file, (*path, "output_to_file"), scope)
        elif isinstance(step, SetStep):
            for name, value in step.vars.items():
                if isinstance(value, str):
                    self.check(value, (*path, "vars", name), scope)
            self.known_vars.update(step.vars)
        elif isinstance(step, ParallelStep):
            self._parallel(step, path, scope)
            return
        elif isinstance(step, ForEachStep):
            self._for_each(step, path, scope)
            return
        elif isinstance(step, LoopStep):
            self._loop(step, path, scope)
            return
        elif isinstance(step, WorkflowStep):
            for name, value in step.inputs.items():
                if isinstance(value, str):
                    self.check(value, (*path, "inputs", name), scope)
        scope.steps.add(step.id)

    def _parallel(self, step: ParallelStep, path: Path, scope: _Scope) -> None:
        inner = scope.nested()
        for child in step.parallel:  # a child's own id is readable only after it ran: never inside the group
            inner.blocked[child.id] = (
                f"step {child.id!r} runs at the same time (both are in parallel group {step.id!r}); "
                "read it after the group"
            )
        inner.blocked[step.id] = f"{step.id!r} is the parallel group this step is in; read it after the group"
        for index, child in enumerate(step.parallel):
            self._step(child, (*path, "parallel", index), inner.nested())
        for child in step.parallel:
            self._after_group(child, scope)
        scope.steps.add(step.id)

    def _after_group(self, step: AnyStep, scope: _Scope) -> None:
        """What a parallel child makes readable after its group: its id (and a parallel child's children)."""
        scope.steps.add(step.id)
        if isinstance(step, ParallelStep):
            for child in step.parallel:
                self._after_group(child, scope)
        else:
            for child in _children(step):
                self._block_body(child, scope, step)

    def _block_body(self, step: AnyStep, scope: _Scope, group: AnyStep) -> None:
        if isinstance(group, ForEachStep):
            reason = (
                f"{step.id!r} runs once per item of for_each {group.id!r}: read steps.{group.id}.items[i].{step.id}"
            )
        else:
            reason = f"{step.id!r} runs once per iteration of loop {group.id!r}: read steps.{group.id}.last.{step.id}"
        scope.blocked[step.id] = reason
        for child in _children(step):
            self._block_body(child, scope, group)

    def _for_each(self, step: ForEachStep, path: Path, scope: _Scope) -> None:
        if step.as_ in templates.ROOTS:
            self.report(
                (*path, "as"), f"as: {step.as_!r} would hide the templates' own {step.as_!r}; choose another name"
            )
        if isinstance(step.for_each, str):
            inner_source = self._expression(step.for_each, (*path, "for_each"), scope, "for_each:")
            if inner_source is not None:
                self._check_list(inner_source, (*path, "for_each"))
        body = scope.nested(locals_=scope.locals | {step.as_})
        body.blocked[step.id] = (
            f"for_each {step.id!r} is still running; its body reads its own item's steps as steps.<child>"
        )
        self._steps(step.steps, (*path, "steps"), body)
        for child in step.steps:
            self._block_body(child, scope, step)
        scope.steps.add(step.id)

    def _check_list(self, expression: str, path: Path) -> None:
        """An expression `for_each:` takes must give a list: catch the inputs and step texts that cannot."""
        parts = expression.split(".")
        if len(parts) == 2 and parts[0] == "inputs" and parts[1] in self.inputs and parts[1] not in self.list_inputs:
            kind = self.workflow.inputs[parts[1]].type
            self.report(path, f"for_each needs a list, but input {parts[1]!r} is {kind}; declare it with 'type: list'")
        elif len(parts) == 3 and parts[0] == "steps" and parts[2] == "text":
            self.report(path, f"for_each needs a list, but steps.{parts[1]}.text is text; use a python step's list")

    def _loop(self, step: LoopStep, path: Path, scope: _Scope) -> None:
        body = scope.nested()
        body.steps.add(step.id)  # the finished iterations: steps.<loop>.last, .iterations
        self._steps(step.steps, (*path, "steps"), body)
        if step.loop.until is not None:
            self._expression(step.loop.until, (*path, "loop", "until"), body, "until:")
        for child in step.steps:
            self._block_body(child, scope, step)
        scope.steps.add(step.id)


def _children(step: AnyStep) -> list[AnyStep]:
    if isinstance(step, ParallelStep):
        return list(step.parallel)
    if isinstance(step, ForEachStep | LoopStep):
        return list(step.steps)
    return []
