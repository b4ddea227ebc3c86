"""The README's two set-up commands come first, and CI runs exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    assert len(blocks) >= 2
    first_code = readme.index("```")
    assert readme[first_code:].startswith("```bash\n" + blocks[0])
    assert "pip install -e '.[local]'" in blocks[0]
    assert "pip install -e '.[local,dev]'" in blocks[1]
    assert blocks[1].endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = _bash_blocks((ROOT / "README.md").read_text())[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    assert "set -euo pipefail" in ci_lines
