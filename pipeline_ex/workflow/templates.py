"""Prompt templates: Jinja2 in a sandboxed environment, with references checked before a run starts.

Templates see `inputs.<name>`, `steps.<id>` (an LLM step's result: `.text`, `.response`; a python
step's returned value; a group's result) and `vars.<name>`, and inside a `for_each` body the item's name.
Undefined names are errors, never empty strings.

Conditions (`when:`, `until:`), `for_each:` lists and nested workflow inputs may be one expression,
`{{ ... }}` and nothing else: `evaluate` gives its value as it is (a bool, a list), not as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.environment import TemplateExpression
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOTS = ("inputs", "steps", "vars")


class _NamesFirstEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's sandbox, where `a.b` on a mapping reads its key `b` before any attribute of that name.

    Jinja2 looks attributes up first, so `inputs.items` would be the dict's `items` method rather than
    the input named `items`; here names in the workflow always win.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The shared sandboxed Jinja2 environment (no access to unsafe attributes, no mutation)."""
    return _NamesFirstEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass
class References:
    """The names a template reads under each root (`inputs`, `steps`, `vars`), plus other free names."""

    by_root: dict[str, set[str]] = field(default_factory=lambda: {root: set() for root in ROOTS})
    unknown_roots: set[str] = field(default_factory=set)
    filters: set[str] = field(default_factory=set)


def references(source: str) -> References:
    """The names `source` reads, found statically.

    :raises TemplateSyntaxError: when the template does not parse.
    """
    tree = environment().parse(source)
    found = References()
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if isinstance(target, nodes.Name) and target.name in ROOTS and target.name not in assigned:
            if isinstance(node, nodes.Getattr):
                found.by_root[target.name].add(node.attr)
            elif (
                isinstance(node, nodes.Getitem)
                and isinstance(node.arg, nodes.Const)
                and isinstance(node.arg.value, str)
            ):
                found.by_root[target.name].add(node.arg.value)
    found.filters = {f.name for f in tree.find_all(nodes.Filter)}
    for name_node in tree.find_all(nodes.Name):
        if name_node.ctx == "load" and name_node.name not in ROOTS and name_node.name not in assigned:
            found.unknown_roots.add(name_node.name)
    return found


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    return environment().from_string(source)


def render(source: str, values: Mapping[str, Any]) -> str:
    """Render a template with `inputs`, `steps` and `vars` (each distinct template is compiled once).

    Text with no `{` (no Jinja2 markup) and no carriage return (which Jinja2 would turn into a newline)
    renders as itself, so it is returned without building a Jinja2 context.
    """
    if "{" not in source and "\r" not in source:
        return source
    return _compiled(source).render(values)


@lru_cache(maxsize=512)
def expression_source(source: str) -> str | None:
    """The expression of a template that is one `{{ expression }}` and nothing else, or None.

    Whitespace around it (the newline a YAML block scalar ends with) is allowed.

    :raises TemplateSyntaxError: when the template does not parse.
    """
    source = source.strip()
    tree = environment().parse(source)
    body = tree.body
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    if isinstance(body[0].nodes[0], nodes.TemplateData):
        return None
    stripped = source.strip()
    if not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    inner = stripped[2:-2].strip("-+ \t\n")
    return inner


@lru_cache(maxsize=512)
def _compiled_expression(source: str) -> TemplateExpression:
    return environment().compile_expression(source, undefined_to_none=False)


def evaluate(source: str, values: Mapping[str, Any]) -> Any:
    """The value of a one-expression template (see `expression_source`); other templates render to text."""
    inner = expression_source(source)
    if inner is None:
        return render(source, values)
    value = _compiled_expression(inner)(**values)
    if isinstance(value, StrictUndefined):
        str(value)  # raises the UndefinedError that names what is missing
    return value


__all__ = [
    "ROOTS",
    "References",
    "TemplateSyntaxError",
    "environment",
    "evaluate",
    "expression_source",
    "references",
    "render",
]
