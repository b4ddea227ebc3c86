"""`pipeline-ex serve`: failures logged with a reference the client sees, the workflows folder check,
`GET /v1/models` and `GET /healthz` (with the official openai client), `usage: null` chunks, EventSource
reconnection ending in 204, the SSE `retry:` field, and keepalives a default-timeout client survives.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_kit import SSE, TEXT, ThreadServer, assert_error
from test_server import CliServer, cli_executable

from pipeline_ex.sse import parse_frames

pytestmark = pytest.mark.streaming


# ---------------------------------------------------------------------------------------------------------
# Failures the client hears about are logged, with a reference both sides know
# ---------------------------------------------------------------------------------------------------------


def references_in_log(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    found = {}
    for record in caplog.records:
        reference = getattr(record, "reference", None)
        if record.name == "pipeline_ex.server" and reference:
            found[reference] = record
    return found


@pytest.fixture
def failing(tmp_path: Path) -> Path:
    """A provider failure and an unexpected one (a python step raising TypeError), both usable as chat models."""
    from server_kit import WORKFLOWS

    folder = tmp_path / "workflows"
    folder.mkdir()
    prompt = {"prompt": {"default": "x"}}
    documents = {"fail": WORKFLOWS["fail"], "python_fail": {**WORKFLOWS["python_fail"], "inputs": prompt}}
    for name, body in documents.items():
        (folder / f"{name}.yaml").write_text(json.dumps({"workflow": {"name": name, **body}}))
    return folder


@pytest.mark.parametrize("workflow", ["python_fail", "fail"], ids=["unexpected", "provider"])
def test_every_failure_a_client_sees_is_logged_with_its_reference(
    start_server: Callable[..., ThreadServer], caplog: pytest.LogCaptureFixture, workflow: str, failing: Path
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline_ex.server")
    server = start_server(folder=failing)
    seen: list[dict[str, str]] = []
    chat = {"model": workflow, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=server.url, timeout=20) as http:
        as_json = assert_error(http.post(f"/workflows/{workflow}/run", json={}), 502)
        seen.append(as_json["error"])
        frames = parse_frames(http.post(f"/workflows/{workflow}/run", json={}, headers=SSE).text)
        seen.append(json.loads(next(f for f in frames if f["event"] == "error")["data"]))
        text = http.post(f"/workflows/{workflow}/run", json={}, headers=TEXT).text
        seen.append({"reference": text.rpartition("reference ")[2].rstrip("])\n")})
        seen.append(assert_error(http.post("/v1/chat/completions", json=chat), 502)["error"])
        streamed = http.post("/v1/chat/completions", json={**chat, "stream": True}).text
        chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        seen.append(next(c["error"] for c in chunks if "error" in c))
    logged = references_in_log(caplog)
    for payload in seen:
        reference = payload["reference"]
        assert len(reference) >= 8 and reference in logged, (payload, sorted(logged))
        if "message" in payload:
            assert reference in payload["message"] or payload["type"] != "internal"
    unexpected = [logged[p["reference"]] for p in seen]
    if workflow == "python_fail":
        assert all(r.levelno == logging.ERROR and r.exc_info for r in unexpected)  # with the traceback
        assert all("TypeError" not in json.dumps(p) for p in seen)  # which the client never sees
    else:
        assert all(r.levelno == logging.WARNING for r in unexpected)


def test_the_cli_server_log_carries_the_reference(kit_workflows: Path, tmp_path: Path) -> None:
    running = CliServer(["--workflows", str(kit_workflows), "--mock"], tmp_path / "serve.log").start()
    try:
        payload = assert_error(httpx.post(running.url + "/workflows/python_fail/run", json={}, timeout=10), 502)
    finally:
        running.stop()
    reference = payload["error"]["reference"]
    log = (tmp_path / "serve.log").read_text()
    assert f"reference {reference}" in log and "TypeError" in log and "Traceback" in log


SERVER_TOKEN = "srv-token-5b1e9d3c7a2f48"
QUOTING_STEP = """
import os

from pipeline_ex import PipelineError


def fail(ctx):
    raise PipelineError("could not authenticate with " + os.environ["PIPELINE_SERVER_API_KEY"])
"""


def test_log_lines_and_request_errors_are_redacted(
    start_server: Callable[..., ThreadServer],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline_ex.server")
    monkeypatch.setenv("PIPELINE_SERVER_API_KEY", SERVER_TOKEN)
    (tmp_path / "quoting_step.py").write_text(QUOTING_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "workflows"
    folder.mkdir()
    steps = {"quote": [{"id": "q", "type": "python", "callable": "quoting_step.fail"}]}
    typed = {"inputs": {"count": {"type": "integer"}}, "steps": [{"id": "a", "provider": "mock", "prompt": "x"}]}
    (folder / "quote.yaml").write_text(json.dumps({"workflow": {"name": "quote", "steps": steps["quote"]}}))
    (folder / "typed.yaml").write_text(json.dumps({"workflow": {"name": "typed", **typed}}))
    server = start_server(folder=folder, api_key=None)
    auth = {"Authorization": f"Bearer {SERVER_TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=20, headers=auth) as http:
        failed = http.post("/workflows/quote/run", json={})
        rejected = http.post("/workflows/typed/run", json={"inputs": {"count": SERVER_TOKEN}})
    assert assert_error(failed, 502)["error"]["message"] == "could not authenticate with ***"
    assert "***" in assert_error(rejected, 422)["error"]["message"]
    assert SERVER_TOKEN not in failed.text + rejected.text
    logged = [r for r in caplog.records if r.name == "pipeline_ex.server" and getattr(r, "reference", None)]
    assert logged and all(SERVER_TOKEN not in r.getMessage() for r in logged)
    assert SERVER_TOKEN not in caplog.text


# ---------------------------------------------------------------------------------------------------------
# The workflows folder
# ---------------------------------------------------------------------------------------------------------


def serve_once(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cli_executable(), "serve", "--port", "1", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_serve_without_a_workflows_folder_fails_with_a_hint(tmp_path: Path) -> None:
    result = serve_once(tmp_path)
    assert result.returncode == 2
    assert "no workflows folder" in result.stderr and "--workflows DIR" in result.stderr, result.stderr
    missing = serve_once(tmp_path, "--workflows", "nowhere")
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_serve_warns_about_an_empty_workflows_folder(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "notes.txt").write_text("not a workflow")
    running = CliServer(["--workflows", str(tmp_path / "workflows")], tmp_path / "serve.log").start()
    try:
        assert httpx.get(running.url + "/workflows", timeout=10).json() == {"workflows": []}
    finally:
        running.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "warning:" in log and "no workflow files" in log and "*.yaml" in log, log
