"""`pipeline-ex serve` against requests an attacker's web page (or DNS rebinding) can make, over real HTTP.

A page the user visits can send "simple" cross-origin requests (`text/plain` or form bodies, no
preflight) to a server on localhost, and a rebinding domain can make the browser talk to 127.0.0.1 under a
foreign `Host`. Every such request must be refused before a run starts; the registry says whether one did.
Also: malformed input never gets a 5xx, and error bodies never carry the server's absolute paths.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_kit import JSON_TYPE, SSE, TEXT, CliServer, ThreadServer, TimedRegistry, assert_error, cli_executable

RUN_BODY = json.dumps({"inputs": {"prompt": "hi"}})
CHAT_BODY = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
ENDPOINTS = [("/workflows/fast/run", RUN_BODY), ("/v1/chat/completions", CHAT_BODY)]


@pytest.fixture
def guarded(start_server: Callable[..., ThreadServer]) -> tuple[ThreadServer, TimedRegistry]:
    registry = TimedRegistry()
    return start_server(registry=registry), registry


# ---------------------------------------------------------------------------------------------------------
# Content-Type: only application/json starts a run
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=["run", "chat"])
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; b=x"],
)
def test_a_run_needs_a_json_content_type(
    guarded: tuple[ThreadServer, TimedRegistry], path: str, body: str, content_type: str | None
) -> None:
    server, registry = guarded
    headers = {} if content_type is None else {"Content-Type": content_type}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post(path, content=body.encode(), headers=headers)
        assert "content-type" not in response.request.headers or content_type is not None
    payload = assert_error(response, 415)
    assert "application/json" in payload["error"]["message"]
    assert registry.logs == {}


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json"])
def test_json_content_types_run(guarded: tuple[ThreadServer, TimedRegistry], content_type: str) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        run = http.post("/workflows/fast/run", content=RUN_BODY.encode(), headers={"Content-Type": content_type})
        chat = http.post("/v1/chat/completions", content=CHAT_BODY.encode(), headers={"Content-Type": content_type})
    assert run.status_code == 200 and run.json()["steps"]["answer"]["text"] == "Hello, world!"
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "Hello, world!"


# ---------------------------------------------------------------------------------------------------------
# Origin and Sec-Fetch-Site: only the server's own origin
# ---------------------------------------------------------------------------------------------------------


def foreign_origins(port: int) -> list[str]:
    return ["http://evil.example", "null", f"http://127.0.0.1:{port + 1}", f"http://localhost.evil.example:{port}"]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=["run", "chat"])
def test_a_foreign_origin_is_refused(guarded: tuple[ThreadServer, TimedRegistry], path: str, body: str) -> None:
    server, registry = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for origin in foreign_origins(server.port):
            for accept in (SSE, TEXT, {}):
                response = http.post(path, content=body, headers={**JSON_TYPE, **accept, "Origin": origin})
                assert "origin" in assert_error(response, 403)["error"]["message"].lower(), origin
            for get in ("/workflows", "/v1/models", "/runs/0123/events"):
                assert_error(http.get(get, headers={"Origin": origin}), 403)
    assert registry.logs == {}


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_cross_site_fetch_is_refused_even_without_origin(
    guarded: tuple[ThreadServer, TimedRegistry], site: str
) -> None:
    server, registry = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post("/workflows/fast/run", content=RUN_BODY, headers={**JSON_TYPE, "Sec-Fetch-Site": site})
        assert_error(response, 403)
        assert_error(http.get("/workflows", headers={"Sec-Fetch-Site": site}), 403)
    assert registry.logs == {}


def test_the_server_s_own_origin_and_same_origin_fetches_are_accepted(
    guarded: tuple[ThreadServer, TimedRegistry],
) -> None:
    server, registry = guarded
    own = [server.url, f"http://localhost:{server.port}"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for origin in own:
            host = origin.removeprefix("http://")
            headers = {**JSON_TYPE, "Origin": origin, "Host": host, "Sec-Fetch-Site": "same-origin"}
            assert http.post("/workflows/fast/run", content=RUN_BODY, headers=headers).status_code == 200
        assert http.get("/workflows", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert len(registry.logs) == 2


def test_the_page_cannot_be_framed(guarded: tuple[ThreadServer, TimedRegistry]) -> None:
    server, _ = guarded
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# ---------------------------------------------------------------------------------------------------------
# Host: loopback names only, unless widened (DNS rebinding)
# ---------------------------------------------------------------------------------------------------------


REBINDING_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example:{port}"]


@pytest.mark.parametrize("host", REBINDING_HOSTS)
def test_a_foreign_host_is_refused(guarded: tuple[ThreadServer, TimedRegistry], host: str) -> None:
    server, registry = guarded
    host = host.format(port=server.port)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for method, path, body in [("GET", "/", None), ("GET", "/workflows", None), *(("POST", *e) for e in ENDPOINTS)]:
            response = http.request(method, path, content=body, headers={**JSON_TYPE, "Host": host})
            payload = assert_error(response, 400)
            assert "--allowed-hosts" in payload["error"]["message"], payload
    assert registry.logs == {}


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST:9"])
def test_loopback_hosts_are_accepted(guarded: tuple[ThreadServer, TimedRegistry], host: str) -> None:
    server, _ = guarded
    response = httpx.get(server.url + "/workflows", headers={"Host": host.format(port=server.port)}, timeout=10)
    assert response.status_code == 200


def test_allowed_hosts_widen_the_host_check(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server(allowed_hosts=["api.example.internal", "*.lan.example"])
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for host in ("api.example.internal", "box.lan.example:8000", "localhost"):
            assert http.get("/workflows", headers={"Host": host}).status_code == 200, host
        assert_error(http.get("/workflows", headers={"Host": "evil.example"}), 400)


def test_the_allowed_hosts_flag_and_environment_variable(kit_workflows: Path, tmp_path: Path) -> None:
    flag = CliServer(
        ["--workflows", str(kit_workflows), "--mock", "--allowed-hosts", "a.example,b.example"], tmp_path / "a"
    )
    env = CliServer(
        ["--workflows", str(kit_workflows), "--mock"],
        tmp_path / "b",
        env={"PIPELINE_SERVER_ALLOWED_HOSTS": "c.example"},
    )
    for running, good in ((flag, ["a.example", "b.example"]), (env, ["c.example"])):
        running.start()
        try:
            for host in good:
                assert httpx.get(running.url + "/workflows", headers={"Host": host}, timeout=10).status_code == 200
            assert_error(httpx.get(running.url + "/workflows", headers={"Host": "evil.example"}, timeout=10), 400)
        finally:
            running.stop()


def bind_attempt(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pipeline-ex serve` on an address of TEST-NET-1 that this machine does not have: the bind fails."""
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")} | (env or {})
    command = [cli_executable(), "serve", "--workflows", "workflows", "--mock", "--port", "8999", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)


