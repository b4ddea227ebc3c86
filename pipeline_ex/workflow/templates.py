"""Prompt templates: Jinja2 in a sandboxed environment, with references checked before a run starts.

Templates see `inputs.<name>`, `steps.<id>` (an LLM step's result: `.text`, `.response`; a python
step's returned value) and `vars.<name>`. Undefined names are errors, never empty strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOTS = ("inputs", "steps", "vars")


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """The shared sandboxed Jinja2 environment (no access to unsafe attributes, no mutation)."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


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
    """Render a template with `inputs`, `steps` and `vars` (each distinct template is compiled once)."""
    return _compiled(source).render(values)


__all__ = ["ROOTS", "References", "TemplateSyntaxError", "environment", "references", "render"]
