"""A hard crash loses nothing that was reported delivered; cancelled streams leak nothing; cancel closes fast.

(a) `pipeline-ex run` with a file handler before the console handler is SIGKILLed mid-stream: the file
    holds a prefix of the reply at least as long as what the process had printed.
(b) Hundreds of streams cancelled after their first delta (native async on the mock provider, hybrid on a
    sync-only generator, and the openai provider against the loopback server) leave no extra threads, tasks,
    sockets or file descriptors behind; the server sees every connection closed.
(c) The time from `task.cancel()` to the loopback server noticing the connection closed, over 50 runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from haystack import component
from haystack.dataclasses import ChatMessage, StreamingChunk
from openai_sse_server import OpenAISSEServer

import pipeline_ex
from pipeline_ex import Delta, Done, Event, StreamingRecorder
from pipeline_ex.llm.providers import PROVIDERS, BuiltGenerator

pytestmark = [pytest.mark.streaming, pytest.mark.live]

PIECES = tuple(f"t{i} " for i in range(50))


def report(config: pytest.Config, name: str, line: str) -> None:
    """Print `line` now (visible with -s) and again in the session's terminal summary."""
    print(f"\n{line}")

    class Summary:
        def pytest_terminal_summary(self, terminalreporter: Any) -> None:
            terminalreporter.write_line(line)

    if not config.pluginmanager.has_plugin(name):
        config.pluginmanager.register(Summary(), name)


# -- (a) SIGKILL mid-stream ------------------------------------------------------------------------------

CRASH_CHUNKS = [f"c{i} " for i in range(300)]  # 300 x 20 ms = 6 s: far longer than the test waits
CRASH_REPLY = "".join(CRASH_CHUNKS)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")
def test_sigkill_mid_stream_keeps_at_least_what_was_printed(tmp_path: Path) -> None:
    # Handler options go with a single stream_handler only, so the `file` handler with its path is a
    # subclass of the built-in FileHandler (text format) that fixes the path.
    (tmp_path / "crash_handlers.py").write_text(
        textwrap.dedent(
            """
            from pipeline_ex.streaming.file import FileHandler


            class ReplyFile(FileHandler):
                def __init__(self) -> None:
                    super().__init__("reply.txt", format="text")
            """
        ).lstrip(),
        encoding="utf-8",
    )
    chunks = ", ".join(f'"{c}"' for c in CRASH_CHUNKS)
    (tmp_path / "crash.yaml").write_text(
        textwrap.dedent(
            f"""
            workflow:
              name: crash
              steps:
                - id: long
                  provider: mock
                  prompt: "a long reply"
                  options:
                    delay_ms: 20
                    mock_response: [{chunks}]
                  stream_handler: [crash_handlers.ReplyFile, console]
            """
        ).lstrip(),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("pipeline-ex")), "run", "crash.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    stdout_fd = proc.stdout.fileno()
    printed = b""
    try:
        deadline = time.monotonic() + 30
        while len(printed) < 40:  # some text arrived on stdout, mid-stream
            assert time.monotonic() < deadline, f"no streamed text on stdout: {printed!r}"
            readable, _, _ = select.select([stdout_fd], [], [], 0.05)
            if readable:
                data = os.read(stdout_fd, 65536)
                assert data, f"stdout closed early: {proc.communicate()}"
                printed += data
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # whatever the process had written to the pipe before it died was printed too
        while data := os.read(stdout_fd, 65536):
            printed += data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    text_printed = printed.decode("utf-8")
    on_disk = (tmp_path / "reply.txt").read_text(encoding="utf-8")
    print(f"\nSIGKILL: {len(text_printed)} chars printed, {len(on_disk)} chars in the file")
    assert CRASH_REPLY.startswith(text_printed)
    assert CRASH_REPLY.startswith(on_disk)
    assert len(on_disk) >= len(text_printed)  # the file handler runs first: it never lags the console
    assert len(on_disk) < len(CRASH_REPLY)  # killed mid-stream