def test_serve_warns_when_bound_beyond_loopback_without_an_api_key() -> None:
    result = bind_attempt(["--host", "192.0.2.1"])
    assert result.returncode != 0  # 192.0.2.1 is not an address of this machine
    assert "warning:" in result.stderr and "192.0.2.1" in result.stderr
    assert "PIPELINE_SERVER_API_KEY" in result.stderr, result.stderr
    with_key = bind_attempt(["--host", "192.0.2.1"], env={"PIPELINE_SERVER_API_KEY": "k"})
    assert "PIPELINE_SERVER_API_KEY" not in with_key.stderr, with_key.stderr


# ---------------------------------------------------------------------------------------------------------
# Malformed input: 4xx with a clear message, never 5xx
# ---------------------------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("path", "body"), ENDPOINTS, ids=["run", "chat"])
def test_deeply_nested_json_is_400(start_server: Callable[..., ThreadServer], path: str, body: str) -> None:
    server = start_server(max_body=1 << 20)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for payload in (
            nested(100_000),
            f'{{"inputs": {{"prompt": {nested(5000)}}}}}',
            body[:-1] + f', "x": {nested(5000)}}}',
        ):
            payload_error = assert_error(http.post(path, content=payload, headers=JSON_TYPE), 400)
            assert "deep" in payload_error["error"]["message"], payload_error


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs": {"prompt": NaN}}',
        '{"inputs": {"prompt": Infinity}}',
        '{"inputs": {"prompt": 1e999}}',
        '{"inputs": {"prompt": "\\ud800"}}',
        '{"inputs": {"prompt": "' + "9" * 5000 + '"}}',
        '{"inputs": {"prompt": ' + "9" * 5000 + "}}",
    ],
    ids=["nan", "infinity", "overflow", "lone-surrogate", "long-string", "huge-int"],
)
def test_odd_json_values_never_500(guarded: tuple[ThreadServer, TimedRegistry], body: str) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for accept in ({}, SSE, TEXT):
            response = http.post("/workflows/echo/run", content=body, headers={**JSON_TYPE, **accept})
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                assert_error(response, response.status_code)
            else:
                assert "error" not in response.text.split("\n")[0]


