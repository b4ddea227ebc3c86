"""A stream's body frames skip the server's own middleware, and only its own (`pipeline_ex.server.body_send`).

Starlette's and the server's middleware only note that a response started, so once a run's SSE start went
through them its batches go to the ASGI server's `send` directly. Middleware a user adds to the app may
transform bodies: then every frame goes through it, as the real server shows here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_kit import JSON_BODY, SSE, ThreadServer, events_of, iter_frames, text_of, write_workflows
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from test_sse_response import RUN, Client, delta, response

from pipeline_ex.server import create_app
from pipeline_ex.server.body_send import SERVER_SEND, body_send
from pipeline_ex.server.runs import RunLog

pytestmark = pytest.mark.streaming


async def _health(app: Any) -> tuple[dict[str, Any], Client]:
    client = Client()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app(scope, receive, client.send)
    return scope, client


async def test_the_app_records_the_servers_send_while_its_middleware_is_its_own(tmp_path: Path) -> None:
    app = create_app(write_workflows(tmp_path, ["fast"]), mock=True, api_key="")
    scope, client = await _health(app)
    assert scope[SERVER_SEND] == client.send
    assert client.messages[0]["status"] == 200


async def test_middleware_added_to_the_app_turns_the_direct_send_off(tmp_path: Path) -> None:
    app = create_app(write_workflows(tmp_path, ["fast"]), mock=True, api_key="")
    app.add_middleware(_BodyRecorder, bodies=[])
    scope, client = await _health(app)
    assert SERVER_SEND not in scope
    assert client.messages[0]["status"] == 200
    assert body_send(scope, client.send) == client.send


async def test_the_start_goes_through_the_stack_and_the_body_frames_to_the_server() -> None:
    log = RunLog(RUN, capacity=100)
    for seq in (1, 2):
        log.append(delta(seq))
    log.finish(None, None)
    made, counter, _, closed = response(log)
    server, stack = Client(), Client()
    await made({"type": "http", SERVER_SEND: server.send}, server.receive, stack.send)
    assert [m["type"] for m in stack.messages] == ["http.response.start"]
    assert [m["type"] for m in server.messages] == ["http.response.body"]
    assert "event: end" in server.text and counter.total == 2 and closed == [True]


class _BodyRecorder:
    """User middleware that sees (and records) every body message of every response."""

    def __init__(self, app: ASGIApp, *, bodies: list[bytes]) -> None:
        self.app = app
        self.bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.bodies.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, recording)


def test_a_served_stream_passes_every_frame_through_middleware_the_user_added(tmp_path: Path) -> None:
    app = create_app(write_workflows(tmp_path, ["fast"]), mock=True, api_key="")
    bodies: list[bytes] = []
    app.add_middleware(_BodyRecorder, bodies=bodies)
    with ThreadServer(app) as running:
        reply = httpx.post(
            f"{running.url}/workflows/fast/run", headers={**SSE, **JSON_BODY}, content=json.dumps({}), timeout=10
        )
    assert reply.status_code == 200
    assert b"".join(bodies).decode() == reply.text  # every frame the client got went through the middleware
    assert text_of(events_of(iter_frames([reply.text]))) == "Hello, world!"
