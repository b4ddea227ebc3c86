"""The `openai` provider against a real OpenAI-compatible server this project did not write.

`python -m llama_cpp.server` (llama-cpp-python's FastAPI server) serves the embedded SmolLM2 GGUF on a
loopback port; a YAML workflow streams a short reply from it and makes one `stream: false` call.

Usage: llama_cpp.server never sends usage in a streamed reply. It ignores `stream_options` (its request
model drops unknown fields) and its chat chunks (`_convert_text_completion_chunks_to_chat` in
llama_cpp/llama_chat_format.py) carry no `usage` key, while its non-streamed `chat.completion` has one.
So the streamed step must report `usage is None` (never zeros), and the non-streamed one real counts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import pipeline_ex
from pipeline_ex import Delta, Done, StreamingRecorder

pytestmark = [pytest.mark.streaming, pytest.mark.live]

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gguf_path() -> Path:
    from pipeline_ex.llm.local_model import default_model_path

    path = Path(default_model_path())
    if not path.is_file():
        pytest.skip(f"the embedded GGUF model is not installed ({path})")
    return path


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running `llama_cpp.server` on a free loopback port; yields its `/v1` base URL."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    model = gguf_path()
    port = free_port()
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_workflow_streams_real_tokens_from_llama_cpp_server(llama_server: str, tmp_path: Path) -> None:
    workflow = tmp_path / "llama.yaml"
    workflow.write_text(
        textwrap.dedent(
            f"""
            workflow:
              name: llama-server
              defaults:
                provider: openai
                options: {{api_base_url: "{llama_server}"}}
                temperature: 0
                max_tokens: 20
              steps:
                - id: streamed
                  prompt: "Name three colors."
                - id: plain
                  prompt: "Name three animals."
                  stream: false
            """
        ).lstrip(),
        encoding="utf-8",
    )
    recorder = StreamingRecorder()

    result = pipeline_ex.run(workflow, on_event=recorder)

    recorder.assert_complete()
    by_step = recorder.by_step
    assert list(by_step) == ["streamed", "plain"]

    # the streamed step: several real token deltas, then a complete Done
    streamed = by_step["streamed"]
    deltas = [e for e in streamed if isinstance(e, Delta)]
    done = streamed[-1]
    assert isinstance(done, Done)
    assert len(deltas) >= 3, [d.content for d in deltas]
    assert all(d.kind == "text" and d.content for d in deltas)
    assert done.error is None
    assert done.streamed is True
    assert done.response.finish_reason in ("stop", "length")
    assert done.response.provider == "openai"
    assert done.response.text == "".join(d.content for d in deltas)
    assert done.response.text.strip()
    assert done.ttft_ms is not None and 0 <= done.ttft_ms <= done.duration_ms
    # llama_cpp.server sends no usage in streamed replies: reported as unknown, never as zeros
    assert done.response.usage is None

    # the non-streamed step: one Delta with the whole reply, and the server's real usage
    plain = by_step["plain"]
    plain_done = plain[-1]
    assert isinstance(plain_done, Done)
    assert plain_done.error is None
    assert plain_done.streamed is False
    assert [e.content for e in plain if isinstance(e, Delta)] == [plain_done.response.text]
    assert plain_done.response.text.strip()
    usage = plain_done.response.usage
    assert usage is not None
    assert usage.input_tokens is not None and usage.input_tokens > 0
    assert usage.output_tokens is not None and 0 < usage.output_tokens <= 20
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    assert result.steps["streamed"].done is done
    assert result.steps["plain"].done is plain_done
