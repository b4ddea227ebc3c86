"""Secrets never leave the process, even when a provider's error message quotes the key it was sent.

The loopback OpenAI server (tests/openai_sse_server.py) answers 401 with a message that quotes the bearer
token, as some OpenAI-compatible proxies do. The keys are shapes that no pattern would catch (32 hex
digits, a `gsk_` key, a plain token), so only redaction by value keeps them out of: the CLI's error line
and console summary, the debug log, cassettes, recorder saves, and every HTTP answer of `pipeline-ex
serve` (JSON, SSE `done` and `error` frames, plain text, chat completions streamed or not) and its log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_sse_server import OpenAISSEServer
from server_kit import CliServer

from pipeline_ex import ProviderError, StreamingRecorder, run
from pipeline_ex.redaction import MIN_SECRET_LENGTH, REDACTED, redact, redact_text, redacting_logger, register_secret

pytestmark = [pytest.mark.streaming, pytest.mark.live]  # live: the loopback OpenAI server

SCRIPT = Path(sys.executable).with_name("pipeline-ex")
HEX_KEY = "9f86d081884c7d659a2feaa0c55ad015"
GSK_KEY = "gsk_Q2x7Lm0Pz9Rt4Vb8Nc1Yh6Jk3Wd5Fg"
PLAIN_TOKEN = "correct-horse-battery-staple-42"
SERVER_TOKEN = "srv-token-7c41e8b9a2d3f6"


def _workflow(folder: Path, name: str, step: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    document = {"workflow": {"name": name, "inputs": {"prompt": {"default": "hi"}}, "steps": [step]}}
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def _openai_step(server: OpenAISSEServer, **options: Any) -> dict[str, Any]:
    return {
        "id": "answer",
        "provider": "openai",
        "model": "gpt-test-mini",
        "prompt": "{{ inputs.prompt }}",
        "options": {"api_base_url": server.url, "max_retries": 0, **options},
    }


def _run_cli(folder: Path, workflow: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "run", str(workflow)],
        cwd=folder,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def echoing_server(openai_server: OpenAISSEServer) -> OpenAISSEServer:
    openai_server.script(reject_status=401)
    return openai_server


@pytest.mark.parametrize("key", [HEX_KEY, GSK_KEY], ids=["32-hex", "gsk_"])
def test_the_cli_error_line_summary_and_debug_log_never_show_the_key(
    key: str, echoing_server: OpenAISSEServer, tmp_path: Path
) -> None:
    workflow = _workflow(tmp_path, "echo", _openai_step(echoing_server))
    completed = _run_cli(tmp_path, workflow, {"OPENAI_API_KEY": key, "PIPELINE_STREAM_DEBUG": "1"})
    assert completed.returncode == 1, completed.stderr
    request = echoing_server.requests[-1]
    assert request.headers["authorization"] == f"Bearer {key}"  # the key was sent, and echoed back
    output = completed.stdout + completed.stderr
    assert key not in output
    assert "Incorrect API key provided: ***" in completed.stderr  # the error line and the summary
    assert "[answer] error (provider: " in completed.stderr
    assert "error: step 'answer' failed" in completed.stderr
    assert "provider chunk" in completed.stderr or "event" in completed.stderr  # the debug log ran


def test_a_custom_key_variable_and_an_env_secret_are_redacted_too(
    echoing_server: OpenAISSEServer, tmp_path: Path
) -> None:
    custom = _workflow(tmp_path, "custom", _openai_step(echoing_server, api_key_env="GATEWAY_KEY"))
    generator = _workflow(
        tmp_path,
        "generator",
        {
            "id": "answer",
            "prompt": "{{ inputs.prompt }}",
            "generator": {
                "type": "haystack.components.generators.chat.OpenAIChatGenerator",
                "init_parameters": {
                    "api_key": {"env": "MY_GATEWAY_TOKEN"},
                    "api_base_url": echoing_server.url,
                    "model": "gpt-test-mini",
                    "max_retries": 0,
                },
            },
        },
    )
    env = {"GATEWAY_KEY": PLAIN_TOKEN, "MY_GATEWAY_TOKEN": PLAIN_TOKEN[::-1]}
    for workflow, key in ((custom, PLAIN_TOKEN), (generator, PLAIN_TOKEN[::-1])):
        completed = _run_cli(tmp_path, workflow, {**env, "OPENAI_API_KEY": ""})
        assert completed.returncode == 1, completed.stderr
        assert echoing_server.requests[-1].headers["authorization"] == f"Bearer {key}"
        assert key not in completed.stdout + completed.stderr
        assert "Incorrect API key provided: ***" in completed.stderr


def test_cassettes_and_recorder_saves_never_hold_the_key(
    echoing_server: OpenAISSEServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow = _workflow(tmp_path, "echo", _openai_step(echoing_server))
    cassettes = tmp_path / "cassettes"
    completed = _run_cli(
        tmp_path,
        workflow,
        {"OPENAI_API_KEY": HEX_KEY, "PIPELINE_TEST_MODE": "record", "PIPELINE_CASSETTE_DIR": str(cassettes)},
    )
    assert completed.returncode == 1, completed.stderr
    saved = "".join(path.read_text(encoding="utf-8") for path in cassettes.glob("*.jsonl"))
    assert '"type": "done"' in saved or '"type":"done"' in saved
    assert HEX_KEY not in saved and REDACTED in saved

    monkeypatch.setenv("OPENAI_API_KEY", GSK_KEY)
    recorder = StreamingRecorder()
    with pytest.raises(ProviderError) as raised:
        run(workflow, on_event=recorder)
    assert GSK_KEY not in str(raised.value)
    assert recorder.done is not None and recorder.done.error is not None
    assert GSK_KEY not in recorder.done.error.message
    recorder.save(tmp_path / "recording.jsonl")
    assert GSK_KEY not in (tmp_path / "recording.jsonl").read_text(encoding="utf-8")


# -- pipeline-ex serve -------------------------------------------------------------------------------------

FAILING_PYTHON_STEP = '''
import os

from pipeline_ex import PipelineError


def fail(ctx):
    """Fails with a message that quotes the server's own token."""
    raise PipelineError("could not authenticate with " + os.environ["PIPELINE_SERVER_API_KEY"])
