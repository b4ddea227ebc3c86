"""Cassette files stay inside the cassette folder, whatever the workflow (or cassette marker) is named.

A run's cassette is named after its workflow. A name that would put the file outside the folder (`..`
parts, an absolute path) is rejected, in record and in replay mode, before anything is written or read:
the run fails (exit 1 from `pipeline-ex run`) with an error that names the problem and a safe name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_ex.modes.cassette import CassetteError, cassette_path

pytestmark = pytest.mark.streaming
pytest_plugins = ["pytester"]

WORKFLOW = """
workflow:
  name: "{name}"
  steps:
    - id: poem
      provider: mock
      prompt: "Write about owls."
"""

A_CASSETTE = (
    '{"t_ms": 0, "event": {"type": "delta", "content": "stolen", "step": "poem", "run_id": "r", "seq": 1}}\n'
    '{"t_ms": 1, "event": {"type": "done", "response": {"text": "stolen", "provider": "mock", '
    '"finish_reason": "stop"}, "step": "poem", "run_id": "r", "seq": 2, "duration_ms": 1}}\n'
)


def pipeline_ex(cwd: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(env_extra)
    return subprocess.run(
        [str(Path(sys.executable).with_name("pipeline-ex")), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(path: Path) -> tuple[int, int] | None:
    """The file's (size, mtime) if it exists, to show a run left it alone."""
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None


@pytest.mark.parametrize("mode", ["record", "replay"])
def test_a_workflow_named_dot_dot_cannot_leave_the_cassette_folder(tmp_path: Path, mode: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "escape.yaml").write_text(WORKFLOW.format(name="../escape"))
    outside = project / "escape.jsonl"  # where cassettes/../escape.jsonl would land
    (project / "cassettes").mkdir()
    if mode == "replay":
        outside.write_text(A_CASSETTE)  # a file there must not be replayed either
    before = snapshot(outside)

    result = pipeline_ex(project, "run", "escape.yaml", PIPELINE_TEST_MODE=mode, PIPELINE_CASSETTE_DIR="cassettes")

    assert result.returncode == 1, result.stderr
    assert "cassette name '../escape'" in result.stderr
    assert "outside the cassette folder" in result.stderr and "'escape'" in result.stderr
    assert "stolen" not in result.stdout
    assert snapshot(outside) == before
    assert not (tmp_path / "escape.jsonl").exists()
    assert not any((project / "cassettes").iterdir())


@pytest.mark.parametrize("mode", ["record", "replay"])
def test_an_absolute_workflow_name_cannot_leave_the_cassette_folder(tmp_path: Path, mode: str) -> None:
    (tmp_path / "abs.yaml").write_text(WORKFLOW.format(name="/tmp/abs"))
    target = Path("/tmp/abs.jsonl")
    before = snapshot(target)

    result = pipeline_ex(tmp_path, "run", "abs.yaml", PIPELINE_TEST_MODE=mode, PIPELINE_CASSETTE_DIR="cassettes")

    assert result.returncode == 1, result.stderr
    assert "cassette name '/tmp/abs'" in result.stderr and "outside the cassette folder" in result.stderr
    assert snapshot(target) == before


@pytest.mark.parametrize(
    "name", ["../escape", "/tmp/abs", "a/../../b", "..", "", "sub/..", "nul\x00byte", "link/inside"]
)
def test_names_that_leave_the_folder_are_rejected(tmp_path: Path, name: str) -> None:
    (tmp_path / "cassettes").mkdir()
    (tmp_path / "cassettes" / "link").symlink_to(tmp_path)  # a symlink inside pointing back out
    with pytest.raises(CassetteError, match="cassette name"):
        cassette_path(tmp_path / "cassettes", name)


@pytest.mark.parametrize("name", ["hello", "report v2", "weekly/report", "test_x[a-b]", "dots.in.name"])
def test_names_inside_the_folder_are_kept(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "cassettes"
    assert cassette_path(folder, name) == folder / f"{name}.jsonl"


def test_a_cassette_marker_that_leaves_the_folder_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import pytest
        from pipeline_ex import llm

        @pytest.mark.cassette("../../outside")
        def test_outside():
            llm.invoke(prompt="p", provider="mock", step="s")
        """
    )
    for args in ((), ("--pipeline-record",)):
        result = pytester.runpytest_subprocess(*args)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*cassette name '../../outside'*outside the cassette folder*"])
    assert not (pytester.path.parent / "outside.jsonl").exists()
