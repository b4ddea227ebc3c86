"""`pipeline-ex serve` over real HTTP on 127.0.0.1: every endpoint, errors, resume, cancellation, load.

Servers run either in a background thread (`server_kit.ThreadServer`: uvicorn on its own event loop, with
the same loop and HTTP implementation `pipeline-ex serve` picks) so tests can look inside the app, or as
real processes: the `pipeline-ex serve` command (`server_kit.CliServer`), and for the load test a small
launcher that also watches the loop's lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_kit import (
    BURST_CHUNKS,
    FAST_CHUNKS,
    JSON,
    JSON_BODY,
    LEAKS,
    LOAD_CHUNKS,
    MAX_BODY,
    SLOW_CHUNKS,
    SSE,
    TEXT,
    WORKFLOWS,
    CliServer,
    ThreadServer,
    TimedRegistry,
    aiter_frames,
    assert_clean_error,
    check_ids,
    cli_executable,
    events_of,
    free_port,
    iter_frames,
    text_of,
    write_workflows,
)

from pipeline_ex import Delta, Done, RunFinished
from pipeline_ex.gaps import Gap
from pipeline_ex.server import create_app
from pipeline_ex.server.runs import RunLog, RunRegistry
from pipeline_ex.sse import parse_frames

pytestmark = pytest.mark.streaming


# ---------------------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflows_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_workflows(tmp_path_factory.mktemp("served") / "workflows")


@pytest.fixture(scope="module")
def registry() -> TimedRegistry:
    return TimedRegistry(max_runs=100_000)


@pytest.fixture(scope="module")
def server(workflows_dir: Path, registry: TimedRegistry) -> Iterator[ThreadServer]:
    """The main test server: every workflow, a 4 KiB body limit, no API key."""
    app = create_app(workflows_dir, api_key="", max_body=MAX_BODY, registry=registry)
    running = ThreadServer(app).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def serve(workflows_dir: Path) -> Iterator[Callable[..., ThreadServer]]:
    """Start extra servers with other `create_app` options; they stop when the test ends."""
    started: list[ThreadServer] = []

    def start(**options: Any) -> ThreadServer:
        options.setdefault("api_key", "")
        running = ThreadServer(create_app(workflows_dir, **options)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        yield http


CLI_KEY = "cli-test-key"
CLI_AUTH = {"Authorization": f"Bearer {CLI_KEY}"}


@pytest.fixture(scope="module")
def cli_server(workflows_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """`pipeline-ex serve --workflows DIR --mock` with PIPELINE_SERVER_API_KEY set, default host and body limit."""
    log = tmp_path_factory.mktemp("cli") / "serve.log"
    running = CliServer(
        ["--workflows", str(workflows_dir), "--mock"], log, env={"PIPELINE_SERVER_API_KEY": CLI_KEY}
    ).start(CLI_AUTH)
    try:
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------------------------------------------------
# GET /workflows and GET /
# ---------------------------------------------------------------------------------------------------------


def test_get_workflows_lists_every_served_workflow_and_its_inputs(client: httpx.Client) -> None:
    response = client.get("/workflows")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    listing = {w["name"]: w for w in response.json()["workflows"]}
    assert set(listing) == set(WORKFLOWS)  # broken.yaml and notes.txt are not served
    needs_topic = listing["needs_topic"]
    assert needs_topic["description"] == "Needs a topic."
    assert needs_topic["inputs"]["topic"] == {
        "type": "string",
        "description": "the subject",
        "required": True,
        "default": None,
    }
    assert needs_topic["inputs"]["count"]["required"] is False and needs_topic["inputs"]["count"]["default"] == 3
    assert listing["two_steps"]["steps"] == ["draft", "final"]


def test_the_page_is_self_contained_html(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for marker in ('id="workflow"', 'id="inputs"', 'id="run"', 'id="output"', 'id="summary"', "text/event-stream"):
        assert marker in page
    assert "src=" not in page and "<link" not in page  # no outside resources


# ---------------------------------------------------------------------------------------------------------
# POST /workflows/{name}/run: SSE, plain text, JSON
# ---------------------------------------------------------------------------------------------------------


def test_run_as_sse_frames_with_ids_and_end(client: httpx.Client) -> None:
    with client.stream("POST", "/workflows/fast/run", json={"inputs": {"prompt": "x"}}, headers=SSE) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        run_id = response.headers["x-run-id"]
        frames = list(iter_frames(response.iter_text()))
    assert [f["event"] for f in frames] == [
        "step_started",
        *["delta"] * 4,
        "done",
        "step_finished",
        "run_finished",
        "end",
    ]
    assert check_ids(frames, run_id) == list(range(1, 9))  # lifecycle events share the run's seq
    events = events_of(frames)
    assert [e.content for e in events if isinstance(e, Delta)] == FAST_CHUNKS
    done = events[-1]
    assert isinstance(done, Done) and done.response.finish_reason == "stop" and done.response.provider == "mock"
    assert done.response.text == "Hello, world!" and done.response.usage is not None
    started, finished, run_finished = (json.loads(frames[i]["data"]) for i in (0, 6, 7))
    assert (started["step"], started["kind"], started["attempt"]) == ("answer", "llm", 1)
    assert (finished["step"], finished["status"], finished["error"]) == ("answer", "ok", None)
    assert run_finished["status"] == "ok" and run_finished["usage"] == done.response.usage.model_dump()
    assert json.loads(frames[-1]["data"]) == {"run_id": run_id}


async def test_run_as_sse_with_the_async_client_over_two_steps(server: ThreadServer) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=20) as client,
        client.stream("POST", "/workflows/two_steps/run", json={"inputs": {}}, headers=SSE) as response,
    ):
        run_id = response.headers["x-run-id"]
        frames = [frame async for frame in aiter_frames(response.aiter_text())]
    seqs = check_ids(frames, run_id)
    assert seqs == list(range(1, len(seqs) + 1))
    events = events_of(frames)
    assert [e.step for e in events if isinstance(e, Done)] == ["draft", "final"]
    assert text_of(e for e in events if e.step == "draft") == "Draft text."
    assert frames[-1]["event"] == "end"


def test_run_as_plain_text(client: httpx.Client) -> None:
    with client.stream("POST", "/workflows/fast/run", json={"inputs": {}}, headers=TEXT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert len(response.headers["x-run-id"]) == 16
        pieces = list(response.iter_text())
    assert "".join(pieces) == "Hello, world!"


@pytest.mark.parametrize("headers", [{}, JSON], ids=["default-accept", "application/json"])
def test_run_as_json(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post("/workflows/echo/run", json={"inputs": {"prompt": "Name three owls"}}, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    result = response.json()
    assert result["run_id"] == response.headers["x-run-id"]
    assert result["workflow"] == "echo"
    step = result["steps"]["answer"]
    assert step["text"] == "Mock reply to: Name three owls"
    assert step["finish_reason"] == "stop" and step["provider"] == "mock" and step["streamed"] is True
    assert step["usage"]["output_tokens"] == 6


def test_typed_inputs_are_converted_and_defaults_filled(client: httpx.Client) -> None:
    response = client.post("/workflows/needs_topic/run", json={"inputs": {"topic": "owls", "count": "5"}})
    assert response.json()["steps"]["answer"]["text"] == "Mock reply to: 5 facts about owls"
    response = client.post("/workflows/needs_topic/run", json={"inputs": {"topic": "bats"}})
    assert response.json()["steps"]["answer"]["text"] == "Mock reply to: 3 facts about bats"


def test_an_empty_body_runs_with_the_defaults(client: httpx.Client) -> None:
    response = client.post("/workflows/fast/run", headers=JSON_BODY)
    assert response.status_code == 200 and response.json()["steps"]["answer"]["text"] == "Hello, world!"


def test_query_parameters_cannot_choose_provider_model_or_handler(client: httpx.Client) -> None:
    params = {"provider": "openai", "model": "gpt-4o", "stream_handler": "console", "mock": "false"}
    response = client.post("/workflows/fast/run", params=params, json={"inputs": {}})
    step = response.json()["steps"]["answer"]
    assert (step["provider"], step["model"], step["text"]) == ("mock", "mock", "Hello, world!")


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [SSE, TEXT, JSON])
def test_unknown_workflow_is_404(client: httpx.Client, headers: dict[str, str]) -> None:
    payload = assert_clean_error(client.post("/workflows/nope/run", json={"inputs": {}}, headers=headers), 404)
    assert payload == {"error": {"type": "request", "message": "no workflow named 'nope'; GET /workflows lists them"}}


def test_unknown_run_and_bad_last_event_id(client: httpx.Client) -> None:
    assert_clean_error(client.get("/runs/0000000000000000/events", headers=SSE), 404)
    run_id = client.post("/workflows/fast/run", json={}).json()["run_id"]
    bad = client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": "someone-else:3"})
    assert "Last-Event-ID must be" in assert_clean_error(bad, 400)["error"]["message"]
    bad = client.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": f"{run_id}:x"})
    assert_clean_error(bad, 400)


@pytest.mark.parametrize(
    ("workflow", "body", "message"),
    [
        ("fast", {"inputs": {"promt": "x"}}, "unknown input 'promt' (did you mean 'prompt'?)"),
        ("fast", {"inputs": {}, "provider": "openai"}, "nothing else can be set per request"),
        ("fast", {"inputs": {}, "model": "gpt-4o"}, "nothing else can be set per request"),
        ("fast", {"inputs": {}, "stream_handler": "console"}, "nothing else can be set per request"),
        ("fast", {"inputs": {}, "options": {"api_base_url": "http://evil"}}, "nothing else can be set per request"),
        ("fast", {"prompt": "x"}, "nothing else can be set per request"),
        ("fast", [{"inputs": {}}], "nothing else can be set per request"),
        ("fast", "just a string", "nothing else can be set per request"),
        (
            "fast",
            {"inputs": {"prompt": {"nested": 1}}},
            "input 'prompt' must be a string, got {'nested': 1}, a mapping",
        ),
        ("fast", {"inputs": {"prompt": None}}, "leave an input out to take its default"),
        ("fast", {"inputs": {"prompt": ["a"]}}, "input 'prompt' must be a string, got ['a'], a list"),
        ("fast", {"inputs": ["prompt"]}, "must map input names to values"),
        ("needs_topic", {"inputs": {}}, "missing input 'topic'"),
        ("needs_topic", {"inputs": {"topic": "x", "count": "many"}}, "input 'count' must be an integer"),
    ],
)
@pytest.mark.parametrize("headers", [SSE, JSON], ids=["sse", "json"])
def test_bad_inputs_and_extra_body_keys_are_422(
    client: httpx.Client, workflow: str, body: Any, message: str, headers: dict[str, str]
) -> None:
    response = client.post(f"/workflows/{workflow}/run", json=body, headers=headers)
    payload = assert_clean_error(response, 422)
    assert message in payload["error"]["message"]
    assert "x-run-id" not in response.headers  # nothing was started


@pytest.mark.parametrize("inputs", [[], "", 0, False])
def test_falsy_non_mapping_inputs_are_422(client: httpx.Client, inputs: Any) -> None:
    assert_clean_error(client.post("/workflows/fast/run", json={"inputs": inputs}), 422)


def test_missing_input_message_does_not_reveal_server_paths(client: httpx.Client, workflows_dir: Path) -> None:
    payload = assert_clean_error(client.post("/workflows/needs_topic/run", json={"inputs": {}}), 422)
    assert str(workflows_dir) not in payload["error"]["message"]


def test_invalid_json_is_400(client: httpx.Client) -> None:
    response = client.post("/workflows/fast/run", content=b'{"inputs": {', headers={"Content-Type": "application/json"})
    message = assert_clean_error(response, 400)["error"]["message"]
    assert message == (
        "the request body is not valid JSON (Expecting property name enclosed in double quotes at character 12)"
    )
    response = client.post("/workflows/fast/run", content=b"\xff\xfe\x00", headers={**SSE, **JSON_BODY})
    assert_clean_error(response, 400)


def padded_body(size: int) -> bytes:
    """A valid `{"inputs": {"prompt": "xxx..."}}` body of exactly `size` bytes."""
    empty = len(json.dumps({"inputs": {"prompt": ""}}).encode())
    body = json.dumps({"inputs": {"prompt": "x" * (size - empty)}}).encode()
    assert len(body) == size
    return body


def test_a_body_of_exactly_max_body_is_accepted(client: httpx.Client) -> None:
    response = client.post("/workflows/fast/run", content=padded_body(MAX_BODY), headers=JSON_BODY)
    assert response.status_code == 200


def test_a_body_over_max_body_is_413_with_content_length(client: httpx.Client) -> None:
    body = padded_body(MAX_BODY + 1)
    response = client.post("/workflows/fast/run", content=body, headers={**SSE, **JSON_BODY})
    assert response.request.headers["content-length"] == str(MAX_BODY + 1)
    payload = assert_clean_error(response, 413)
    assert payload["error"]["message"] == f"request body larger than {MAX_BODY} bytes"
    huge = client.post("/v1/chat/completions", content=padded_body(MAX_BODY * 3), headers=JSON_BODY)
    assert_clean_error(huge, 413)


def test_a_body_over_max_body_is_413_when_chunked(client: httpx.Client) -> None:
    body = padded_body(MAX_BODY + 600)
    chunks = [body[i : i + 500] for i in range(0, len(body), 500)]
    response = client.post("/workflows/fast/run", content=iter(chunks), headers={**SSE, **JSON_BODY})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_clean_error(response, 413)
    small = padded_body(1000)
    ok = client.post("/workflows/fast/run", content=iter([small[:400], small[400:]]), headers=JSON_BODY)
    assert ok.status_code == 200 and ok.request.headers["transfer-encoding"] == "chunked"


def test_a_failing_run_is_502_json_without_traceback(client: httpx.Client) -> None:
    response = client.post("/workflows/fail/run", json={"inputs": {}})
    payload = assert_clean_error(response, 502)
    assert payload["run_id"] == response.headers["x-run-id"]
    assert payload["error"] == {
        "type": "provider",
        "message": "step 'answer': provider 'mock' failed: MockProviderError: "
        "mock provider failed after 2 chunks (error_after=2)",
        "step": "answer",
        "run_id": payload["run_id"],
        "reference": payload["error"]["reference"],  # the server log's line about the failure has it too
    }


def test_an_unexpected_failure_is_reported_without_details(client: httpx.Client) -> None:
    response = client.post("/workflows/python_fail/run", json={})
    payload = assert_clean_error(response, 502)
    reference = payload["error"]["reference"]
    assert payload["error"] == {
        "type": "internal",
        "message": f"the run failed; see the server log (reference {reference})",
        "reference": reference,
    }
    assert "TypeError" not in response.text and "Context" not in response.text
    with client.stream("POST", "/workflows/python_fail/run", json={}, headers=SSE) as stream:
        body = stream.read().decode()
    frames = parse_frames(body)
    assert [f["event"] for f in frames] == ["step_started", "step_finished", "run_finished", "error", "end"]
    streamed = json.loads(frames[3]["data"])
    assert streamed["type"] == "internal" and streamed["reference"] != reference  # each failure has its own
    # the lifecycle frames say the step and the run failed, and name the same reference, never the details
    assert "TypeError" not in body and "Context" not in body
    step_error, run_error = (json.loads(frames[i]["data"])["error"] for i in (1, 2))
    assert step_error == {
        "type": "step",
        "message": f"the step failed; see the server log (reference {streamed['reference']})",
        "exception": None,
    }
    assert run_error["message"] == f"the run failed; see the server log (reference {streamed['reference']})"


def test_a_failing_sse_run_sends_an_error_frame_then_end(client: httpx.Client) -> None:
    with client.stream("POST", "/workflows/fail/run", json={"inputs": {}}, headers=SSE) as response:
        assert response.status_code == 200  # the response had started when the step failed
        run_id = response.headers["x-run-id"]
        body = response.read().decode()
    for leak in LEAKS:
        assert leak not in body
    frames = parse_frames(body)
    assert [f["event"] for f in frames] == [
        "step_started",
        "delta",
        "delta",
        "done",
        "step_finished",
        "run_finished",
        "error",
        "end",
    ]
    check_ids(frames, run_id)
    done = events_of(frames)[-1]
    assert isinstance(done, Done) and done.response.finish_reason == "error" and done.error is not None
    for lifecycle in (json.loads(frames[i]["data"]) for i in (4, 5)):
        assert lifecycle["status"] == "failed" and lifecycle["error"] == done.error.model_dump()
    error = json.loads(frames[6]["data"])
    assert error["type"] == "provider" and error["step"] == "answer" and error["run_id"] == run_id
    assert "error_after=2" in error["message"]


def test_a_failing_plain_text_run_ends_with_an_error_line(client: httpx.Client) -> None:
    response = client.post("/workflows/fail/run", json={"inputs": {}}, headers=TEXT)
    assert response.status_code == 200
    assert response.text.startswith("one two \n[error: step 'answer': provider 'mock' failed: ")
    assert response.text.endswith("]\n") and "Traceback" not in response.text


# ---------------------------------------------------------------------------------------------------------
# Bearer token
# ---------------------------------------------------------------------------------------------------------


def test_the_api_key_is_required_on_every_api_endpoint(serve: Callable[..., ThreadServer]) -> None:
    running = serve(api_key="s3cret-token")
    good = {"Authorization": "Bearer s3cret-token"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/workflows", {}),
        ("POST", "/workflows/fast/run", {"json": {"inputs": {}}, "headers": SSE}),
        ("POST", "/workflows/fast/run", {"json": {"inputs": {}}}),
        ("GET", "/runs/0000000000000000/events", {"headers": SSE}),
        ("POST", "/v1/chat/completions", {"json": {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}}),
    ]
    wrong_headers = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret-token"},
        {"Authorization": "s3cret-token"},
        {"Authorization": "Bearer s3cret-token-and-more"},
    ]
    with httpx.Client(base_url=running.url, timeout=20) as http:
        for method, path, options in requests:
            for wrong in wrong_headers:
                headers = {**options.get("headers", {}), **wrong}
                response = http.request(method, path, **{**options, "headers": headers})
                payload = assert_clean_error(response, 401)
                assert payload["error"]["message"] == "missing or wrong bearer token"
        assert http.get("/workflows", headers=good).status_code == 200
        assert http.get("/workflows", headers={"Authorization": "bearer s3cret-token"}).status_code == 200
        response = http.post("/workflows/fast/run", json={"inputs": {}}, headers=good)
        assert response.status_code == 200 and response.json()["steps"]["answer"]["text"] == "Hello, world!"
        with http.stream("POST", "/workflows/fast/run", json={}, headers={**good, **SSE}) as stream:
            run_id = stream.headers["x-run-id"]
            assert parse_frames(stream.read().decode())[-1]["event"] == "end"
        resumed = http.get(f"/runs/{run_id}/events", headers={**good, **SSE})
        assert resumed.status_code == 200
        # an unknown workflow is only revealed to clients with the key
        assert http.post("/workflows/nope/run", json={}).status_code == 401
        assert http.get("/").status_code == 200  # the page itself is public; it asks for the token
        ai = openai.OpenAI(base_url=f"{running.url}/v1", api_key="s3cret-token", max_retries=0)
        reply = ai.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello, world!"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0).chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "hi"}]
            )


def test_the_api_key_comes_from_the_environment(
    serve: Callable[..., ThreadServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_SERVER_API_KEY", "from-env")
    running = serve(api_key=None)
    with httpx.Client(base_url=running.url, timeout=20) as http:
        assert_clean_error(http.get("/workflows"), 401)
        assert http.get("/workflows", headers={"Authorization": "Bearer from-env"}).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# POST /v1/chat/completions with the official openai client
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def ai(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=20)


def test_chat_completion_not_streamed(ai: openai.OpenAI) -> None:
    reply = ai.chat.completions.create(
        model="echo",
        messages=[
            {"role": "system", "content": "ignored"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "What is up?"},
        ],
        temperature=0.3,  # accepted, but a request cannot tune the workflow
    )
    assert reply.object == "chat.completion" and reply.model == "echo"
    assert reply.id.startswith("chatcmpl-") and len(reply.id) == len("chatcmpl-") + 16
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "Mock reply to: What is up?"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 6, 9)


def test_chat_completion_streamed_with_usage_in_the_last_chunk(ai: openai.OpenAI) -> None:
    stream = ai.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "fast" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello, world!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 2 and last.usage.total_tokens == last.usage.prompt_tokens + 2
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_usage_is_summed_over_the_steps(ai: openai.OpenAI) -> None:
    reply = ai.chat.completions.create(model="two_steps", messages=[{"role": "user", "content": "go"}])
    assert reply.choices[0].message.content == "Mock reply to: Polish: Draft text."  # the last LLM step's text
    assert reply.usage is not None
    # draft: prompt "go" (1 word) -> "Draft text." (2); final: "Polish: Draft text." (3) -> 6 words
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1 + 3, 2 + 6)


def test_chat_completion_streamed_without_usage(ai: openai.OpenAI) -> None:
    chunks = list(ai.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_chat_stream_of_a_failing_workflow_ends_with_an_error_chunk(ai: openai.OpenAI, client: httpx.Client) -> None:
    stream = ai.chat.completions.create(model="fail", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two "
    assert "mock provider failed after 2 chunks" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "provider"
    # the same stream, raw
    body = {"model": "fail", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    raw = client.post("/v1/chat/completions", json=body).text
    lines = [line for line in raw.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert set(error) == {"error"} and error["error"]["step"] == "answer"
    assert "Traceback" not in raw


def test_chat_completion_errors(ai: openai.OpenAI, client: httpx.Client) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        ai.chat.completions.create(model="fail", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):  # two inputs, none named prompt
        ai.chat.completions.create(model="needs_topic", messages=[{"role": "user", "content": "hi"}])
    for body, status in [
        ({"messages": [{"role": "user", "content": "hi"}]}, 400),
        ({"model": "fast", "messages": []}, 400),
        ({"model": "fast", "messages": [{"role": "system", "content": "hi"}]}, 400),
        ({"model": "fast", "messages": [{"role": "user", "content": 3}]}, 400),
        ({"model": "fast", "messages": "hi"}, 400),
    ]:
        assert_clean_error(client.post("/v1/chat/completions", json=body), status)


def test_chat_content_parts_are_joined(client: httpx.Client) -> None:
    body = {
        "model": "echo",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]}
        ],
    }
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"] == "Mock reply to: two parts"


async def test_chat_completion_with_the_async_openai_client(server: ThreadServer) -> None:
    ai = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=20)
    stream = await ai.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "async owls"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Mock reply to: async owls"
    await ai.close()


async def test_every_endpoint_with_the_async_httpx_client(server: ThreadServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        assert (await http.get("/")).status_code == 200
        assert "fast" in {w["name"] for w in (await http.get("/workflows")).json()["workflows"]}
        async with http.stream("POST", "/workflows/fast/run", json={"inputs": {}}, headers=SSE) as response:
            run_id = response.headers["x-run-id"]
            frames = [f async for f in aiter_frames(response.aiter_text())]
        assert text_of(events_of(frames)) == "Hello, world!"
        async with http.stream("POST", "/workflows/fast/run", json={}, headers=TEXT) as response:
            assert "".join([t async for t in response.aiter_text()]) == "Hello, world!"
        assert (await http.post("/workflows/fast/run", json={})).json()["workflow"] == "fast"
        async with http.stream(
            "GET", f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": f"{run_id}:3"}
        ) as response:
            resumed = [f async for f in aiter_frames(response.aiter_text())]
        assert [f["event"] for f in resumed] == ["delta", "delta", "done", "step_finished", "run_finished", "end"]
        assert check_ids(resumed, run_id) == [4, 5, 6, 7, 8]
        chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=chat) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            data = [f["data"] async for f in aiter_frames(response.aiter_text())]
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello, world!"
        reply = (await http.post("/v1/chat/completions", json={**chat, "stream": False})).json()
        assert reply["choices"][0]["message"]["content"] == "Hello, world!"


# ---------------------------------------------------------------------------------------------------------
# Resuming with Last-Event-ID
# ---------------------------------------------------------------------------------------------------------


def read_first(client: httpx.Client, workflow: str, count: int, *, resumable: bool) -> tuple[str, list[dict[str, str]]]:
    """Start an SSE run, read `count` frames, then drop the connection."""
    params = {"resumable": "true"} if resumable else {}
    with client.stream("POST", f"/workflows/{workflow}/run", params=params, json={"inputs": {}}, headers=SSE) as r:
        run_id = r.headers["x-run-id"]
        frames = iter_frames(r.iter_text())
        first = [next(frames) for _ in range(count)]
    return run_id, first


def test_resume_after_a_disconnect_gets_every_later_event_exactly_once(
    client: httpx.Client, registry: TimedRegistry
) -> None:
    read = 5
    run_id, first = read_first(client, "slow", read, resumable=True)
    assert check_ids(first, run_id) == list(range(1, read + 1))
    assert not registry.logs[run_id].finished  # the run goes on without its client
    headers = {**SSE, "Last-Event-ID": f"{run_id}:{read}"}
    with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        rest = list(iter_frames(response.iter_text()))
    total = len(SLOW_CHUNKS) + 4  # step_started, the deltas, done, step_finished, run_finished
    assert check_ids(rest, run_id) == list(range(read + 1, total + 1))  # no duplicate, no hole
    assert rest[-1] == {"event": "end", "id": f"{run_id}:end", "data": json.dumps({"run_id": run_id})}
    assert "gap" not in {f["event"] for f in rest}
    events = events_of(first) + events_of(rest)
    assert text_of(events) == "".join(SLOW_CHUNKS)
    done = events[-1]
    assert isinstance(done, Done) and done.response.finish_reason == "stop"
    # the finished run can be replayed from its log, from the start or from any point
    replay = parse_frames(client.get(f"/runs/{run_id}/events", headers=SSE).text)
    assert check_ids(replay, run_id) == list(range(1, total + 1))
    later = client.get(f"/runs/{run_id}/events", params={"last_event_id": f"{run_id}:{total - 3}"}, headers=SSE)
    assert [f["event"] for f in parse_frames(later.text)] == ["done", "step_finished", "run_finished", "end"]


def test_a_non_resumable_run_is_cancelled_and_its_log_says_so(client: httpx.Client, registry: TimedRegistry) -> None:
    run_id, _ = read_first(client, "slow", 3, resumable=False)
    registry.wait_finished([run_id])
    frames = parse_frames(client.get(f"/runs/{run_id}/events", headers=SSE).text)
    events = events_of(frames)
    done = events[-1]
    assert isinstance(done, Done) and done.response.finish_reason == "cancelled"
    assert len(events) - 1 < len(SLOW_CHUNKS) // 2
    assert [f["event"] for f in frames[-2:]] == ["error", "end"]


def test_a_gap_frame_reports_events_the_log_dropped(serve: Callable[..., ThreadServer]) -> None:
    small = TimedRegistry(log_capacity=5)
    running = serve(registry=small)
    with httpx.Client(base_url=running.url, timeout=20) as http:
        run_id, _ = read_first(http, "burst", 3, resumable=True)
        small.wait_finished([run_id])
        total = len(BURST_CHUNKS) + 4  # 24 events with the lifecycle ones; the log keeps 20..24
        resumed = parse_frames(http.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": f"{run_id}:3"}).text)
        assert resumed[0] == {"event": "gap", "data": json.dumps({"from_seq": 4, "to_seq": total - 5})}
        assert check_ids(resumed, run_id) == list(range(total - 4, total + 1))
        assert resumed[-1]["event"] == "end"
        from_start = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
        assert json.loads(from_start[0]["data"]) == {"from_seq": 1, "to_seq": total - 5}
        kept = parse_frames(http.get(f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": f"{run_id}:21"}).text)
        assert [f["event"] for f in kept] == ["done", "step_finished", "run_finished", "end"]
        assert check_ids(kept, run_id) == [22, 23, 24]


async def test_a_slow_live_follower_is_told_about_events_dropped_while_it_lagged() -> None:
    log = RunLog("r", capacity=3)
    for seq in (1, 2, 3):
        log.append(Delta(content="x", step="s", run_id="r", seq=seq))
    follower = log.follow(0)
    seen: list[Any] = [await follower.__anext__()]
    for seq in range(4, 9):  # the follower lags: 1..5 are evicted
        log.append(Delta(content="x", step="s", run_id="r", seq=seq))
    log.finish(None, None)
    seen += [item async for item in follower]
    got = {e.seq for e in seen if not isinstance(e, Gap)} | {
        seq for g in seen if isinstance(g, Gap) for seq in range(g.first_seq, g.last_seq + 1)
    }
    assert got == set(range(1, 9)), seen


def test_the_live_stream_of_a_run_never_loses_events_silently(serve: Callable[..., ThreadServer]) -> None:
    running = serve(registry=RunRegistry(log_capacity=5))
    total = len(BURST_CHUNKS) + 4
    with httpx.Client(base_url=running.url, timeout=20) as http:
        for _ in range(5):
            frames = parse_frames(http.post("/workflows/instant/run", json={}, headers=SSE).text)
            covered = {int(f["id"].rpartition(":")[2]) for f in frames if "id" in f and f["event"] != "end"}
            for gap in (json.loads(f["data"]) for f in frames if f["event"] == "gap"):
                covered |= set(range(gap["from_seq"], gap["to_seq"] + 1))
            assert covered == set(range(1, total + 1)), [f["event"] + ":" + f.get("id", "") for f in frames]


# ---------------------------------------------------------------------------------------------------------
# Disconnects cancel runs
# ---------------------------------------------------------------------------------------------------------


def test_a_disconnect_cancels_the_run_quickly(serve: Callable[..., ThreadServer]) -> None:
    timed = TimedRegistry()
    running = serve(registry=timed)
    finish_ms: list[float] = []
    cancelled_ms: list[float] = []
    with httpx.Client(base_url=running.url, timeout=20) as http:
        http.post("/workflows/fast/run", json={})  # warm up (imports)
        for _ in range(20):
            with http.stream("POST", "/workflows/slow/run", json={"inputs": {}}, headers=SSE) as response:
                run_id = response.headers["x-run-id"]
                frames = iter_frames(response.iter_text())
                assert [next(frames)["event"] for _ in range(4)] == ["step_started", *["delta"] * 3]
                closed_at = time.perf_counter()
                response.close()
            timed.wait_finished([run_id], timeout=5)
            finish_ms.append((timed.finished_at[run_id] - closed_at) * 1000)
            cancelled_ms.append((timed.cancelled_done_at[run_id] - closed_at) * 1000)
            events = timed.events(run_id)
            assert isinstance(events[-1], RunFinished) and events[-1].status == "cancelled"
            done = [e for e in events if isinstance(e, Done)]
            assert len(done) == 1 and done[0].response.finish_reason == "cancelled"
            deltas = sum(isinstance(e, Delta) for e in events)
            assert 3 <= deltas <= 8  # deltas produced before the cancel landed; 30 were scripted
    print(
        f"\n[disconnect -> Done(cancelled)] median {statistics.median(cancelled_ms):.2f} ms, "
        f"max {max(cancelled_ms):.2f} ms; run finished: median {statistics.median(finish_ms):.2f} ms, "
        f"max {max(finish_ms):.2f} ms (20 runs)"
    )
    assert statistics.median(cancelled_ms) < 100
    assert statistics.median(finish_ms) < 100


async def test_many_aborted_streams_leave_no_task_or_run_behind(serve: Callable[..., ThreadServer]) -> None:
    timed = TimedRegistry(max_runs=10_000)
    running = serve(registry=timed)
    baseline = await asyncio.to_thread(running.task_names)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    gate = asyncio.Semaphore(50)

    async def aborted(http: httpx.AsyncClient, number: int) -> str:
        async with gate, http.stream("POST", "/workflows/slow/run", json={"inputs": {}}, headers=SSE) as response:
            run_id = response.headers["x-run-id"]
            frames = aiter_frames(response.aiter_text())
            assert (await frames.__anext__())["event"] == "step_started"
            for _ in range(1 + number % 3):
                assert (await frames.__anext__())["event"] == "delta"
            await frames.aclose()
            return run_id  # leaving the block closes the unfinished response: the client is gone

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=running.url, timeout=30, limits=limits) as http:
        run_ids = await asyncio.gather(*(aborted(http, n) for n in range(200)))
    assert len(set(run_ids)) == 200
    await asyncio.to_thread(timed.wait_finished, run_ids, 15)
    elapsed = time.perf_counter() - started
    for run_id in run_ids:
        events = timed.events(run_id)
        assert isinstance(events[-1], RunFinished) and events[-1].status == "cancelled", run_id
        last = [e for e in events if isinstance(e, Done)][-1]
        assert last.response.finish_reason == "cancelled", run_id
    assert [r for r, log in timed.logs.items() if not log.finished] == []
    deadline = time.monotonic() + 5
    while True:
        tasks = await asyncio.to_thread(running.task_names)
        if len(tasks) <= len(baseline) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    print(f"\n[200 aborted streams] all cancelled in {elapsed:.2f} s; server tasks after: {len(tasks)} {tasks}")
    assert tasks == baseline, f"leaked tasks: {sorted(set(tasks) - set(baseline))}"


# ---------------------------------------------------------------------------------------------------------
# Keepalive
# ---------------------------------------------------------------------------------------------------------


def test_an_idle_stream_gets_keepalive_comments(serve: Callable[..., ThreadServer]) -> None:
    running = serve(keepalive=0.1)
    with (
        httpx.Client(base_url=running.url, timeout=20) as http,
        http.stream("POST", "/workflows/idle/run", json={}, headers=SSE) as response,
    ):
        body = response.read().decode()
    before_first = body.split("event: delta", 1)[0]
    assert before_first.count(": keepalive\n\n") >= 2, body
    between = body.split("event: delta", 2)[1]
    assert ": keepalive\n\n" in between
    assert [f["event"] for f in parse_frames(body)] == [
        "step_started",
        "delta",
        "delta",
        "done",
        "step_finished",
        "run_finished",
        "end",
    ]
    # with the default (2 s) keepalive, a stream this fast has none
    with httpx.Client(base_url=running.url, timeout=20) as http:
        assert ": keepalive" not in http.post("/workflows/fast/run", json={}, headers=SSE).text


# ---------------------------------------------------------------------------------------------------------
# The real command: pipeline-ex serve
# ---------------------------------------------------------------------------------------------------------


def test_serve_help_says_it_binds_to_loopback() -> None:
    result = subprocess.run([cli_executable(), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--host HOST" in help_text and "default 127.0.0.1, loopback only" in help_text
    assert "--port PORT" in help_text and "--workflows DIR" in help_text and "--mock" in help_text


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def non_loopback_addresses() -> list[str]:
    addresses = set()
    with contextlib.suppress(OSError):
        addresses.update(socket.gethostbyname_ex(socket.gethostname())[2])
    for target in ("192.0.2.1", "10.255.255.255", "172.16.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
                addresses.add(probe.getsockname()[0])
            except OSError:
                continue
    return sorted(a for a in addresses if not a.startswith("127.") and a != "0.0.0.0")


def test_the_cli_server_listens_on_loopback_only(cli_server: CliServer) -> None:
    assert cli_server.process is not None and cli_server.process.poll() is None
    assert listening_addresses(cli_server.port) == ["127.0.0.1"]
    for address in non_loopback_addresses():
        with socket.socket() as probe:
            probe.settimeout(2)
            assert probe.connect_ex((address, cli_server.port)) != 0, f"reachable on {address}"
    assert f"Uvicorn running on http://127.0.0.1:{cli_server.port}" in cli_server.log.read_text()


def test_the_cli_server_serves_sse_text_json_and_chat(cli_server: CliServer) -> None:
    with httpx.Client(base_url=cli_server.url, timeout=20, headers=CLI_AUTH) as http:
        names = {w["name"] for w in http.get("/workflows").json()["workflows"]}
        assert names == set(WORKFLOWS)
        with http.stream("POST", "/workflows/fast/run", json={"inputs": {}}, headers=SSE) as response:
            run_id = response.headers["x-run-id"]
            frames = list(iter_frames(response.iter_text()))
        assert check_ids(frames, run_id) == list(range(1, 9)) and frames[-1]["event"] == "end"
        assert text_of(events_of(frames)) == "Hello, world!"
        assert http.post("/workflows/fast/run", json={}, headers=TEXT).text == "Hello, world!"
        assert (
            http.post("/workflows/echo/run", json={"inputs": {"prompt": "cli"}}).json()["steps"]["answer"]["text"]
            == "Mock reply to: cli"
        )
        assert http.get("/").headers["content-type"].startswith("text/html")
    ai = openai.OpenAI(base_url=f"{cli_server.url}/v1", api_key=CLI_KEY, max_retries=0)
    chunks = list(
        ai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "q"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock reply to: q"
    assert chunks[-1].usage is not None


def test_the_cli_server_checks_the_key_from_the_environment(cli_server: CliServer) -> None:
    with httpx.Client(base_url=cli_server.url, timeout=20) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            assert_clean_error(http.get("/workflows", headers=headers), 401)
            assert_clean_error(http.post("/workflows/fast/run", json={}, headers={**headers, **SSE}), 401)
        assert http.get("/workflows", headers=CLI_AUTH).status_code == 200
        assert http.get("/").status_code == 200


def test_the_cli_server_limits_bodies_to_64_kib(cli_server: CliServer) -> None:
    limit = 64 * 1024
    with httpx.Client(base_url=cli_server.url, timeout=20, headers=CLI_AUTH) as http:
        assert http.post("/workflows/fast/run", content=padded_body(limit), headers=JSON_BODY).status_code == 200
        over = padded_body(limit + 1)
        payload = assert_clean_error(http.post("/workflows/fast/run", content=over, headers=JSON_BODY), 413)
        assert payload["error"]["message"] == f"request body larger than {limit} bytes"
        chunked = http.post(
            "/workflows/fast/run", content=iter([over[: limit // 2], over[limit // 2 :]]), headers=JSON_BODY
        )
        assert chunked.request.headers["transfer-encoding"] == "chunked"
        assert_clean_error(chunked, 413)


def test_the_cli_server_stops_cleanly_on_ctrl_c(workflows_dir: Path, tmp_path: Path) -> None:
    running = CliServer(["--workflows", str(workflows_dir)], tmp_path / "serve.log").start()
    with httpx.Client(base_url=running.url, timeout=20) as http:
        assert http.get("/workflows").status_code == 200  # no key configured: open
    assert running.stop() == 0
    log = running.log.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_serve_binds_to_loopback_by_default() -> None:
    import inspect

    from pipeline_ex.server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


# ---------------------------------------------------------------------------------------------------------
# Load: concurrent SSE streams on one server process, and its event-loop lag
# ---------------------------------------------------------------------------------------------------------

LAUNCHER = r'''
"""Serve a workflows folder like `pipeline-ex serve` (same loop and HTTP implementation) and record the
event loop's lag: a task sleeps 10 ms in a loop and keeps the overshoot. GET /__lag returns and clears it."""
import asyncio, json, sys, time

