"""`GET /metrics` of `pipeline-ex serve`: scraped from a real server process and parsed with prometheus-client.

The runs are real (mock provider) and their counts are known: some succeed, one fails, one is cancelled
by its client leaving, one is refused by `--max-concurrent-runs`. Every figure the metrics give is checked
against what the clients received: runs by status, rejections, the step histograms' counts (one per
`Done`), the time-to-first-token sum (the `Done` events' `ttft_ms`) and the events sent.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deployment_kit import WorkerProcess, replica
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis_kit import RedisServer
from server_kit import (
    FAST_CHUNKS,
    JSON_BODY,
    PROMPT,
    SSE,
    TEXT,
    CliServer,
    TimedRegistry,
    assert_error,
    iter_frames,
    mock_step,
    run_events_of,
    serving,
    write_workflows,
)

from pipeline_ex import Done
from pipeline_ex.events import RunEvent
from pipeline_ex.server.metrics import CONTENT_TYPE

pytestmark = pytest.mark.streaming

WORKFLOWS: dict[str, dict[str, Any]] = {
    "fast": {"inputs": PROMPT, "steps": [mock_step(chunks=FAST_CHUNKS)]},
    "two_steps": {
        "inputs": PROMPT,
        "steps": [mock_step("draft", ["Draft ", "text."]), mock_step("final", ["Polished."])],
    },
    "fail": {"inputs": PROMPT, "steps": [mock_step(chunks=["one ", "two ", "three"], error_after=2)]},
    "waits": {"inputs": PROMPT, "steps": [mock_step(chunks=["late"], delay_ms=5000)]},  # quiet for 5 s after it starts
}
TOKEN = "metrics-test-token"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflows above, one file each."""
    root = tmp_path_factory.mktemp("metrics") / "workflows"
    root.mkdir()
    for name, body in WORKFLOWS.items():
        (root / f"{name}.yaml").write_text(json.dumps({"workflow": {"name": name, **body}}))  # JSON is YAML
    return root


@pytest.fixture
def server(folder: Path, tmp_path: Path) -> Iterator[CliServer]:
    """`pipeline-ex serve --mock --max-concurrent-runs 1` on the workflows above (no API key)."""
    running = CliServer(
        ["--workflows", str(folder), "--mock", "--max-concurrent-runs", "1"],
        tmp_path / "serve.log",
        env={"PIPELINE_SERVER_API_KEY": ""},
    ).start()
    yield running
    running.stop()


