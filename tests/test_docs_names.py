"""Every environment variable, command-line flag, pytest marker and handler name the docs mention is
exercised by a test: it appears in a test module, or in a code block of the docs (which
tests/test_docs.py runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline_ex.streaming.names import BUILTINS, ELIXIR_ALIASES, LEGACY_ALIASES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "MIGRATION.md")
ENV_VAR = re.compile(r"\b(PIPELINE_[A-Z_]+|NO_COLOR|[A-Z]+_API_KEY|[A-Z_]+_BASE_URL)\b")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]+)")
MARKER = re.compile(r"@pytest\.mark\.(\w+)|pytest -m (\w+)")
NOT_OURS = {"--help", "--version"}  # argparse's own; checked in tests/test_cli.py anyway


def _docs_text() -> str:
    return "\n".join((ROOT / doc).read_text() for doc in DOCS)


def _exercised_text() -> str:
    tests = [p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name]
    blocks = re.findall(r"```(?:python|bash|yaml)\n(.*?)```", _docs_text(), flags=re.DOTALL)
    return "\n".join(tests + blocks)


def _mentioned() -> list[tuple[str, str]]:
    text = _docs_text()
    names: set[tuple[str, str]] = set()
    names |= {("env var", m) for m in ENV_VAR.findall(text)}
    names |= {("flag", m) for m in FLAG.findall(text) if m not in NOT_OURS}
    names |= {("marker", a or b) for a, b in MARKER.findall(text)}
    for handler in [*BUILTINS, *ELIXIR_ALIASES, *LEGACY_ALIASES]:
        if re.search(rf"`{re.escape(handler)}`|\b{re.escape(handler)}\b(?=[`\s,.)])", text) and (
            "." in handler or f"`{handler}`" in text
        ):
            names.add(("handler", handler))
    return sorted(names)


def test_docs_mention_names_at_all() -> None:
    kinds = {kind for kind, _ in _mentioned()}
    assert kinds == {"env var", "flag", "marker", "handler"}


@pytest.mark.parametrize(("kind", "name"), _mentioned(), ids=lambda v: str(v))
def test_each_documented_name_is_exercised(kind: str, name: str) -> None:
    assert name in _exercised_text(), f"the docs mention the {kind} {name!r}, but no test or doc example uses it"