import uvicorn

from pipeline_ex.server import create_app

app = create_app(sys.argv[1], api_key="")
lags = []


async def watch_lag():
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append((time.perf_counter() - start - 0.01) * 1000)


async def wrapped(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/__lag":
        body = json.dumps({"lags_ms": lags, "loop": type(asyncio.get_running_loop()).__module__}).encode()
        lags.clear()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await app(scope, receive, send)


config = uvicorn.Config(wrapped, host="127.0.0.1", port=int(sys.argv[2]), lifespan="on", log_level="warning",
                        access_log=False, backlog=4096, timeout_graceful_shutdown=5)
server = uvicorn.Server(config)


async def main():
    watcher = asyncio.ensure_future(watch_lag())
    await server.serve()
    watcher.cancel()


with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
    runner.run(main())
'''


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_concurrent_sse_streams_and_event_loop_lag(workflows_dir: Path, tmp_path: Path) -> None:
    """Ramp 100 / 500 / 1000 concurrent SSE streams (20 chunks, 20 ms apart) on one server process."""
    port = free_port()
    launcher = tmp_path / "launch_server.py"
    launcher.write_text(LAUNCHER)
    with open(tmp_path / "server.log", "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(launcher), str(workflows_dir), str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    budget = time.monotonic() + 55  # this part of the suite stays under a minute
    try:
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                httpx.post(f"{url}/workflows/load/run", json={}, timeout=10).raise_for_status()  # warm up
                break
            except httpx.TransportError:
                time.sleep(0.05)
        ideal = len(LOAD_CHUNKS) * 0.020

        async def ramp(count: int) -> dict[str, Any]:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                await http.get("/__lag")  # clear

                async def one() -> tuple[int, float]:
                    started = time.perf_counter()
                    async with http.stream("POST", "/workflows/load/run", json={}, headers=SSE) as response:
                        assert response.status_code == 200
                        frames = [f async for f in aiter_frames(response.aiter_text())]
                    assert [f["event"] for f in frames[-4:]] == ["done", "step_finished", "run_finished", "end"]
                    done = json.loads(frames[-4]["data"])
                    assert done["response"]["finish_reason"] == "stop"
                    return sum(f["event"] == "delta" for f in frames), time.perf_counter() - started

                cpu_before = cpu_seconds(process.pid)
                started = time.perf_counter()
                results = await asyncio.wait_for(
                    asyncio.gather(*(one() for _ in range(count))), timeout=max(5.0, budget - time.monotonic())
                )
                wall = time.perf_counter() - started
                cpu = cpu_seconds(process.pid) - cpu_before
                report = (await http.get("/__lag")).json()
            durations = [d for _, d in results]
            return {
                "count": count,
                "complete": sum(n == len(LOAD_CHUNKS) for n, _ in results),
                "wall": wall,
                "stream_p50": statistics.median(durations),
                "stream_max": max(durations),
                "cpu": cpu,
                "lags": report["lags_ms"],
                "loop": report["loop"],
            }

        print(f"\n[load] one `pipeline-ex serve`-style process; each stream {len(LOAD_CHUNKS)} chunks x 20 ms")
        for count in (100, 500, 1000):
            result = asyncio.run(ramp(count))
            lags = result["lags"]
            print(
                f"[load] {count:5d} concurrent streams: {result['complete']}/{count} complete in "
                f"{result['wall']:.2f} s (ideal {ideal:.2f} s; per stream p50 {result['stream_p50']:.2f} s, "
                f"max {result['stream_max']:.2f} s), {count * (len(LOAD_CHUNKS) + 5) / result['wall']:.0f} frames/s, "
                f"server CPU {result['cpu']:.2f} s; loop lag ({result['loop']}, {len(lags)} samples) "
                f"p50 {percentile(lags, 0.5):.1f} ms, p99 {percentile(lags, 0.99):.1f} ms, max {max(lags):.1f} ms, "
                f"mean {statistics.fmean(lags):.1f} ms, {sum(lags) / 1000:.2f} s of lag in all"
            )
            assert result["complete"] == count
            assert lags, "the lag watcher took no sample"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_follower_that_lags_while_told_about_a_gap_is_told_about_the_next_one_too() -> None:
    log = RunLog("r", capacity=3)
    for seq in (1, 2, 3):
        log.append(Delta(content="x", step="s", run_id="r", seq=seq))
    follower = log.follow(0)
    seen: list[Any] = [await follower.__anext__()]
    for seq in (4, 5):  # 1..2 are evicted: the next item is a gap
        log.append(Delta(content="x", step="s", run_id="r", seq=seq))
    seen.append(await follower.__anext__())
    assert isinstance(seen[-1], Gap)
    for seq in range(6, 10):  # the follower is still holding the gap: 3..6 are evicted as well
        log.append(Delta(content="x", step="s", run_id="r", seq=seq))
    log.finish(None, None)
    seen += [item async for item in follower]
    got = [e.seq for e in seen if not isinstance(e, Gap)]
    got += [seq for g in seen if isinstance(g, Gap) for seq in range(g.first_seq, g.last_seq + 1)]
    assert sorted(got) == list(range(1, 10)), seen
