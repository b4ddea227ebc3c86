"""Docs are tests: every Python block in README.md runs, as written, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md"]


def _python_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((doc, line, match.group(1)))
    return blocks


@pytest.mark.parametrize(("doc", "line", "code"), _python_blocks(), ids=lambda v: str(v)[:20])
def test_python_block_runs(doc: str, line: int, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:pipeline_ex", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{doc}:{line} failed:\n{result.stderr}"