# -- (b) leak checks -------------------------------------------------------------------------------------


def open_fds() -> tuple[int, int]:
    """(open file descriptors, of which sockets) of this process."""
    total = sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, already closed
        total += 1
        sockets += target.startswith("socket:")
    return total, sockets


def snapshot() -> tuple[int, int, int]:
    gc.collect()
    fds, sockets = open_fds()
    return threading.active_count(), fds, sockets


async def settled(expected: tuple[int, int, int] | None = None, within: float = 5.0) -> tuple[int, int, int]:
    """Wait for threads and descriptors to come back to `expected` (or, without it, to stop changing).

    Server threads end, and close their sockets, a moment after the responses they wrote were finished.
    """
    deadline = time.perf_counter() + within
    previous = snapshot()
    while True:
        await asyncio.sleep(0.05)
        now = snapshot()
        done = now == expected if expected is not None else now == previous
        if done or time.perf_counter() > deadline:
            return now
        previous = now


async def prespawn_default_executor() -> None:
    """Start every worker of the loop's default executor, so idle workers cannot show up as new threads."""
    loop = asyncio.get_running_loop()
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default max_workers
    barrier = threading.Barrier(workers, timeout=5)
    await asyncio.gather(*(loop.run_in_executor(None, barrier.wait) for _ in range(workers)))