'''


@pytest.fixture
def served(echoing_server: OpenAISSEServer, tmp_path: Path) -> Iterator[tuple[httpx.Client, CliServer]]:
    folder = tmp_path / "workflows"
    folder.mkdir()
    _workflow(folder, "echo", _openai_step(echoing_server))
    (tmp_path / "token_step.py").write_text(FAILING_PYTHON_STEP, encoding="utf-8")
    _workflow(folder, "python_fail", {"id": "parse", "type": "python", "callable": "token_step.fail"})
    env = {"OPENAI_API_KEY": HEX_KEY, "PIPELINE_SERVER_API_KEY": SERVER_TOKEN}
    headers = {"Authorization": f"Bearer {SERVER_TOKEN}", "Content-Type": "application/json"}
    server = CliServer(["--workflows", "workflows"], tmp_path / "serve.log", env=env, cwd=tmp_path).start(headers)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=20) as client:
            yield client, server
    finally:
        server.stop()


def test_no_http_answer_or_server_log_shows_a_secret(served: tuple[httpx.Client, CliServer]) -> None:
    client, server = served
    body = json.dumps({"inputs": {"prompt": "hi"}})
    answers = [
        client.post("/workflows/echo/run", content=body, headers={"Accept": "application/json"}),
        client.post("/workflows/echo/run", content=body, headers={"Accept": "text/event-stream"}),
        client.post("/workflows/echo/run", content=body, headers={"Accept": "text/plain"}),
        client.post("/workflows/python_fail/run", content="{}", headers={"Accept": "text/event-stream"}),
        client.post("/workflows/python_fail/run", content="{}", headers={"Accept": "application/json"}),
    ]
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    answers.append(client.post("/v1/chat/completions", content=json.dumps(chat)))
    answers.append(client.post("/v1/chat/completions", content=json.dumps({**chat, "stream": True})))
    texts = [answer.text for answer in answers]
    for text in texts:
        assert HEX_KEY not in text and SERVER_TOKEN not in text, text
    assert all("***" in text for text in texts), texts  # each answer did carry the (redacted) message
    assert "event: done" in texts[1] and "event: error" in texts[1]
    server.stop()
    log = server.log.read_text(encoding="utf-8")
    assert HEX_KEY not in log and SERVER_TOKEN not in log


# -- the mechanism -----------------------------------------------------------------------------------------


def test_redaction_by_value_covers_registered_secrets_longest_first_and_skips_short_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", HEX_KEY)
    register_secret(HEX_KEY + "-extended")
    register_secret("short")  # shorter than MIN_SECRET_LENGTH: ordinary words stay readable
    assert len("short") < MIN_SECRET_LENGTH
    text = f"keys {HEX_KEY} and {HEX_KEY}-extended, a short word, {GSK_KEY}, Bearer abcdefghijkl"
    assert redact_text(text) == "keys *** and ***, a short word, ***, ***"
    assert redact({"nested": [f"x{HEX_KEY}x"], "api_key": "abc", "prompt_tokens": 3}) == {
        "nested": ["x***x"],
        "api_key": "***",
        "prompt_tokens": 3,
    }
    monkeypatch.setenv("OPENAI_API_KEY", "rotated-key-0123456789")  # read when redacting, not at start-up
    assert redact_text("now rotated-key-0123456789") == "now ***"


def test_log_records_of_pipeline_ex_loggers_are_redacted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", HEX_KEY)
    logger = redacting_logger("pipeline_ex.test_redaction")
    with caplog.at_level(logging.WARNING, logger="pipeline_ex.test_redaction"):
        try:
            raise RuntimeError(f"the proxy said {HEX_KEY}")
        except RuntimeError:
            logger.exception("attempt failed: %s", f"key {HEX_KEY}")
    assert HEX_KEY not in caplog.text
    assert "attempt failed: key ***" in caplog.text and "the proxy said ***" in caplog.text


def test_a_token_given_to_create_app_is_a_secret_too(tmp_path: Path) -> None:
    from pipeline_ex.server import create_app

    token = "explicit-server-token-5d2c"
    assert redact_text(f"say {token}") == f"say {token}"
    (tmp_path / "workflows").mkdir()
    create_app(tmp_path / "workflows", api_key=token)
    assert redact_text(f"say {token}") == "say ***"


def test_an_unexpected_server_failure_is_logged_once_redacted_and_answered_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from server_kit import ThreadServer

    from pipeline_ex.server import create_app
    from pipeline_ex.server.catalog import WorkflowCatalog

    monkeypatch.setenv("OPENAI_API_KEY", HEX_KEY)

    def broken(self: WorkflowCatalog) -> list[dict[str, Any]]:
        raise RuntimeError(f"the key {HEX_KEY} was refused")

    monkeypatch.setattr(WorkflowCatalog, "describe", broken)
    (tmp_path / "workflows").mkdir()
    running = ThreadServer(create_app(tmp_path / "workflows", api_key=""))  # configures uvicorn's logging
    server_log = logging.getLogger("uvicorn.error")  # uvicorn's own log does not propagate to caplog's
    server_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO), running:
            response = httpx.get(f"{running.url}/workflows", timeout=10)
    finally:
        server_log.removeHandler(caplog.handler)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["message"] == f"internal server error (reference {error['reference']})"
    assert HEX_KEY not in caplog.text and "the key *** was refused" in caplog.text
    failures = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # ours, not uvicorn's raw traceback too
    assert error["reference"] in failures[0].getMessage()