def scrape(http: httpx.Client, **headers: str) -> dict[str, list[Sample]]:
    """`GET /metrics`, parsed with prometheus-client's own parser: the samples of each family by name."""
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, list[Sample]], family: str, sample: str, **labels: str) -> float:
    """The value of the one sample of `family` named `sample` with exactly these labels (0 if absent)."""
    found = [s.value for s in families[family] if s.name == sample and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def total(families: dict[str, list[Sample]], family: str, sample: str, **labels: str) -> float:
    """The sum of the samples of `family` named `sample` whose labels include these."""
    return sum(
        s.value for s in families[family] if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def counts(families: dict[str, list[Sample]], counter: str, *labels: str) -> dict[Any, float]:
    """A counter's `_total` samples by their label values (one label: by its value; several: by a tuple)."""
    found: dict[Any, float] = {}
    for s in families[counter]:
        if s.name == f"{counter}_total":
            key = tuple(s.labels[name] for name in labels)
            found[key[0] if len(key) == 1 else key] = s.value
    return found


def stream_run(http: httpx.Client, workflow: str) -> list[RunEvent]:
    """Run a workflow over SSE to its end; the run events received."""
    with http.stream("POST", f"/workflows/{workflow}/run", json={}, headers=SSE) as response:
        assert response.status_code == 200
        return run_events_of(list(iter_frames(response.iter_text())))


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_metrics_count_runs_steps_events_streams_and_rejections(server: CliServer) -> None:
    received: dict[str, list[RunEvent]] = {"run": [], "resume": []}
    workflow_of: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=20) as http:
        before = scrape(http)
        assert value(before, "pipeline_ex_runs", "pipeline_ex_runs_total", workflow="fast", status="ok") == 0
        assert value(before, "pipeline_ex_active_runs", "pipeline_ex_active_runs") == 0

        for workflow in ("fast", "fast", "two_steps", "fail"):
            events = stream_run(http, workflow)
            workflow_of[events[0].run_id] = workflow
            received["run"] += events

        # A run held open: quiet for 5 s after its step started, so every frame sent has been read.
        held = http.send(http.build_request("POST", "/workflows/waits/run", json={}, headers=SSE), stream=True)
        run_id = held.headers["x-run-id"]
        workflow_of[run_id] = "waits"
        frames = iter_frames(held.iter_text())  # kept: a generator closed early would close the response
        for frame in frames:
            received["run"] += run_events_of([frame])
            if frame.get("event") == "step_started":
                break
        open_now = scrape(http)
        assert value(open_now, "pipeline_ex_active_streams", "pipeline_ex_active_streams", stream="run") == 1
        assert value(open_now, "pipeline_ex_active_runs", "pipeline_ex_active_runs") == 1
        assert_error(http.post("/workflows/fast/run", json={}), 429)  # --max-concurrent-runs 1
        held.close()  # the client leaves: the run is cancelled

        def cancelled() -> bool:
            runs = {run["run_id"]: run["status"] for run in http.get("/runs").json()["runs"]}
            return bool(runs[run_id] == "cancelled")

        wait_for(cancelled, "the abandoned run to be cancelled")
        last_seen = received["run"][-1].seq  # the rest of it (its cancelled Done...) through a resume
        resume_headers = {**SSE, "Last-Event-ID": f"{run_id}:{last_seen}"}
        with http.stream("GET", f"/runs/{run_id}/events", headers=resume_headers) as resumed:
            received["resume"] = run_events_of(list(iter_frames(resumed.iter_text())))
        assert received["resume"] and received["resume"][-1].type == "run_finished"

        def streams_closed() -> bool:
            return total(scrape(http), "pipeline_ex_active_streams", "pipeline_ex_active_streams") == 0

        wait_for(streams_closed, "the streams to be counted as closed")
        after = scrape(http)

    runs = counts(after, "pipeline_ex_runs", "workflow", "status")
    expected_runs = {(name, status): 0.0 for name in WORKFLOWS for status in ("ok", "failed", "cancelled")}
    expected_runs |= {("fast", "ok"): 2, ("two_steps", "ok"): 1, ("fail", "failed"): 1, ("waits", "cancelled"): 1}
    assert runs == expected_runs

    rejections = counts(after, "pipeline_ex_admission_rejections", "reason")
    assert rejections["max_concurrent_runs"] == 1 and sum(rejections.values()) == 1
    assert value(after, "pipeline_ex_active_runs", "pipeline_ex_active_runs") == 0

    for stream, events in received.items():
        assert value(after, "pipeline_ex_events_sent", "pipeline_ex_events_sent_total", stream=stream) == len(events)
    assert value(after, "pipeline_ex_events_sent", "pipeline_ex_events_sent_total", stream="chat") == 0

    dones = [event for events in received.values() for event in events if isinstance(event, Done)]
    assert len(dones) == 1 + 1 + 2 + 1 + 1  # the cancelled run's Done came through the resumed stream
    histogram = "pipeline_ex_step_duration_seconds"
    ttft = "pipeline_ex_time_to_first_token_seconds"
    for name in WORKFLOWS:
        steps = [d for d in dones if workflow_of[d.run_id] == name]
        assert value(after, histogram, f"{histogram}_count", workflow=name, provider="mock") == len(steps), name
        assert value(after, histogram, f"{histogram}_sum", workflow=name, provider="mock") == pytest.approx(
            sum(d.duration_ms for d in steps) / 1000
        )
        with_token = [d.ttft_ms for d in steps if d.ttft_ms is not None]
        assert value(after, ttft, f"{ttft}_count", workflow=name, provider="mock") == len(with_token), name
        assert value(after, ttft, f"{ttft}_sum", workflow=name, provider="mock") == pytest.approx(
            sum(with_token) / 1000
        )
    assert sum(d.ttft_ms is not None for d in dones) == 5  # every step but the cancelled one, which got no token
    assert total(after, histogram, f"{histogram}_count") == len(dones)
    assert total(after, ttft, f"{ttft}_count") == 5
    largest = [s for s in after[histogram] if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert sum(s.value for s in largest) == len(dones)
    assert {label for s in after[histogram] for label in s.labels} == {"workflow", "provider", "le"}


GUARDED_PATHS = ("/metrics", "/workflows")


def test_metrics_are_behind_the_same_guards_and_token_as_the_api(folder: Path, tmp_path: Path) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    running = CliServer(
        ["--workflows", str(folder), "--mock"], tmp_path / "serve.log", env={"PIPELINE_SERVER_API_KEY": TOKEN}
    ).start(bearer)
    try:
        refusals = [
            (403, {**bearer, "Origin": "http://evil.example"}),
            (403, {**bearer, "Sec-Fetch-Site": "cross-site"}),
            (400, {**bearer, "Host": "evil.example"}),  # DNS rebinding
            (401, {}),
            (401, {"Authorization": "Bearer not-the-token"}),
        ]
        with httpx.Client(base_url=running.url, timeout=20) as http:
            answers = {
                path: [assert_error(http.get(path, headers=headers), status) for status, headers in refusals]
                for path in GUARDED_PATHS
            }
            assert_error(http.post("/metrics", headers=bearer), 405)
            assert http.get("/workflows", headers=bearer).status_code == 200
            families = scrape(http, **bearer)
    finally:
        running.stop()
    for metrics_answer, api_answer in zip(answers["/metrics"], answers["/workflows"], strict=True):
        assert metrics_answer == api_answer  # refused the same way, in the same words
    rejections = counts(families, "pipeline_ex_admission_rejections", "reason")
    assert rejections == {
        "origin": 4,
        "host": 2,
        "bearer_token": 4,
        "max_concurrent_runs": 0,
        "max_runs": 0,
        "max_body": 0,
        "read_timeout": 0,
    }


def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    folder = write_workflows(tmp_path / "workflows", ["fast"])
    registry = TimedRegistry()
    with serving(folder, registry=registry) as first, serving(folder) as second:
        with httpx.Client(base_url=first.url, timeout=20) as http:
            assert http.post("/workflows/fast/run", json={}, headers=TEXT).text == "".join(FAST_CHUNKS)
            text_run = registry.recent(1)[0]["run_id"]
            chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
            assert http.post("/v1/chat/completions", json=chat).status_code == 200
            chat_run = registry.recent(1)[0]["run_id"]
            assert http.post("/workflows/fast/run", json={}).status_code == 200  # JSON: no events sent
            registry.wait_finished([text_run, chat_run])
            families = scrape(http)
        with httpx.Client(base_url=second.url, timeout=20) as http:
            untouched = scrape(http)
    assert value(families, "pipeline_ex_runs", "pipeline_ex_runs_total", workflow="fast", status="ok") == 3
    sent = counts(families, "pipeline_ex_events_sent", "stream")
    assert sent == {
        "run": 0,
        "resume": 0,
        "text": len(registry.events(text_run)),
        "chat": len(registry.events(chat_run)),
    }
    assert sent["text"] > len(FAST_CHUNKS)  # lifecycle events and the Done too, not only the text
    histogram = "pipeline_ex_step_duration_seconds"
    assert value(families, histogram, f"{histogram}_count", workflow="fast", provider="mock") == 3
    assert value(untouched, "pipeline_ex_runs", "pipeline_ex_runs_total", workflow="fast", status="ok") == 0
    assert total(untouched, histogram, f"{histogram}_count") == 0
    assert total(untouched, "pipeline_ex_events_sent", "pipeline_ex_events_sent_total") == 0


# -- a serve --redis replica ---------------------------------------------------------------------------


@pytest.fixture
def deployment(folder: Path, tmp_path: Path) -> Iterator[CliServer]:
    """A Redis of its own, one `pipeline-ex worker` and one replica with `--max-concurrent-runs 1`."""
    project = tmp_path / "project"
    shutil.copytree(folder, project / "workflows")
    store = RedisServer().start()
    worker = WorkerProcess(store.url, project, "metrics-worker")
    server: CliServer | None = None
    try:
        worker.start()
        server = replica(store.url, project, "metrics", "--mock", "--max-concurrent-runs", "1")
        yield server
    finally:
        if server is not None:
            server.stop()
        worker.stop()
        store.stop()


def test_a_redis_replica_reports_the_runs_it_started_and_followed(deployment: CliServer) -> None:
    received: list[RunEvent] = []
    with httpx.Client(base_url=deployment.url, timeout=30) as http:
        for workflow in ("fast", "fail"):
            received += stream_run(http, workflow)
        answer = http.post("/workflows/two_steps/run", json={})  # JSON: the replica waits for its end
        assert answer.status_code == 200, answer.text

        held = http.send(http.build_request("POST", "/workflows/waits/run", json={}, headers=SSE), stream=True)
        frames = iter_frames(held.iter_text())  # kept: a generator closed early would close the response
        for frame in frames:
            received += run_events_of([frame])
            if frame.get("event") == "step_started":
                break
        open_now = scrape(http)
        assert value(open_now, "pipeline_ex_active_runs", "pipeline_ex_active_runs") == 1  # the deployment's
        assert value(open_now, "pipeline_ex_active_streams", "pipeline_ex_active_streams", stream="run") == 1
        assert_error(http.post("/workflows/fast/run", json={}), 429)
        held.close()  # cancels the run on its worker; this replica no longer follows it

        wait_for(
            lambda: value(scrape(http), "pipeline_ex_active_runs", "pipeline_ex_active_runs") == 0, "the run's end"
        )
        after = scrape(http)

    runs = counts(after, "pipeline_ex_runs", "workflow", "status")
    assert {key: count for key, count in runs.items() if count} == {
        ("fast", "ok"): 1,
        ("fail", "failed"): 1,
        ("two_steps", "ok"): 1,
    }
    rejections = counts(after, "pipeline_ex_admission_rejections", "reason")
    assert rejections["max_concurrent_runs"] == 1 and sum(rejections.values()) == 1
    assert value(after, "pipeline_ex_events_sent", "pipeline_ex_events_sent_total", stream="run") == len(received)
    histogram = "pipeline_ex_step_duration_seconds"
    steps = {s.labels["workflow"]: s.value for s in after[histogram] if s.name == f"{histogram}_count"}
    assert steps == {"fast": 1, "fail": 1, "two_steps": 2}  # the abandoned run's Done came after its client left
    dones = [event for event in received if isinstance(event, Done)]
    ttft = "pipeline_ex_time_to_first_token_seconds"
    assert value(after, ttft, f"{ttft}_sum", workflow="fast", provider="mock") == pytest.approx(
        sum(d.ttft_ms for d in dones if d.ttft_ms is not None and d.run_id == received[0].run_id) / 1000
    )


def test_body_limits_are_counted_as_rejections(tmp_path: Path) -> None:
    folder = write_workflows(tmp_path / "workflows", ["fast"])

    def stalled_body() -> Iterator[bytes]:
        yield b'{"inputs": '
        time.sleep(1.0)  # longer than the read timeout: the server gives up first
        yield b"{}}"

    with (
        serving(folder, max_body=64, read_timeout=0.3) as running,
        httpx.Client(base_url=running.url, timeout=20) as http,
    ):
        assert_error(http.post("/workflows/fast/run", json={"inputs": {"prompt": "x" * 100}}), 413)
        stalled = http.post("/workflows/fast/run", content=stalled_body(), headers=JSON_BODY)
        assert_error(stalled, 408)
        assert_error(http.post("/workflows/fast/run", content=b"{", headers=JSON_BODY), 400)  # malformed: no limit hit
        rejections = counts(scrape(http), "pipeline_ex_admission_rejections", "reason")
    assert {reason: count for reason, count in rejections.items() if count} == {"max_body": 1, "read_timeout": 1}