@pytest.mark.parametrize(
    "seq", ["\u00b2", "\u0661\u0662", "9" * 5000, "-1", "1.5", " 3", "", "\uff13"], ids=lambda s: repr(s[:8])
)
def test_a_malformed_last_event_id_is_400(guarded: tuple[ThreadServer, TimedRegistry], seq: str) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        run_id = http.post("/workflows/fast/run", json={}).headers["x-run-id"]
        last = f"{run_id}:{seq}"
        as_query = http.get(f"/runs/{run_id}/events", params={"last_event_id": last})
        assert "Last-Event-ID" in assert_error(as_query, 400)["error"]["message"]
        if last.isascii():
            assert_error(http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": last}), 400)
        else:  # header values travel as bytes: send the UTF-8 the way a browser would
            assert_error(http.get(f"/runs/{run_id}/events", headers=[(b"Last-Event-ID", last.encode())]), 400)


def test_unknown_routes_and_methods_get_the_json_error_shape(guarded: tuple[ThreadServer, TimedRegistry]) -> None:
    server, _ = guarded
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert "/nowhere" in assert_error(http.get("/nowhere"), 404)["error"]["message"]
        assert_error(http.get("/workflows/fast/run"), 405)
        assert_error(http.delete("/v1/chat/completions"), 405)


BAD_CHATS: list[tuple[str, dict[str, Any]]] = [
    ("content", {"messages": [{"role": "user", "content": [{"text": 5}]}]}),
    ("content", {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}),
    ("content", {"messages": [{"role": "user", "content": 5}]}),
    ("content", {"messages": [{"role": "user", "content": [1, 2]}]}),
    ("stream_options", {"stream": True, "stream_options": "yes"}),
    ("stream_options", {"stream": True, "stream_options": {"include_usage": "yes"}}),
    ("stream", {"stream": "false"}),
    ("stream", {"stream": 1}),
    ("messages", {"messages": ["hi"]}),
    ("messages", {"messages": [["user", "hi"]]}),
    ("messages", {"messages": {"role": "user", "content": "hi"}}),
    ("role", {"messages": [{"role": 5, "content": "hi"}]}),
    ("model", {"model": ["fast"]}),
]


@pytest.mark.parametrize(("field", "change"), BAD_CHATS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CHATS)])
def test_malformed_chat_completion_fields_are_400(
    guarded: tuple[ThreadServer, TimedRegistry], field: str, change: dict[str, Any]
) -> None:
    server, registry = guarded
    body = {**json.loads(CHAT_BODY), **change}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
    payload = assert_error(response, 400)
    assert f"'{field}'" in payload["error"]["message"], payload
    assert registry.logs == {}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
CHAT_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]) | JSON_VALUES},
        optional={"content": JSON_VALUES | st.lists(st.dictionaries(st.sampled_from(["type", "text"]), JSON_VALUES))},
    ),
    max_size=3,
)
KEYS = st.sampled_from(["inputs", "prompt", "model", "messages", "role", "content", "stream", "stream_options"])
RUN_BODIES = (
    JSON_VALUES
    | st.dictionaries(KEYS, JSON_VALUES, max_size=5)
    | st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from(["prompt", "x"]), JSON_VALUES, max_size=2)})
)
CHAT_BODIES = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["fast", "echo", "two_steps"]),
        "messages": st.just([{"role": "user", "content": "hi"}]) | CHAT_MESSAGES,
    },
    optional={
        "stream": st.booleans() | JSON_VALUES,
        "stream_options": JSON_VALUES | st.fixed_dictionaries({"include_usage": JSON_VALUES}),
    },
)
REQUESTS = st.tuples(st.sampled_from(["/workflows/echo/run", "/workflows/two_steps/run"]), RUN_BODIES) | st.tuples(
    st.just("/v1/chat/completions"), CHAT_BODIES
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip)


