"""The README's two set-up commands come first, and CI runs exactly the second one."""

from __future__ import annotations

import os
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


def test_readme_first_command_streams_real_local_tokens_from_a_fresh_venv(tmp_path: Path) -> None:
    """The first command, as written, on a copy of the repository in a new virtual environment."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    project = tmp_path / "project"
    for name in files:
        source = ROOT / name
        if source.is_file():
            target = project / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    command = _bash_blocks((ROOT / "README.md").read_text())[0]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",) and not k.startswith("PIPELINE_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    result = subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    streamed = result.stdout.strip()
    assert len(streamed.split()) >= 5, f"expected a streamed poem, got {result.stdout!r}"
    assert "[poem] " in result.stderr and "tok/s" in result.stderr
