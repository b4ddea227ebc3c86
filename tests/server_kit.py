"""Helpers shared by the server security and limit tests: a uvicorn server on 127.0.0.1 in a thread, and
a `pipeline-ex serve` process. Both serve real HTTP; nothing here stands in for the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import uvicorn
from test_server import WORKFLOWS, TimedRegistry, write_workflows

JSON_TYPE = {"Content-Type": "application/json"}
SSE = {"Accept": "text/event-stream"}
TEXT = {"Accept": "text/plain"}


class ThreadServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) from a background thread with its own event loop.

    `config` overrides the `uvicorn.Config` keywords (for instance the HTTP protocol class).
    """

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "lifespan": "on",
            "log_level": "warning",
            "access_log": False,
        }
        options.update(config)
        self.config = uvicorn.Config(app, **options)
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-kit-server", daemon=True)
        self.url = ""
        self.port = 0

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
            self.loop = runner.get_loop()
            runner.run(self.server.serve())

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def call(self, make: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine (made by `make`) on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is `status` with the server's JSON error shape, and no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    payload: dict[str, Any] = response.json()
    assert set(payload["error"]) >= {"type", "message"} and payload["error"]["message"], payload
    assert "Traceback" not in response.text
    return payload


__all__ = ["JSON_TYPE", "SSE", "TEXT", "WORKFLOWS", "ThreadServer", "TimedRegistry", "assert_error", "write_workflows"]
