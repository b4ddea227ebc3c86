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
from typing import Any

import httpx
import openai
import pytest
from server_kit import (
    RUN_EVENTS,
    SSE,
    TEXT,
    CliServer,
    ThreadServer,
    TimedRegistry,
    assert_error,
    cli_executable,
    iter_frames,
)

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


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible gaps: /v1/models, /healthz, usage: null on every chunk but the last
# ---------------------------------------------------------------------------------------------------------


def test_models_lists_the_workflows_for_the_openai_client(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=10)
    models = list(client.models.list())
    names = [m.id for m in models]
    assert names == sorted(names) and {"fast", "echo", "two_steps", "needs_topic"} <= set(names)
    assert "broken" not in names
    assert all(m.object == "model" and m.owned_by == "pipeline-ex" and isinstance(m.created, int) for m in models)
    raw = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    assert raw["object"] == "list" and [m["id"] for m in raw["data"]] == names


def test_models_needs_the_api_key(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server(api_key="sesame")
    assert_error(httpx.get(f"{server.url}/v1/models", timeout=10), 401)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sesame", max_retries=0, timeout=10)
    assert "fast" in [m.id for m in client.models.list()]


def test_healthz(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server(api_key="sesame")
    response = httpx.get(f"{server.url}/healthz", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["workflows"] >= 4


def test_chunks_before_the_last_carry_usage_null(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server()
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with_usage = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}, timeout=10
    )
    chunks = [json.loads(line[6:]) for line in with_usage.text.splitlines() if line.startswith("data: {")]
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks
    assert chunks[-1]["usage"]["completion_tokens"] == 2 and chunks[-1]["choices"] == []
    without = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
    assert '"usage"' not in without.text


# ---------------------------------------------------------------------------------------------------------
# EventSource: the retry field, and 204 once nothing is left
# ---------------------------------------------------------------------------------------------------------


def test_sse_streams_start_with_a_retry_field(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server(retry_ms=1500)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        started = http.post("/workflows/fast/run", json={}, headers=SSE)
        assert started.text.startswith("retry: 1500\n\n"), started.text[:40]
        run_id = started.headers["x-run-id"]
        resumed = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": f"{run_id}:3"})
        assert resumed.text.startswith("retry: 1500\n\n")
        assert [f["event"] for f in parse_frames(resumed.text)] == [
            "delta",
            "delta",
            "done",
            "step_finished",
            "run_finished",
            "end",
        ]


def test_resuming_a_finished_run_at_its_end_is_204(start_server: Callable[..., ThreadServer]) -> None:
    registry = TimedRegistry()
    server = start_server(registry=registry)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for workflow in ("fast", "fail"):
            frames = parse_frames(http.post(f"/workflows/{workflow}/run", json={}, headers=SSE).text)
            end = frames[-1]
            run_id = end["id"].partition(":")[0]
            assert end["event"] == "end" and end["id"] == f"{run_id}:end"  # a finished stream's last word
            registry.wait_finished([run_id])
            done = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": end["id"]})
            assert done.status_code == 204 and done.content == b"", (workflow, done.text)
            last = [f for f in frames if f.get("event") in RUN_EVENTS][-1]
            assert last["event"] == "run_finished"  # the run's last event
            last_event = last["id"]
            after_last = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": last_event})
            if workflow == "fast":  # nothing left after its last event
                assert after_last.status_code == 204
            else:  # a client that missed the error frame after the last event is still told the run failed
                assert after_last.status_code == 200
                assert [f["event"] for f in parse_frames(after_last.text)] == ["error", "end"]
            before = f"{run_id}:{int(last_event.rpartition(':')[2]) - 1}"
            assert http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": before}).status_code == 200


def test_a_live_run_followed_to_its_end_is_200(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("POST", "/workflows/slow/run?resumable=true", json={}, headers=SSE) as first:
            run_id = first.headers["x-run-id"]
            next(iter_frames(first.iter_text()))
        resumed = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": f"{run_id}:1"})
        assert resumed.status_code == 200 and parse_frames(resumed.text)[-1]["event"] == "end"


# ---------------------------------------------------------------------------------------------------------
# Keepalive: a client with a short read timeout survives a slow first token
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def slow_first_token(tmp_path: Path) -> Path:
    folder = tmp_path / "workflows"
    folder.mkdir()
    step = {"id": "answer", "provider": "mock", "prompt": "x", "mock_response": ["late ", "reply"]}
    step["options"] = {"delay_ms": 1200}  # longer than the client's 0.8 s read timeout, twice
    document = {"name": "slow", "inputs": {"prompt": {"default": "x"}}, "steps": [step]}
    (folder / "slow.yaml").write_text(json.dumps({"workflow": document}))
    return folder


def test_keepalives_keep_a_short_timeout_client_reading(
    start_server: Callable[..., ThreadServer], slow_first_token: Path
) -> None:
    server = start_server(folder=slow_first_token, keepalive=0.25)
    timeout = httpx.Timeout(10, read=0.8)
    with httpx.Client(base_url=server.url, timeout=timeout) as http:
        sse = http.post("/workflows/slow/run", json={}, headers=SSE)
        assert sse.text.count(": keepalive") >= 4 and parse_frames(sse.text)[-1]["event"] == "end"
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=timeout)
    stream = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}], stream=True)
    chunks = list(stream)  # the SDK skips the keepalive comments
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "late reply"
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True},
        timeout=timeout,
    )
    assert raw.text.count(": keepalive") >= 4 and raw.text.rstrip().endswith("data: [DONE]")


def test_the_default_keepalive_beats_a_default_httpx_read_timeout() -> None:
    from pipeline_ex.sse import DEFAULT_KEEPALIVE

    assert httpx.Timeout(5.0).read > DEFAULT_KEEPALIVE  # type: ignore[operator]
    result = subprocess.run([cli_executable(), "serve", "--help"], capture_output=True, text=True, timeout=60)
    help_text = " ".join(result.stdout.split())
    assert "--keepalive SECONDS" in help_text and f"default {DEFAULT_KEEPALIVE:g}" in help_text


# ---------------------------------------------------------------------------------------------------------
# GET /runs
# ---------------------------------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_with_their_status(start_server: Any) -> None:
    running = start_server(mock=True)
    first = httpx.post(f"{running.url}/workflows/fast/run", json={"inputs": {}}, timeout=30)
    second = httpx.post(f"{running.url}/workflows/fail/run", json={"inputs": {}}, timeout=30)
    listed = httpx.get(f"{running.url}/runs", timeout=10).json()["runs"]
    assert [(r["run_id"], r["workflow"], r["status"]) for r in listed] == [
        (second.headers["x-run-id"], "fail", "failed"),
        (first.headers["x-run-id"], "fast", "ok"),
    ]
    assert listed[0]["created"] >= listed[1]["created"]
    one = httpx.get(f"{running.url}/runs", params={"limit": 1}, timeout=10).json()["runs"]
    assert [r["run_id"] for r in one] == [second.headers["x-run-id"]]
    for bad in ("0", "abc", "1001"):
        refused = httpx.get(f"{running.url}/runs", params={"limit": bad}, timeout=10)
        assert_error(refused, 422)
        assert "'limit' must be a whole number from 1 to 1000" in refused.json()["error"]["message"]
