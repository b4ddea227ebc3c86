"""SSE over HTTP: events per server CPU-second, `pipeline-ex serve` against `hayhooks run`.

Both servers stream the same in-process haystack generator (`ScriptedChatGenerator`, CHUNKS chunks, yielding
to the loop before each chunk, as a network stream does), on uvicorn with httptools, with uvloop on and
off. pipeline-ex is `pipeline_ex.server.serve` (what `pipeline-ex serve` runs) with the generator
registered as a provider; hayhooks is `hayhooks run` on a pipeline wrapper directory whose
`run_api_async` returns `SSEStream(async_streaming_generator(...))`. The loop is chosen for both the same
way: uvicorn's `loop` setting, set in the launcher.

The load is a separate process (raw `asyncio.open_connection`, HTTP/1.1 with `Connection: close`):
CLIENTS connections at once, each running ROUNDS streams one after another. The server's CPU is read from
/proc/PID/stat (utime + stime) before and after the load. An *event* is one generator chunk delivered to
the client (`event: delta` frames for pipeline-ex, which also sends lifecycle frames, counted against it;
`data:` frames with content for hayhooks). The client also records the time between consecutive events
of a stream (p50, p99).

python -m bench.http_sse            # 100 and 1,000 clients, uvloop on and off
python -m bench.http_sse --quick    # 100 clients, one round
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNKS = 50
ROUNDS = 3
CLIENTS = (100, 1_000)
LOOPS = ("uvloop", "asyncio")
STREAM_TIMEOUT = 120.0
SERVERS = ("pipeline-ex serve", "hayhooks run")
SERVER_PROFILE = {
    "uvicorn's send (the socket writes)": 0.250,
    "the generator and haystack's chunks": 0.143,
    "the event loop itself": 0.107,
    "Starlette's routing and middleware": 0.079,
    "the generator's yield to the loop (asyncio.sleep)": 0.039,
    "uvicorn's parsing and connections": 0.035,
    "pipeline_ex: the response, framing and run log": 0.164,
    "pipeline_ex: the run (runner, engine, step, bridge, dispatch)": 0.142,
    "pipeline_ex: request handling and guards": 0.042,
}
"""Where `pipeline-ex serve`'s CPU goes at 1,000 clients (uvloop): py-spy, blocking, 100 Hz, two loads of this
benchmark, 1,478 samples, each sample counted in the innermost frame of one of these parts. Taken apart from
`python -m bench` (a profiler would change the figures it reports), on the code of 91a9412."""
FRAMING_SHARE = 0.052
"""The part of the same profile in framing: samples inside `sse.event_frame` or pydantic's JSON of an event."""
OURS = "pipeline_ex: "
"""The prefix of the profile's parts that are pipeline_ex code."""
PROVIDER = "bench-sse"
WORKFLOW = f"- id: answer\n  provider: {PROVIDER}\n  prompt: bench\n"

WRAPPER = f"""
from collections.abc import AsyncGenerator

from haystack import Pipeline
from haystack.dataclasses import ChatMessage

from hayhooks import BasePipelineWrapper, SSEStream, async_streaming_generator
from pipeline_ex.modes.mock_generator import ScriptedChatGenerator


class PipelineWrapper(BasePipelineWrapper):
    def setup(self) -> None:
        words = [f"w{{i}} " for i in range({CHUNKS})]
        self.pipeline = Pipeline()
        self.pipeline.add_component("llm", ScriptedChatGenerator(words, usage=None, yield_to_loop=True))

    async def run_api_async(self, question: str) -> AsyncGenerator[str, None]:  # a stream: SSEStream wraps it
        return SSEStream(
            async_streaming_generator(
                self.pipeline, pipeline_run_args={{"llm": {{"messages": [ChatMessage.from_user(question)]}}}}
            )
        )
"""


def _generator() -> Any:
    from pipeline_ex.modes.mock_generator import ScriptedChatGenerator

    return ScriptedChatGenerator([f"w{i} " for i in range(CHUNKS)], usage=None, yield_to_loop=True)


def _force_loop(loop: str) -> None:
    """Make every `uvicorn.run` of this process use `loop` and httptools (the same for both servers)."""
    import functools

    import uvicorn

    run = uvicorn.run
    uvicorn.run = functools.partial(run, loop=loop, access_log=False)  # type: ignore[assignment]


def _serve_pipeline_ex(folder: Path, port: int, loop: str) -> None:
    from bench.common import register_provider
    from pipeline_ex.server import serve

    register_provider(PROVIDER, _generator())
    _force_loop(loop)
    serve(folder, port=port)  # httptools: uvicorn_protocol's `auto` when it is installed


def _serve_hayhooks(folder: Path, port: int, loop: str) -> None:
    _force_loop(loop)
    from hayhooks.cli.base import hayhooks_cli

    sys.argv = ["hayhooks", "run", "--host", "127.0.0.1", "--port", str(port), "--pipelines-dir", str(folder)]
    sys.argv += ["--without-monitoring", "--without-tracing"]  # the streaming path alone, as fast as it goes
    hayhooks_cli()


# -- the load client (its own process) ---------------------------------------------------------------


