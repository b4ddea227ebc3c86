"""What the server tests share: the served test workflows, uvicorn on 127.0.0.1 in a thread, a real
`pipeline-ex serve` process, and SSE and error-body helpers. Everything serves real HTTP; nothing here
stands in for the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pipeline_ex import Delta, Done
from pipeline_ex.events import EVENT_ADAPTER, Event, RunEvent
from pipeline_ex.server import create_app
from pipeline_ex.server.runs import RunLog, RunRegistry
from pipeline_ex.sse import parse_frames

SSE = {"Accept": "text/event-stream"}
TEXT = {"Accept": "text/plain"}
JSON = {"Accept": "application/json"}
JSON_BODY = {"Content-Type": "application/json"}  # runs start only from JSON bodies
JSON_TYPE = JSON_BODY

FAST_CHUNKS = ["Hello", ", ", "world", "!"]
SLOW_CHUNKS = [f"s{n} " for n in range(30)]  # 30 chunks, 30 ms apart
BURST_CHUNKS = [f"b{n} " for n in range(20)]  # 20 chunks, 10 ms apart
LOAD_CHUNKS = [f"l{n} " for n in range(20)]  # 20 chunks, 20 ms apart
MAX_BODY = 4096


# -- workflows ---------------------------------------------------------------------------------------------


def mock_step(step_id: str = "answer", chunks: list[str] | None = None, **options: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"id": step_id, "provider": "mock", "prompt": "{{ inputs.prompt }}"}
    if chunks is not None:
        step["mock_response"] = chunks
    if options:
        step["options"] = options
    return step


PROMPT = {"prompt": {"default": "hi", "description": "what to ask"}}

WORKFLOWS: dict[str, dict[str, Any]] = {
    "fast": {"inputs": PROMPT, "steps": [mock_step(chunks=FAST_CHUNKS)]},
    "echo": {"inputs": {"prompt": {}}, "steps": [mock_step()]},
    "slow": {"inputs": PROMPT, "steps": [mock_step(chunks=SLOW_CHUNKS, delay_ms=30)]},
    "burst": {"inputs": PROMPT, "steps": [mock_step(chunks=BURST_CHUNKS, delay_ms=10)]},
    "instant": {"inputs": PROMPT, "steps": [mock_step(chunks=BURST_CHUNKS)]},
    "load": {"inputs": PROMPT, "steps": [mock_step(chunks=LOAD_CHUNKS, delay_ms=20)]},
    "idle": {"inputs": PROMPT, "steps": [mock_step(chunks=["after ", "a pause"], delay_ms=450)]},
    "fail": {"inputs": PROMPT, "steps": [mock_step(chunks=["one ", "two ", "three ", "four"], error_after=2)]},
    "two_steps": {
        "inputs": PROMPT,
        "steps": [
            mock_step("draft", ["Draft ", "text."]),
            {"id": "final", "provider": "mock", "prompt": "Polish: {{ steps.draft.text }}"},
        ],
    },
    "needs_topic": {
        "description": "Needs a topic.",
        "inputs": {"topic": {"description": "the subject"}, "count": {"type": "integer", "default": 3}},
        "steps": [{"id": "answer", "provider": "mock", "prompt": "{{ inputs.count }} facts about {{ inputs.topic }}"}],
    },
    "python_fail": {
        "steps": [{"id": "parse", "type": "python", "callable": "json.loads"}],  # json.loads(ctx) -> TypeError
    },
}


def write_workflows(folder: Path, names: Iterable[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or WORKFLOWS:
        document = {"workflow": {"name": name, **WORKFLOWS[name]}}
        (folder / f"{name}.yaml").write_text(json.dumps(document, indent=2))  # JSON is YAML
    (folder / "broken.yaml").write_text("workflow:\n  name: broken\n  steps: []\n")  # not served
    (folder / "notes.txt").write_text("not a workflow")
    return folder


# -- servers -----------------------------------------------------------------------------------------------


class TimedRegistry(RunRegistry):
    """A `RunRegistry` that keeps every run and timestamps (perf_counter) when each finished or was cancelled."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.logs: dict[str, RunLog] = {}
        self.finished_at: dict[str, float] = {}
        self.cancelled_done_at: dict[str, float] = {}

    def start(self, *args: Any, **kwargs: Any) -> RunLog:
        log = super().start(*args, **kwargs)
        run_id = log.run_id
        self.logs[run_id] = log
        finish, append = log.finish, log.append

        def timed_finish(result: Any, error: BaseException | None) -> None:
            self.finished_at.setdefault(run_id, time.perf_counter())
            finish(result, error)

        def timed_append(event: Event) -> None:
            if isinstance(event, Done) and event.response.finish_reason == "cancelled":
                self.cancelled_done_at.setdefault(run_id, time.perf_counter())
            append(event)

        log.finish = timed_finish  # type: ignore[method-assign]
        log.append = timed_append  # type: ignore[method-assign]
        return log

    def events(self, run_id: str) -> list[Event]:
        return list(self.logs[run_id]._events)

    def wait_finished(self, run_ids: Iterable[str], timeout: float = 10.0) -> None:
        wanted = set(run_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= set(self.finished_at):
                return
            time.sleep(0.001)
        missing = wanted - set(self.finished_at)
        raise AssertionError(f"{len(missing)} runs did not finish within {timeout} s: {sorted(missing)[:5]}")


class ThreadServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) from a background thread with its own event loop.

    The thread runs the loop and HTTP implementation `pipeline-ex serve` would pick (uvloop when it is
    installed). `config` overrides the `uvicorn.Config` keywords (for instance the HTTP protocol class).
    Use `start()` / `stop()`, or the server as a `with` block.
    """

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "lifespan": "on",
            "log_level": "warning",
            "access_log": False,
            "backlog": 4096,
            "timeout_graceful_shutdown": 5,
        }
        options.update(config)
        self.config = uvicorn.Config(app, **options)
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-test-server", daemon=True)
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
        host, self.port = self.server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def call(self, make: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a coroutine (made by `make`) on the server's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def task_names(self) -> list[str]:
        """The tasks on the server loop, other than the one asking."""

        async def inspect() -> list[str]:
            me = asyncio.current_task()
            return sorted(
                f"{t.get_name()}:{getattr(t.get_coro(), '__qualname__', t.get_coro())}"
                for t in asyncio.all_tasks()
                if t is not me
            )

        names: list[str] = self.call(inspect)
        return names


@contextmanager
def serving(folder: Path, **options: Any) -> Iterator[ThreadServer]:
    """`create_app(folder, **options)` served for the length of a `with` block (mock runs, no key, by default)."""
    options.setdefault("mock", True)
    options.setdefault("api_key", "")
    with ThreadServer(create_app(folder, **options)) as running:
        yield running


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def cli_executable() -> str:
    found = Path(sys.executable).with_name("pipeline-ex")
    return str(found) if found.exists() else (shutil.which("pipeline-ex") or "pipeline-ex")


class CliServer:
    """A real `pipeline-ex serve` process (started in `cwd`, which its handlers and python steps import from)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.args = [cli_executable(), "serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, headers: dict[str, str] | None = None) -> CliServer:
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pipeline-ex serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/workflows", headers=headers or {}, timeout=2)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"pipeline-ex serve did not start:\n{self.log.read_text()}")

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# -- SSE and error bodies ----------------------------------------------------------------------------------


def iter_frames(chunks: Iterable[str]) -> Iterator[dict[str, str]]:
    """Parse SSE frames as the text arrives (comments are dropped)."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield from parse_frames(block + "\n\n")


async def aiter_frames(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    buffer = ""
    async for chunk in chunks:
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for frame in parse_frames(block + "\n\n"):
                yield frame


STEP_EVENTS = ("delta", "done")
LIFECYCLE_EVENTS = ("step_started", "step_finished", "run_finished")
RUN_EVENTS = (*STEP_EVENTS, *LIFECYCLE_EVENTS)
"""The SSE event names of a run's events (each frame has `id: <run_id>:<seq>`)."""


def events_of(frames: Iterable[dict[str, str]]) -> list[Event]:
    """The steps' Delta and Done events in the frames (lifecycle frames left out)."""
    return [EVENT_ADAPTER.validate_json(f["data"]) for f in frames if f.get("event") in STEP_EVENTS]


def run_events_of(frames: Iterable[dict[str, str]]) -> list[RunEvent]:
    """Every event in the frames, lifecycle events included."""
    return [EVENT_ADAPTER.validate_json(f["data"]) for f in frames if f.get("event") in RUN_EVENTS]


def text_of(events: Iterable[Event]) -> str:
    return "".join(e.content for e in events if isinstance(e, Delta) and e.kind == "text")


def check_ids(frames: list[dict[str, str]], run_id: str) -> list[int]:
    """Every event frame has `id: <run_id>:<seq>`; the seqs strictly increase. Returns them."""
    seqs = []
    for frame in frames:
        if frame.get("event") in RUN_EVENTS:
            prefix, _, seq = frame["id"].rpartition(":")
            assert prefix == run_id, frame
            assert json.loads(frame["data"])["seq"] == int(seq)
            seqs.append(int(seq))
        elif frame.get("event") == "end" and "id" in frame:  # a finished run's end frame: `<run_id>:end`
            assert frame["id"] == f"{run_id}:end", frame
        else:
            assert "id" not in frame, frame
    assert seqs == sorted(set(seqs)), seqs
    return seqs


LEAKS = ("Traceback", 'File "', "site-packages", "pipeline_ex/", "line ", "Error:\n")


def assert_clean_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """An error answer: the status, a JSON `{"error": {"type", "message"}}` body, and no stack trace."""
    assert response.status_code == status, response.text
    body = response.text
    for leak in LEAKS:
        assert leak not in body, f"{leak!r} in error body: {body}"
    payload: dict[str, Any] = response.json()
    assert set(payload["error"]) >= {"type", "message"}
    return payload


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is `status` with the server's JSON error shape, and no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    payload: dict[str, Any] = response.json()
    assert set(payload["error"]) >= {"type", "message"} and payload["error"]["message"], payload
    assert "Traceback" not in response.text
    return payload
