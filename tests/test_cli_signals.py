"""`pipeline-ex run` under signals and closed pipes, as a real subprocess.

- SIGTERM is handled like Ctrl-C: every running step delivers `Done(cancelled)`, then the exit code is 143.
- A reader that goes away (`pipeline-ex run ... | head`) ends the run quietly with exit code 141, as other
  Unix tools report a closed pipe: no traceback and no error line.
- Ctrl-C before the first token of the embedded local model (while the model loads or processes the
  prompt, with llama.cpp's native code running) exits with 130 every time, with `Done(cancelled)`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_kit import SCRIPT, read_jsonl, signal_after_lines, slow_workflow

pytestmark = [
    pytest.mark.streaming,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pipes"),
]


def _assert_one_cancelled_done(events: list[dict[str, Any]]) -> None:
    kinds = [event["type"] for event in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done", kinds
    done = events[-1]
    assert done["response"]["finish_reason"] == "cancelled"
    assert done["error"]["type"] == "cancelled"
    assert done["response"]["text"] == "".join(e["content"] for e in events if e["type"] == "delta")


def test_sigterm_cancels_the_run_delivers_done_cancelled_and_exits_143(tmp_path: Path) -> None:
    slow_workflow(tmp_path, stream_handler="jsonl", stream_handler_options={"path": "events.jsonl"})
    events_file = tmp_path / "events.jsonl"
    result = signal_after_lines(
        "run",
        "slow.yaml",
        cwd=tmp_path,
        lines_in=events_file,
        count=3,
        signum=signal.SIGTERM,
        env=os.environ,
        script=True,
        wait=60,
    )
    stderr = result.stderr
    assert result.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "error: terminated" in stderr
    events = read_jsonl(events_file, skip_blank=False)
    _assert_one_cancelled_done(events)
    assert 3 <= len(events) - 1 < 300


def _piped_into_head(folder: Path, run_args: str, head_bytes: int) -> tuple[str, int, str]:
    """`pipeline-ex run ARGS | head -c N` through bash's own pipe: what head printed, run's exit code, stderr."""
    completed = subprocess.run(
        f"'{SCRIPT}' run {run_args} | head -c {head_bytes}; echo \" status=${{PIPESTATUS[0]}}\"",
        shell=True,
        executable="/bin/bash",
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    printed, _, status = completed.stdout.rstrip().rpartition(" status=")
    return printed, int(status), completed.stderr


def test_a_closed_output_pipe_ends_the_run_quietly_with_141(tmp_path: Path) -> None:
    slow_workflow(tmp_path, chunks=200, delay_ms=5)
    printed, status, stderr = _piped_into_head(tmp_path, "slow.yaml --output-dir out", 20)
    assert printed.startswith("c0 c1 ")
    assert status == 141, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr and "Broken pipe" not in stderr
    assert "error:" not in stderr, stderr


def test_a_closed_pipe_under_json_output_exits_141_too(tmp_path: Path) -> None:
    # a result larger than a pipe's buffer, so that writing it must fail once `head` has gone
    slow_workflow(tmp_path, chunks=15_000, delay_ms=0, stream_handler="null")
    printed, status, stderr = _piped_into_head(tmp_path, "slow.yaml --json", 1)
    assert printed == "{"
    assert status == 141, stderr
    assert "Traceback" not in stderr


# -- Ctrl-C before the local model's first token -----------------------------------------------------------

MARKER = '''
import sys


def say_started(ctx):
    """Tells the test that the run got as far as its steps."""
    print("STEPS-STARTED", file=sys.stderr, flush=True)
'''

LOCAL_WORKFLOW = """
workflow:
  name: interrupt_local
  steps:
    - id: started
      type: python
      callable: marker.say_started
    - id: story
      provider: local
      prompt: "Write a long story about the sea, the ships and the sailors."
      max_tokens: 400
      stream_handler: jsonl
      stream_handler_options: {path: events.jsonl}
"""

# After the marker the run imports haystack and llama.cpp, loads the model (native code, on the main
# thread) and processes the prompt (native code, on a worker thread): these delays land in all of them.
INTERRUPT_DELAYS_S = (0.0, 0.05, 0.15, 0.3, 0.5, 0.8, 1.2, 1.8, 2.5)


@pytest.mark.local_model
def test_ctrl_c_before_the_local_models_first_token_exits_130_cleanly_every_time(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    (tmp_path / "marker.py").write_text(MARKER, encoding="utf-8")
    (tmp_path / "interrupt_local.yaml").write_text(LOCAL_WORKFLOW, encoding="utf-8")
    outcomes = []
    for delay in INTERRUPT_DELAYS_S:
        events_file = tmp_path / "events.jsonl"
        events_file.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [str(SCRIPT), "run", "interrupt_local.yaml"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        try:
            assert proc.stderr is not None
            line = ""
            while "STEPS-STARTED" not in line:
                line = proc.stderr.readline()
                assert line, proc.communicate()
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        events = read_jsonl(events_file, skip_blank=False) if events_file.exists() else []
        outcomes.append((delay, proc.returncode, [e["type"] for e in events].count("done")))
        assert proc.returncode == 130, f"after {delay} s: exit {proc.returncode}\n{stderr}"
        assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
        _assert_one_cancelled_done(events)
    print(f"\ninterrupt delay (s), exit code, Done events: {outcomes}")
