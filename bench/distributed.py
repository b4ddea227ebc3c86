"""A real deployment under load: events/s with one and two worker processes, and its latencies.

Starts a redis-server, `pipeline-ex worker` processes and a `pipeline-ex serve --redis` replica as
subprocesses (tests/redis_kit.py, tests/deployment_kit.py), on the mock provider.

- **Throughput.** The same load is enqueued at once, first for one worker process, then for two; events/s
  is the events written to the runs' streams over the wall time from the first enqueue to the last run's
  end. Each worker holds up to `SLOTS` runs at once on its one event loop. Two loads:
  - *paced*: `PACED_RUNS` runs of `CHUNKS` chunks 10 ms apart, as a provider streams them. A worker is
    bounded by its slots, as it is with real models; this is the scaling a deployment gets.
  - *CPU-bound*: `RUNS` runs of `CHUNKS` chunks with no delay. A worker is bounded by its one core, and
    two workers by the machine's cores, which they share with Redis and this script: the worker CPU per
    event (from /proc) shows where the time goes.
- **Resume latency.** A client reconnects to the replica with `Last-Event-ID` in the middle of a
  run, 0.3 s after it left: the time from sending the request (a new connection) to receiving the first
  resumed event.
- **Cancel latency.** A streaming client on the replica disconnects: the time until the run's
  `Done(cancelled)` is in its Redis stream, written by the worker in another process.
- **Redelivery.** A worker is SIGKILLed in the middle of a run: the time until its step restarts on the
  other worker (`StepStarted(attempt=2)`), with the default 5 s lease.

python -m bench.distributed [--runs N] [--chunks N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deployment_kit import WorkerProcess, holder, replica
from redis_kit import RedisServer
from server_kit import JSON_BODY, SSE, iter_frames

from pipeline_ex.distributed import Deployment, RedisEventLog, RunRecord
from pipeline_ex.distributed.celery_app import celery_app, enqueue
from pipeline_ex.events import Done
from pipeline_ex.workflow.checkpoints import workflow_digest
from pipeline_ex.workflow.loader import load_workflow

RUNS = 400
PACED_RUNS = 160
CHUNKS = 200
SLOTS = 16
REPEATS = 3
SCALING_TARGET = 1.8
CANCEL_TARGET_MS = 200.0


def _workflows(folder: Path, chunks: int) -> None:
    (folder / "workflows").mkdir()
    words = ", ".join(f'"w{n} "' for n in range(chunks))
    for name, delay in (("load", 0), ("paced", 10)):
        (folder / "workflows" / f"{name}.yaml").write_text(
            f"workflow:\n  name: {name}\n  steps:\n    - id: answer\n      provider: mock\n      prompt: go\n"
            f"      mock_response: [{words}]\n      options: {{delay_ms: {delay}}}\n",
            encoding="utf-8",
        )
    slow = ", ".join(f'"s{n} "' for n in range(60))
    (folder / "workflows" / "slow.yaml").write_text(
        "workflow:\n  name: slow\n  steps:\n"
        f"    - {{id: first, provider: mock, prompt: one, mock_response: [a, b], options: {{delay_ms: 10}}}}\n"
        f"    - {{id: second, provider: mock, prompt: two, mock_response: [{slow}], options: {{delay_ms: 100}}}}\n",
        encoding="utf-8",
    )


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(deployment: Deployment, folder: Path, runs: int, workflow: str, pids: list[int]) -> tuple[float, float]:
    """Events/s of `runs` runs of `workflow`, and the workers' CPU µs per event."""
    before = sum(_cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    events = asyncio.run(_throughput(deployment, folder, runs, workflow))
    elapsed = time.perf_counter() - started
    cpu = sum(_cpu_seconds(pid) for pid in pids) - before
    return events / elapsed, cpu / events * 1e6


async def _throughput(deployment: Deployment, folder: Path, runs: int, workflow: str) -> int:
    """Enqueue `runs` runs of `workflow` at once, wait until they have all ended; the events they wrote."""
    loaded = load_workflow(folder / "workflows" / f"{workflow}.yaml", mock=True)
    client = deployment.async_client()
    store = deployment.run_store(client)
    app = celery_app(deployment)
    ids = [uuid.uuid4().hex[:16] for _ in range(runs)]
    for run_id in ids:
        await store.admit(RunRecord(run_id, workflow, workflow_digest(loaded), {}, mock=True), runs + 1)
        enqueue(app, run_id, deployment.queue)
    # Polling the admission count costs the workers nothing; following 400 streams here would take CPU
    # from them on a small machine.
    while await store.active():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    events = 0
    for run_id in ids:
        events += int(await client.xlen(f"{deployment.key_prefix}:run:{run_id}:events")) - 1  # the end marker
    await client.aclose()
    return events


def _resume_ms(server_url: str) -> float:
    """Start a run, read some of it, and time a reconnect with Last-Event-ID to its first resumed event.

    The client exists before the timing starts (building an httpx client takes about 30 ms here, which a
    reconnecting browser does not pay); the reconnect opens a new connection.
    """
    with httpx.Client(timeout=30) as client:
        url = f"{server_url}/workflows/slow/run?resumable=true"
        with client.stream("POST", url, json={"inputs": {}}, headers={**SSE, **JSON_BODY}) as response:
            run_id = response.headers["x-run-id"]
            frames = iter_frames(response.iter_text())
            last = [f for f, _ in zip(frames, range(8), strict=False) if "id" in f][-1]["id"]
        time.sleep(0.3)  # the run goes on meanwhile: the resumed stream has events waiting
        began = time.perf_counter()
        with client.stream("GET", f"{server_url}/runs/{run_id}/events", headers={"Last-Event-ID": last}) as again:
            next(f for f in iter_frames(again.iter_text()) if "id" in f)
            took = (time.perf_counter() - began) * 1000
        client.delete(f"{server_url}/runs/{run_id}")
    return took


async def _first_done(url: str, run_id: str, after: int) -> float:
    log = RedisEventLog(url)
    try:
        async for event in log.follow(run_id, after):
            if isinstance(event, Done):
                return time.perf_counter()
        raise RuntimeError("no Done")
    finally:
        await log.aclose()


def _cancel_ms(server_url: str, redis_url: str) -> float:
    """A client disconnects mid-run; ms until the worker's Done(cancelled) is in the run's stream."""
    with httpx.stream(
        "POST", f"{server_url}/workflows/slow/run", json={"inputs": {}}, headers={**SSE, **JSON_BODY}, timeout=30
    ) as response:
        run_id = response.headers["x-run-id"]
        seen = [f for f, _ in zip(iter_frames(response.iter_text()), range(8), strict=False) if "id" in f]
    left = time.perf_counter()
    after = int(seen[-1]["id"].rpartition(":")[2])
    return (asyncio.run(_first_done(redis_url, run_id, after)) - left) * 1000


def _redelivery_s(server_url: str, redis_url: str, workers: dict[str, WorkerProcess]) -> float:
    """SIGKILL the worker holding a run mid-step; seconds until the step restarts on the other one."""
    import redis

    sync = redis.Redis.from_url(redis_url)
    with httpx.stream(
        "POST",
        f"{server_url}/workflows/slow/run?resumable=true",
        json={"inputs": {}},
        headers={**SSE, **JSON_BODY},
        timeout=60,
    ) as response:
        run_id = response.headers["x-run-id"]
        frames = iter_frames(response.iter_text())
        for frame in frames:
            if frame.get("event") == "delta" and '"step":"second"' in frame["data"]:
                break
        victim = workers[holder(sync, run_id)]
        victim.kill()
        killed = time.perf_counter()
        for frame in frames:
            if frame.get("event") == "step_started" and '"attempt":2' in frame["data"]:
                took = time.perf_counter() - killed
                break
        else:
            raise RuntimeError("the run was not redelivered")
    httpx.delete(f"{server_url}/runs/{run_id}", timeout=10)
    victim.start()
    sync.close()
    return took


def measure(runs: int = RUNS, chunks: int = CHUNKS, repeats: int = REPEATS) -> dict[str, Any]:
    """Medians over `repeats`: events/s with 1 and 2 workers, resume, cancel and redelivery latency."""
    server = RedisServer().start()
    folder = Path(tempfile.mkdtemp(prefix="pipeline-ex-bench-"))
    _workflows(folder, chunks)
    deployment = Deployment(server.url)
    workers = {name: WorkerProcess(server.url, folder, name, "--concurrency", str(SLOTS)) for name in ("w1", "w2")}
    serving = None
    try:
        workers["w1"].start()
        pids = [workers["w1"].process.pid]  # type: ignore[union-attr]
        paced_one = [_load(deployment, folder, PACED_RUNS, "paced", pids) for _ in range(repeats)]
        one = [_load(deployment, folder, runs, "load", pids) for _ in range(repeats)]
        workers["w2"].start()
        pids.append(workers["w2"].process.pid)  # type: ignore[union-attr]
        paced_two = [_load(deployment, folder, PACED_RUNS, "paced", pids) for _ in range(repeats)]
        two = [_load(deployment, folder, runs, "load", pids) for _ in range(repeats)]
        serving = replica(server.url, folder, "bench")
        resume = [_resume_ms(serving.url) for _ in range(max(repeats, 5) * 4)]
        cancel = [_cancel_ms(serving.url, server.url) for _ in range(max(repeats, 5) * 4)]
        redelivery = [_redelivery_s(serving.url, server.url, workers) for _ in range(repeats)]
    finally:
        if serving is not None:
            serving.stop()
        for worker in workers.values():
            worker.stop()
        server.stop()
    median = statistics.median
    return {
        "runs": runs,
        "chunks": chunks,
        "cores": os.cpu_count() or 0,
        "paced events/s, 1 worker": median(r for r, _ in paced_one),
        "paced events/s, 2 workers": median(r for r, _ in paced_two),
        "paced scaling": median(r for r, _ in paced_two) / median(r for r, _ in paced_one),
        "CPU-bound events/s, 1 worker": median(r for r, _ in one),
        "CPU-bound events/s, 2 workers": median(r for r, _ in two),
        "CPU-bound scaling": median(r for r, _ in two) / median(r for r, _ in one),
        "worker CPU µs/event, 1 worker": median(c for _, c in one),
        "worker CPU µs/event, 2 workers": median(c for _, c in two),
        "resume, ms to first event": statistics.median(resume),
        "resume max, ms": max(resume),
        "cancel, ms to Done(cancelled)": statistics.median(cancel),
        "cancel max, ms": max(cancel),
        "redelivery after SIGKILL, s": statistics.median(redelivery),
    }


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    options = parser.parse_args()
    results = measure(options.runs, options.chunks, options.repeats)
    for name, value in results.items():
        print(f"{name:<34} {value:10.2f}" if isinstance(value, float) else f"{name:<34} {value:>10}")
    scaled = "met" if results["paced scaling"] >= SCALING_TARGET else "NOT met"
    print(f"target: 2 workers ≥ {SCALING_TARGET}× 1 worker (paced load): {scaled}")
    cancelled = "met" if results["cancel, ms to Done(cancelled)"] <= CANCEL_TARGET_MS else "NOT met"
    print(f"target: cancel ≤ {CANCEL_TARGET_MS:.0f} ms: {cancelled}")


if __name__ == "__main__":
    main()
