"""What the command-line tests share: `pipeline-ex` run as a subprocess with a clean environment (with its
output captured, on a pseudo-terminal, or sent a signal part-way through), a scratch copy of the project, and
YAML and JSON-lines file helpers. Everything runs the real command line; nothing here stands in for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pty_kit import read_in_background

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("pipeline-ex")
TIMEOUT = 60


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without any `PIPELINE_*` variable, with `NO_COLOR=1`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def command(*args: str, script: bool = False) -> list[str]:
    """The argv of `python -m pipeline_ex ARGS`, or of the installed `pipeline-ex` script with `script=True`."""
    return [*([str(SCRIPT)] if script else [sys.executable, "-m", "pipeline_ex"]), *args]


def cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, script: bool = False, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline_ex ARGS` (or the installed `pipeline-ex` script) and capture its output.

    `env` defaults to `cli_env()`.
    """
    return subprocess.run(
        command(*args, script=script),
        cwd=cwd,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_on_a_pty(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, stdout_too: bool = False, timeout: float = TIMEOUT
) -> tuple[int, bytes, bytes]:
    """Run `python -m pipeline_ex ARGS` with its stderr on a pseudo-terminal, and its stdout too if `stdout_too`.

    Returns the exit code, what it wrote to the stdout pipe (nothing with `stdout_too`) and all the terminal
    got, as bytes. `env` defaults to `cli_env()`.
    """
    master, slave = os.openpty()
    reader, chunks = read_in_background(master)
    try:
        proc = subprocess.run(
            command(*args),
            cwd=cwd,
            env=env if env is not None else cli_env(),
            stdout=slave if stdout_too else subprocess.PIPE,
            stderr=slave,
            timeout=timeout,
            check=False,
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, proc.stdout or b"", b"".join(chunks)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project directory with copies of workflows/, handlers/ and tools/."""
    for folder in ("workflows", "handlers", "tools"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def write(path: Path, text: str) -> Path:
    """Write `text`, dedented and without its leading blank lines, to `path`; return `path`."""
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def slow_workflow(folder: Path, *, chunks: int = 300, delay_ms: int = 30, file: str = "slow.yaml", **step: Any) -> Path:
    """A one-step mock workflow streaming `chunks` chunks `delay_ms` apart (far longer than a test waits);
    `step` adds to the step (its handlers, for instance). Written to `folder / file`, which is returned."""
    fields = {
        "id": "slow",
        "provider": "mock",
        "prompt": "go slowly",
        "options": {"delay_ms": delay_ms, "mock_response": [f"c{i} " for i in range(chunks)]},
        **step,
    }
    path = folder / file
    path.write_text(json.dumps({"workflow": {"name": "slow", "steps": [fields]}}, indent=2), encoding="utf-8")
    return path


def read_jsonl(path: Path, *, skip_blank: bool = True) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; with `skip_blank=False` a blank line fails to parse."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() or not skip_blank]


def signal_after_lines(
    *args: str,
    cwd: Path,
    lines_in: Path,
    count: int,
    signum: int,
    env: Mapping[str, str] | None = None,
    script: bool = False,
    wait: float = 30,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Start `pipeline-ex ARGS`, send it `signum` once `lines_in` holds `count` whole lines, and let it end.

    Fails if the run ends first, or if the lines do not come within `wait` seconds; the run then has
    `timeout` seconds to exit, and is killed if it does not. `env` defaults to `cli_env()`; pass `os.environ`
    for the environment of this process as it is. Returns the exit code and everything the run printed.
    """
    proc = subprocess.Popen(
        command(*args, script=script),
        cwd=cwd,
        env=env if env is not None else cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + wait
        while not (lines_in.exists() and lines_in.read_bytes().count(b"\n") >= count):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{lines_in} never got {count} lines"
            time.sleep(0.01)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