async def cancel_after_first_delta(kwargs: dict[str, Any], recorders: list[StreamingRecorder]) -> None:
    """Start one stream, cancel it as soon as its first delta arrived, and check its cancelled Done."""
    first = asyncio.Event()
    recorder = StreamingRecorder()
    recorders.append(recorder)

    def on_delta(event: Event) -> None:
        if isinstance(event, Delta):
            first.set()

    task = asyncio.create_task(pipeline_ex.ainvoke(prompt="go", on_event=[recorder, on_delta], **kwargs))
    async with asyncio.timeout(10):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def cancelled_streams(kwargs: dict[str, Any], total: int, batch: int) -> list[StreamingRecorder]:
    """Run `total` cancelled streams, `batch` at a time; return their recorders."""
    recorders: list[StreamingRecorder] = []
    for _ in range(total // batch):
        await asyncio.gather(*(cancel_after_first_delta(kwargs, recorders) for _ in range(batch)))
    return recorders


def check_cancelled(recorders: list[StreamingRecorder], total: int) -> None:
    assert len(recorders) == total
    for recorder in recorders:
        recorder.assert_complete()
        done = recorder.events[-1]
        assert isinstance(done, Done)
        assert done.response.finish_reason == "cancelled"
        assert done.error is not None and done.error.type == "cancelled"
        assert len(recorder.deltas) >= 1


async def leak_check(
    kwargs: dict[str, Any], total: int, batch: int, quiesce: Callable[[], Any] | None = None
) -> list[StreamingRecorder]:
    """Warm up with one batch, then run `total` cancelled streams and compare threads, tasks and fds.

    :param quiesce: awaited after the warm-up and after the run, to let the other side finish.
    """
    await prespawn_default_executor()
    warm: list[StreamingRecorder] = []
    await asyncio.gather(*(cancel_after_first_delta(kwargs, warm) for _ in range(batch)))
    if quiesce is not None:
        await quiesce()
    before = await settled()
    threads_before = set(threading.enumerate())
    recorders = await cancelled_streams(kwargs, total, batch)
    if quiesce is not None:
        await quiesce()
    after = await settled(before)
    assert not [t.name for t in threading.enumerate() if t not in threads_before], "threads were left running"
    check_cancelled(recorders, total)
    assert all(len(r.deltas) < len(PIECES) for r in recorders)  # each stopped well before its end
    assert len(asyncio.all_tasks()) == 1, asyncio.all_tasks()
    names = ("threads", "fds", "sockets")
    assert after == before, {n: (b, a) for n, b, a in zip(names, before, after, strict=True)}
    return recorders


async def test_500_cancelled_mock_streams_leak_nothing() -> None:
    kwargs = {"provider": "mock", "mock_response": list(PIECES), "delay_ms": 5}
    await leak_check(kwargs, total=500, batch=50)


@component
class SlowSyncOnlyGenerator:
    """Streams `PIECES` slowly from its sync `run` only, so `ainvoke` runs it hybrid (in a worker thread)."""

    def __init__(self) -> None:
        self.threads: set[int] = set()

    @component.output_types(replies=list[ChatMessage])
    def run(
        self,
        messages: list[ChatMessage],
        streaming_callback: Any = None,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[ChatMessage]]:
        self.threads.add(threading.get_ident())
        for piece in PIECES:
            time.sleep(0.005)
            if streaming_callback is not None:
                streaming_callback(StreamingChunk(content=piece))
        if streaming_callback is not None:
            streaming_callback(StreamingChunk(content="", finish_reason="stop"))
        return {"replies": [ChatMessage.from_assistant("".join(PIECES), meta={"finish_reason": "stop"})]}


async def test_100_cancelled_hybrid_streams_leak_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[SlowSyncOnlyGenerator] = []

    def builder(model: str | None, options: Any) -> BuiltGenerator:
        generator = SlowSyncOnlyGenerator()
        built.append(generator)
        return BuiltGenerator(generator, "sync_only", "m")

    monkeypatch.setitem(PROVIDERS, "sync_only", builder)
    await leak_check({"provider": "sync_only"}, total=100, batch=50)
    assert len(built) == 150
    assert threading.get_ident() not in set().union(*(g.threads for g in built))  # really hybrid


async def test_100_cancelled_openai_streams_leak_nothing_and_every_connection_is_closed(
    openai_server: OpenAISSEServer,
) -> None:
    script = openai_server.script(pieces=PIECES, delay_s=0.02)
    kwargs = {"provider": "openai", "api_base_url": openai_server.url, "max_retries": 0}

    async def all_responses_finished() -> None:
        for index in range(len(openai_server.requests)):
            await asyncio.to_thread(openai_server.wait_for_response, index, 5.0)

    # the stdlib test server listens with a backlog of 5: more concurrent connects than that are reset
    await leak_check(kwargs, total=100, batch=4, quiesce=all_responses_finished)
    requests = openai_server.requests
    assert len(requests) == 104  # the warm-up batch and the 100
    for index, request in enumerate(requests):
        await asyncio.to_thread(openai_server.wait_for_client_close, index, 2.0)
        assert not request.completed
        assert request.content_chunks_sent < len(script.pieces)


# -- (c) cancel -> connection closed ---------------------------------------------------------------------


async def test_cancel_to_connection_closed_latency(
    openai_server: OpenAISSEServer, request: pytest.FixtureRequest
) -> None:
    openai_server.script(pieces=PIECES, delay_s=0.02)
    kwargs = {"provider": "openai", "api_base_url": openai_server.url, "max_retries": 0}
    latencies_ms: list[float] = []
    for index in range(50):
        first = asyncio.Event()
        recorder = StreamingRecorder()

        def on_delta(event: Event, first: asyncio.Event = first) -> None:
            if isinstance(event, Delta):
                first.set()

        task = asyncio.create_task(pipeline_ex.ainvoke(prompt="go", on_event=[recorder, on_delta], **kwargs))
        async with asyncio.timeout(10):
            await first.wait()
        cancelled_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closed_at = await asyncio.to_thread(openai_server.wait_for_client_close, index, 2.0)
        latencies_ms.append((closed_at - cancelled_at) * 1000)
        assert recorder.done is not None and recorder.done.response.finish_reason == "cancelled"
    median, worst = statistics.median(latencies_ms), max(latencies_ms)
    report(
        request.config,
        "cancel-close-latency",
        f"task.cancel() -> server saw the connection closed, 50 runs: median {median:.2f} ms, max {worst:.2f} ms",
    )
    assert all(latency >= 0 for latency in latencies_ms)
    assert median < 100
    assert worst < 1000