@pytest.fixture(scope="module")
def fuzz_server(kit_workflows: Path) -> Any:
    from pipeline_ex.server import create_app

    running = ThreadServer(create_app(kit_workflows, api_key="", mock=True)).start()
    client = httpx.Client(base_url=running.url, timeout=20)
    yield client
    client.close()
    running.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=REQUESTS,
    accept=st.sampled_from(["", "text/event-stream", "text/plain", "application/json", "*/*"]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", ""] + 4 * ["application/json"]
    ),
    last_event_id=HEADER_TEXT,
)
def test_junk_requests_never_get_a_5xx(
    fuzz_server: httpx.Client, request: tuple[str, Any], accept: str, content_type: str, last_event_id: str
) -> None:
    path, body = request
    headers = {"Accept": accept, "Content-Type": content_type}
    response = fuzz_server.post(path, content=json.dumps(body), headers={k: v for k, v in headers.items() if v})
    assert response.status_code < 500, (response.status_code, response.text)
    events = fuzz_server.get("/runs/nope/events", headers={"Last-Event-ID": last_event_id})
    assert events.status_code < 500, events.text
    run_id = response.headers.get("x-run-id")
    if run_id:
        followed = fuzz_server.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": f"{run_id}:{last_event_id}"})
        assert followed.status_code < 500, followed.text


# ---------------------------------------------------------------------------------------------------------
# Error bodies never carry the server's absolute paths
# ---------------------------------------------------------------------------------------------------------


LEAKY_MODULE = """
from pipeline_ex.errors import PipelineError


def fail(ctx, path):
    raise PipelineError(f"could not read {path}")
"""


@pytest.fixture
def leaky_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = (tmp_path / "served" / "workflows").resolve()
    folder.mkdir(parents=True)
    (tmp_path / "leaky_steps.py").write_text(LEAKY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    documents = {
        "template": {"steps": [{"id": "answer", "provider": "mock", "prompt": "{{ inputs.prompt.a.b.c() }}"}]},
        "outside": {
            "steps": [
                {"id": "answer", "provider": "mock", "prompt": "{{ inputs.prompt }}", "output_to_file": "../../x.md"}
            ]
        },
        "python": {
            "steps": [
                {
                    "id": "read",
                    "type": "python",
                    "callable": "leaky_steps.fail",
                    "args": {"path": str(folder / "data.txt")},
                }
            ]
        },
        "typed": {"inputs": {"count": {"type": "integer"}}, "steps": [{"id": "a", "provider": "mock", "prompt": "x"}]},
    }
    for name, body in documents.items():
        inputs = body.pop("inputs", {"prompt": {"default": "hi"}})
        (folder / f"{name}.yaml").write_text(json.dumps({"workflow": {"name": name, "inputs": inputs, **body}}))
    return folder


@pytest.mark.parametrize("name", ["template", "python", "typed"])
def test_error_bodies_name_no_absolute_paths(
    start_server: Callable[..., ThreadServer],
    leaky_folder: Path,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIPELINE_OUTPUT_DIR", str(leaky_folder.parent / "outputs"))
    server = start_server(folder=leaky_folder)
    inputs = {"count": "many"} if name == "typed" else {}
    bodies = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for accept in ({}, SSE, TEXT):
            response = http.post(f"/workflows/{name}/run", json={"inputs": inputs}, headers=accept)
            assert response.status_code in (200, 422, 502), response.text
            bodies.append(response.text)
        chat = http.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "x"}]})
        bodies.append(chat.text)
    text = "\n".join(bodies)
    assert "error" in text
    for secret_path in {str(leaky_folder), str(tmp_path), str(tmp_path.resolve()), str(Path.cwd())}:
        assert secret_path not in text, (secret_path, text)
    if name == "template":
        assert "template.yaml:" in text  # still names the file, relative to the workflows folder
    if name == "python":
        assert "data.txt" in text


def test_the_cli_serves_no_absolute_path_in_a_template_error(leaky_folder: Path, tmp_path: Path) -> None:
    running = CliServer(["--workflows", str(leaky_folder), "--mock"], tmp_path / "serve.log").start()
    try:
        response = httpx.post(running.url + "/workflows/template/run", json={}, timeout=10)
    finally:
        running.stop()
    assert response.status_code == 502
    assert str(leaky_folder) not in response.text and "template.yaml:" in response.text
