"""Admission limits of `pipeline-ex serve`, over real HTTP and raw sockets: concurrent runs, the registry's
bound, run logs bounded in bytes, slow clients (slowloris headers, stalled bodies), and primary responses
that never lose text while followers of a bounded log are told about gaps.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_kit import (
    BURST_CHUNKS,
    JSON_TYPE,
    SSE,
    TEXT,
    CliServer,
    ThreadServer,
    TimedRegistry,
    assert_error,
    check_ids,
    iter_frames,
)

from pipeline_ex.sse import parse_frames

pytestmark = pytest.mark.streaming


# ---------------------------------------------------------------------------------------------------------
# Concurrent runs and the registry's bound
# ---------------------------------------------------------------------------------------------------------


def open_streams(http: httpx.Client, count: int) -> list[tuple[httpx.Response, str]]:
    """Start `count` resumable runs of the slow workflow and read one frame of each (so each has started)."""
    opened = []
    for _ in range(count):
        response = http.send(
            http.build_request("POST", "/workflows/slow/run?resumable=true", json={}, headers=SSE), stream=True
        )
        assert response.status_code == 200, response.read()
        next(iter_frames(response.iter_text()))
        opened.append((response, response.headers["x-run-id"]))
    return opened


def test_runs_beyond_max_concurrent_runs_are_429_with_retry_after(start_server: Callable[..., ThreadServer]) -> None:
    registry = TimedRegistry()
    server = start_server(registry=registry, max_concurrent_runs=3)
    with httpx.Client(base_url=server.url, timeout=20) as http:
        opened = open_streams(http, 3)
        for method, path, body in [
            ("POST", "/workflows/fast/run", {}),
            ("POST", "/v1/chat/completions", {"model": "fast", "messages": [{"role": "user", "content": "x"}]}),
        ]:
            for accept in ({}, SSE):
                refused = http.request(method, path, json=body, headers=accept)
                payload = assert_error(refused, 429)
                assert int(refused.headers["retry-after"]) >= 1
                assert (
                    "3 runs" in payload["error"]["message"] and "--max-concurrent-runs" in payload["error"]["message"]
                )
        assert len(registry.logs) == 3
        for response, _ in opened:  # resumable runs go on without their clients
            response.close()
        registry.wait_finished([run_id for _, run_id in opened])
        assert http.post("/workflows/fast/run", json={}).status_code == 200  # room again


def test_in_flight_runs_count_against_max_runs(start_server: Callable[..., ThreadServer]) -> None:
    registry = TimedRegistry(max_runs=2)
    server = start_server(registry=registry)  # max_concurrent_runs follows: min(1024, max_runs)
    with httpx.Client(base_url=server.url, timeout=20) as http:
        opened = open_streams(http, 2)
        assert_error(http.post("/workflows/fast/run", json={}), 429)
        assert len(registry.logs) == 2 and len(registry) == 2
        for response, _ in opened:
            response.close()
        registry.wait_finished([run_id for _, run_id in opened])
        for _ in range(3):  # finished runs are forgotten, oldest first, to make room
            assert http.post("/workflows/fast/run", json={}).status_code == 200
        assert len(registry) == 2


async def test_a_registry_full_of_runs_still_going_refuses_more(kit_workflows: Path) -> None:
    from pipeline_ex.server.runs import RegistryFull, RunRegistry
    from pipeline_ex.workflow.loader import load_workflow

    slow = load_workflow(kit_workflows / "slow.yaml", mock=True)
    registry = RunRegistry(max_runs=2)
    first = [registry.start(slow, {"prompt": "x"}, mock=True, run_id=f"r{n}") for n in range(2)]
    with pytest.raises(RegistryFull, match="2 runs that are all still going"):
        registry.start(slow, {"prompt": "x"}, mock=True, run_id="r2")
    assert len(registry) == 2 and registry.active == 2
    first[0].cancel()
    await first[0].task  # type: ignore[misc]
    third = registry.start(slow, {"prompt": "x"}, mock=True, run_id="r3")
    assert registry.get("r0") is None and registry.get("r3") is third and len(registry) == 2
    await registry.cancel_all()
    assert registry.active == 0


async def test_a_full_registry_forgets_the_oldest_finished_run_past_those_still_going(kit_workflows: Path) -> None:
    from pipeline_ex.server.runs import RunRegistry
    from pipeline_ex.workflow.loader import load_workflow

    slow = load_workflow(kit_workflows / "slow.yaml", mock=True)
    registry = RunRegistry(max_runs=3)
    logs = [registry.start(slow, {"prompt": "x"}, mock=True, run_id=f"r{n}") for n in range(3)]
    for log in logs[1:]:
        log.cancel()
        await log.task  # type: ignore[misc]
    registry.start(slow, {"prompt": "x"}, mock=True, run_id="r3")
    assert registry.get("r0") is logs[0] and registry.get("r1") is None and registry.get("r2") is logs[2]
    assert len(registry) == 3
    await registry.cancel_all()


def test_max_concurrent_runs_cannot_exceed_max_runs(kit_workflows: Path) -> None:
    from pipeline_ex.server import create_app
    from pipeline_ex.server.runs import RunRegistry

    with pytest.raises(ValueError, match="max_concurrent_runs"):
        create_app(kit_workflows, registry=RunRegistry(max_runs=4), max_concurrent_runs=5)


def test_the_registry_bounds_are_create_app_keywords(kit_workflows: Path) -> None:
    from pipeline_ex.server import create_app
    from pipeline_ex.server.runs import RunRegistry

    registry = create_app(kit_workflows, max_runs=7, log_events=5, log_bytes=999).state.pipeline.registry
    assert (registry.max_runs, registry.log_capacity, registry.log_bytes) == (7, 5, 999)
    with pytest.raises(ValueError, match="max_runs"):
        create_app(kit_workflows, registry=RunRegistry(), max_runs=3)


def test_run_logs_are_bounded_in_bytes(start_server: Callable[..., ThreadServer]) -> None:
    registry = TimedRegistry(log_bytes=2000)
    server = start_server(registry=registry)
    with httpx.Client(base_url=server.url, timeout=20) as http:
        run_id = http.post("/workflows/burst/run", json={}).headers["x-run-id"]
        registry.wait_finished([run_id])
        log = registry.logs[run_id]
        assert log.size_bytes <= 2000
        resumed = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
        assert resumed[0]["event"] == "gap"
        kept = check_ids(resumed, run_id)
        total = len(BURST_CHUNKS) + 4  # with step_started, step_finished and run_finished
        assert kept[-1] == total and len(kept) < total


def test_the_limits_are_command_line_options(kit_workflows: Path, tmp_path: Path) -> None:
    args = ["--workflows", str(kit_workflows), "--mock", "--max-concurrent-runs", "1", "--max-runs", "5"]
    running = CliServer([*args, "--log-events", "100", "--log-bytes", "100000", "--read-timeout", "2"], tmp_path / "l")
    running.start()
    try:
        with httpx.Client(base_url=running.url, timeout=20) as http:
            opened = open_streams(http, 1)
            assert_error(http.post("/workflows/fast/run", json={}), 429)
            opened[0][0].close()
    finally:
        running.stop()


# ---------------------------------------------------------------------------------------------------------
# Slow clients: headers byte by byte, a body that stalls
# ---------------------------------------------------------------------------------------------------------


def raw_connection(server: ThreadServer) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def read_until_closed(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


@pytest.fixture(params=["h11", "httptools"])
def slow_server(
    request: pytest.FixtureRequest, start_server: Callable[..., ThreadServer]
) -> tuple[ThreadServer, TimedRegistry]:
    from pipeline_ex.server import uvicorn_protocol

    if request.param == "httptools":
        pytest.importorskip("httptools")
    registry = TimedRegistry()
    protocol = uvicorn_protocol(request.param, read_timeout=0.6)
    return start_server(registry=registry, read_timeout=0.6, uvicorn_config={"http": protocol}), registry


def test_headers_sent_byte_by_byte_are_cut_off(slow_server: tuple[ThreadServer, TimedRegistry]) -> None:
    server, registry = slow_server
    request = b"POST /workflows/fast/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: 2\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n{}"
    conn = raw_connection(server)
    sent = 0
    closed_after = None
    with conn:
        started = time.monotonic()
        for byte in request:  # one byte every 20 ms: the whole request would take about 5 s
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed_after = sent
                break
            sent += 1
            time.sleep(0.02)
            if time.monotonic() - started > 1.5:  # well past the 0.6 s read timeout: the server must have spoken
                break
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"type":"timeout"' in answer.replace(b" ", b"")
    assert closed_after is None or closed_after < len(request)
    assert sent < len(request)
    assert registry.logs == {}


def test_a_body_that_stalls_is_cut_off(slow_server: tuple[ThreadServer, TimedRegistry]) -> None:
    server, registry = slow_server
    body = json.dumps({"inputs": {"prompt": "x" * 100}}).encode()
    head = "POST /workflows/fast/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with raw_connection(server) as conn:
        conn.sendall(head.encode() + body[:20])  # then nothing more
        answer = read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request body" in answer
    assert registry.logs == {}


def test_an_idle_keep_alive_connection_is_cut_off_between_requests(
    slow_server: tuple[ThreadServer, TimedRegistry],
) -> None:
    server, _ = slow_server
    with raw_connection(server) as conn:
        conn.sendall(b"GET /workflows HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = conn.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        for byte in b"GET /workflows HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # the second request dribbles in
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        rest = read_until_closed(conn)
    assert b"408" in rest.split(b"\r\n", 1)[0], rest


def test_a_fast_request_on_a_read_timeout_server_is_served(slow_server: tuple[ThreadServer, TimedRegistry]) -> None:
    server, _ = slow_server
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(3):  # keep-alive: three requests on one connection
            assert http.post("/workflows/fast/run", json={}, headers=TEXT).text == "Hello, world!"


# ---------------------------------------------------------------------------------------------------------
# The response that started a run sees all of it; only followers of the bounded log hit gaps
# ---------------------------------------------------------------------------------------------------------


def slow_reader(server: ThreadServer, accept: dict[str, str], path: str = "/workflows/instant/run") -> bytes:
    """Start a run and read its response slowly over a small receive buffer, so the client lags the run."""
    with raw_connection(server) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        body = b"{}"
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\nAccept: {accept['Accept']}\r\n\r\n"
        conn.sendall(head.encode() + body)
        time.sleep(0.3)  # the run (20 instant chunks) finishes while nothing is read
        return read_until_closed(conn)


def decode_chunked(raw: bytes) -> str:
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    out = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return out.decode()


@pytest.mark.parametrize("accept", [TEXT, SSE], ids=["text", "sse"])
def test_the_primary_response_never_loses_events_of_a_tiny_log(
    start_server: Callable[..., ThreadServer], accept: dict[str, str]
) -> None:
    registry = TimedRegistry(log_capacity=3, log_bytes=300)
    server = start_server(registry=registry)
    for _ in range(3):
        body = decode_chunked(slow_reader(server, accept))
        if accept is TEXT:
            assert body == "".join(BURST_CHUNKS)
        else:
            frames = parse_frames(body)
            assert [f["event"] for f in frames].count("gap") == 0
            run_id = frames[-1]["data"] and json.loads(frames[-1]["data"])["run_id"]
            assert check_ids(frames, run_id) == list(range(1, len(BURST_CHUNKS) + 5))
    with httpx.Client(base_url=server.url, timeout=20) as http:  # a follower of the same kind of run: gaps
        run_id = http.post("/workflows/instant/run", json={}).headers["x-run-id"]
        followed = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
        assert followed[0]["event"] == "gap"
    log = registry.logs[run_id]
    assert len(log._events) <= 3  # the log itself stays bounded


def test_json_requests_in_flight_count_against_the_limit(start_server: Callable[..., ThreadServer]) -> None:
    server = start_server(registry=TimedRegistry(), max_concurrent_runs=1)
    with httpx.Client(base_url=server.url, timeout=20) as http, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http.post, "/workflows/slow/run", json={}, headers=JSON_TYPE)
        time.sleep(0.3)  # the JSON request waits for its run (about 1 s)
        assert not pending.done()
        assert_error(http.post("/workflows/fast/run", json={}), 429)
        assert pending.result().status_code == 200
