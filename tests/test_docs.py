"""Docs are tests: every code block in README.md and MIGRATION.md runs, in order, as written.

Each document runs in a fresh directory holding copies of `workflows/`, `handlers/` and `tools/`. An HTML
comment right before a block can set how it runs:

- `<!-- docs: file=PATH -->` writes the block to PATH instead of running it (later blocks use it);
- `<!-- docs: exit=N -->` expects a bash block to exit with N.

Python blocks run with this interpreter, bash blocks with `bash -euo pipefail` and this environment's
`bin/` first on PATH, and YAML blocks are checked with `pipeline-ex validate --mock`. The README's two
set-up commands are covered by tests/test_readme_contract.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"(?:<!-- docs: (?P<directive>[^>]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```", re.DOTALL)
SETUP_BLOCKS = {"README.md": 2}


@dataclass
class Block:
    """One fenced code block of a document."""

    doc: str
    line: int
    lang: str
    code: str
    options: dict[str, str]


def blocks(doc: str) -> list[Block]:
    """The code blocks of `doc` (python, bash, yaml), in order, without the README's set-up commands."""
    text = (ROOT / doc).read_text()
    found = []
    for match in FENCE.finditer(text):
        options = dict(part.split("=", 1) for part in (match.group("directive") or "").split())
        line = text.count("\n", 0, match.start("code"))
        found.append(Block(doc, line, match.group("lang"), match.group("code"), options))
    skip = SETUP_BLOCKS.get(doc, 0)
    return [b for b in found if b.lang in ("python", "bash", "yaml")][skip:]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _run_block(block: Block, workdir: Path, index: int) -> subprocess.CompletedProcess[str]:
    if block.lang == "python":
        command = [sys.executable, "-c", block.code]
    elif block.lang == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        path = workdir / f"doc_block_{index}.yaml"
        path.write_text(block.code)
        command = [sys.executable, "-m", "pipeline_ex", "validate", "--mock", path.name]
    return subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("doc", ["README.md", "MIGRATION.md"])
def test_every_code_block_runs(doc: str, tmp_path: Path) -> None:
    for folder in ("workflows", "handlers", "tools"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    doc_blocks = blocks(doc)
    assert doc_blocks, f"{doc} has no code blocks"
    for index, block in enumerate(doc_blocks):
        if "file" in block.options:
            target = tmp_path / block.options["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            continue
        result = _run_block(block, tmp_path, index)
        expected = int(block.options.get("exit", "0"))
        assert result.returncode == expected, (
            f"{doc}:{block.line}: {block.lang} block exited {result.returncode}, expected {expected}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )


def test_docs_have_the_sections_the_guide_has() -> None:
    migration = (ROOT / "MIGRATION.md").read_text()
    for heading in (
        "## 1. Migration Checklist",
        "## 2. Architectural Changes",
        "## 3. Updating Python Steps",
        "## 4. YAML Workflow Changes",
        "## 5. Testing Strategy",
        "## 6. Common Issues",
    ):
        assert heading in migration
    for name in ("StreamingRecorder", "pytest -m streaming", "PIPELINE_STREAM_DEBUG", "stream_handler"):
        assert name in migration