async def _stream(port: int, request: bytes, marker: bytes, gaps: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    count, tail, last = 0, b"", 0.0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            found = (tail + data).count(marker)
            if found:
                if last:
                    gaps.append(now - last)
                gaps.extend([0.0] * (found - 1))
                last = now
                count += found
            tail = data[-(len(marker) - 1) :]
    finally:
        writer.close()
    return count


async def _load(port: int, server: str, clients: int, rounds: int) -> dict[str, Any]:
    if server == "hayhooks run":
        body, path, marker = json.dumps({"question": "bench"}).encode(), "/sse/run", b"data: w"
    else:
        body, path, marker = json.dumps({"inputs": {}}).encode(), "/workflows/sse/run", b"event: delta"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    gaps: list[float] = []

    failed = 0

    async def client() -> int:
        nonlocal failed
        received = 0
        for _ in range(rounds):
            try:  # a stream that stalls is reported, not waited for forever
                received += await asyncio.wait_for(_stream(port, request, marker, gaps), STREAM_TIMEOUT)
            except (TimeoutError, OSError):
                failed += 1
        return received

    started = time.perf_counter()
    counts = await asyncio.gather(*(client() for _ in range(clients)))
    gaps.sort()
    return {
        "events": sum(counts),
        "expected": clients * rounds * CHUNKS,
        "failed_streams": failed,
        "wall_s": time.perf_counter() - started,
        "gap_p50_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
        "gap_p99_ms": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] * 1000 if gaps else 0.0,
    }


# -- orchestration -----------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout} s")


def _run_one(server: str, loop: str, clients: int, rounds: int, folder: Path) -> dict[str, Any]:
    port = _free_port()
    kind = "hayhooks" if server == "hayhooks run" else "pipeline-ex"
    command = [sys.executable, "-m", "bench.http_sse", "--serve", kind, "--port", str(port), "--loop", loop]
    command += ["--dir", str(folder / kind)]
    log = (folder / f"{kind}-{loop}-{clients}.log").open("wb")  # a pipe nobody reads would fill and stall it
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(port, process)
        load = [sys.executable, "-m", "bench.http_sse", "--client", server, "--port", str(port)]
        subprocess.run([*load, "--clients", "10", "--rounds", "1"], check=True, capture_output=True)  # warm up
        before = _cpu_seconds(process.pid)
        out = subprocess.run(
            [*load, "--clients", str(clients), "--rounds", str(rounds)],
            check=True,
            capture_output=True,
            text=True,
            timeout=rounds * STREAM_TIMEOUT + 60,
        )
        cpu = _cpu_seconds(process.pid) - before
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    result: dict[str, Any] = json.loads(out.stdout)
    result.update(server=server, loop=loop, clients=clients, server_cpu_s=cpu)
    result["events_per_cpu_s"] = result["events"] / cpu if cpu else 0.0
    result["cpu_us_per_event"] = cpu / max(result["events"], 1) * 1e6
    return result


def _fixtures(root: Path) -> None:
    (root / "pipeline-ex").mkdir()
    (root / "pipeline-ex" / "sse.yaml").write_text(WORKFLOW)
    (root / "hayhooks" / "sse").mkdir(parents=True)
    (root / "hayhooks" / "sse" / "pipeline_wrapper.py").write_text(WRAPPER)


def measure(
    clients: tuple[int, ...] = CLIENTS, rounds: int = ROUNDS, loops: tuple[str, ...] = LOOPS
) -> list[dict[str, Any]]:
    """One row per (loop, clients, server): events, server CPU, events per CPU-second, client gaps."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fixtures(root)
        for loop in loops:
            for count in clients:
                for server in SERVERS:
                    rows.append(_run_one(server, loop, count, rounds, root))
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """pipeline-ex's events per CPU-second over hayhooks', per `<loop>, <clients> clients`."""
    by = {(row["server"], row["loop"], row["clients"]): row["events_per_cpu_s"] for row in rows}
    return {
        f"{loop}, {clients} clients": by[SERVERS[0], loop, clients] / by[SERVERS[1], loop, clients]
        for (server, loop, clients) in by
        if server == SERVERS[0] and by.get((SERVERS[1], loop, clients))
    }


def main() -> None:
    """Serve, load or run the whole comparison, as the arguments say."""
    parser = argparse.ArgumentParser(prog="python -m bench.http_sse", description=__doc__)
    parser.add_argument("--serve", choices=("pipeline-ex", "hayhooks"))
    parser.add_argument("--client", choices=SERVERS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.serve == "pipeline-ex":
        _serve_pipeline_ex(args.dir, args.port, args.loop)
    elif args.serve == "hayhooks":
        _serve_hayhooks(args.dir, args.port, args.loop)
    elif args.client:
        print(json.dumps(asyncio.run(_load(args.port, args.client, args.clients, args.rounds))))
    else:
        rows = measure((100,), 1) if args.quick else measure()
        for row in rows:
            print(
                f"{row['server']:<18} {row['loop']:<8} {row['clients']:>5} clients: {row['events']:>7} events "
                f"(of {row['expected']}), {row['server_cpu_s']:.2f} s CPU, "
                f"{row['events_per_cpu_s']:,.0f} events/CPU-s, {row['cpu_us_per_event']:.0f} µs/event, "
                f"gap p50 {row['gap_p50_ms']:.2f} ms p99 {row['gap_p99_ms']:.1f} ms"
            )
        for name, value in ratios(rows).items():
            print(f"pipeline-ex / hayhooks, {name}: {value:.2f}×")


if __name__ == "__main__":
    main()
