"""Prometheus metrics of `pipeline-ex serve`, served at `GET /metrics` (prometheus-client).

Every app has its own `CollectorRegistry` (never prometheus-client's global one), so two apps in one
process keep separate counts. The metrics, all prefixed `pipeline_ex_`:

- `runs_total{workflow, status}` (counter): runs that ended, by how (`ok`, `failed`, `cancelled`, as
  `GET /runs` says it).
- `active_runs` (gauge): runs started and not ended (with `--redis`, across the deployment), read when
  scraped.
- `active_streams{stream}` (gauge): responses streaming a run right now: `run` (SSE from
  `POST /workflows/{name}/run`), `text` (its `text/plain` answer), `resume` (`GET /runs/{run_id}/events`),
  `chat` (streamed chat completions).
- `events_sent_total{stream}` (counter): run events the responses sent on (`chat` counts non-streamed
  chat completions too); `rate()` of it is the events per second.
- `time_to_first_token_seconds{workflow, provider}` and `step_duration_seconds{workflow, provider}`
  (histograms): from each LLM step's `Done` (`ttft_ms`, when a token came; `duration_ms`, always).
- `admission_rejections_total{reason}` (counter): requests refused before a run could start or a route
  could answer: `max_concurrent_runs` and `max_runs` (429), `max_body` (413), `read_timeout` (408, a body
  too slow), `host` (400, DNS rebinding), `origin` (403, another site), `bearer_token` (401).
- `process_*`: the CPU time, memory and file descriptors of the server process.

Labels stay bounded: workflow names come from the served folder (a request naming another gets 404 before
anything is counted), providers from the workflows, and there is no run id or step path (a `for_each`
step's path carries its item's index, so it would grow with the data).

With `--redis` the runs run on the workers (which serve no metrics), so a replica counts what it sees:
the `Done` events and the ends of the runs it started, as its responses follow them, and the events
it sends; `active_runs` is the deployment's. A connection closed by the request-head deadline
(`server.http`, below the app) is not counted among the rejections.

Nothing here is called per event: a step is recorded at its `Done`, a run when it ends, and the events a
response sends are counted in a local variable and added to the counter at each `Done` and when the
response ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline_ex.events import Done

__all__ = ["CONTENT_TYPE", "RUN_STATUSES", "STREAMS", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of `GET /metrics` (Prometheus' text exposition format)."""

RUN_STATUSES = ("ok", "failed", "cancelled")
"""How a run can end (the `status` label of `runs_total`)."""

Stream = Literal["run", "text", "resume", "chat"]
STREAMS: tuple[Stream, ...] = ("run", "text", "resume", "chat")
"""The kinds of responses that stream a run (the `stream` label)."""

REJECTION_REASONS = ("max_concurrent_runs", "max_runs", "max_body", "read_timeout", "host", "origin", "bearer_token")
"""Why a request can be refused (the `reason` label of `admission_rejections_total`)."""

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Seconds to a first token: tens of milliseconds for a warm local model, seconds for a loaded API or a cold load."""

STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds an LLM step takes: from a short answer to a long generation (up to ten minutes)."""


class EventCounter:
    """The `events_sent_total` counter of one kind of stream (its prometheus child, looked up once)."""

    def __init__(self, child: Any) -> None:
        self._child = child

    def add(self, count: int) -> None:
        """Add `count` events sent (called per step and at the end of a response, never per event)."""
        if count:
            self._child.inc(count)


class ServerMetrics:
    """The metrics of one server app, in a registry of its own (see the module docstring).

    :param workflows: the names of the workflows served: their `runs_total` series start at 0, so
        `rate()` and `increase()` work from the first scrape.
    """

    def __init__(self, workflows: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.runs = Counter(
            "pipeline_ex_runs", "Runs that ended, by workflow and status.", ["workflow", "status"], registry=registry
        )
        self.active_runs = Gauge(
            "pipeline_ex_active_runs",
            "Runs started and not ended yet (with --redis, across the deployment).",
            registry=registry,
        )
        self.active_streams = Gauge(
            "pipeline_ex_active_streams", "Responses streaming a run right now.", ["stream"], registry=registry
        )
        self.events_sent = Counter(
            "pipeline_ex_events_sent", "Run events sent on by the responses.", ["stream"], registry=registry
        )
        self.ttft = Histogram(
            "pipeline_ex_time_to_first_token_seconds",
            "Time from an LLM step's start to its first token.",
            ["workflow", "provider"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.step_duration = Histogram(
            "pipeline_ex_step_duration_seconds",
            "How long LLM steps took, from start to Done (failed and cancelled ones too).",
            ["workflow", "provider"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.rejections = Counter(
            "pipeline_ex_admission_rejections",
            "Requests refused by an admission limit or the request guards, by reason.",
            ["reason"],
            registry=registry,
        )
        ProcessCollector(registry=registry)
        # The labelled children, looked up once (prometheus-client's `labels()` costs microseconds).
        self._runs: dict[tuple[str, str], Any] = {}
        self._steps: dict[tuple[str, str], tuple[Any, Any]] = {}
        for name in workflows:
            for status in RUN_STATUSES:
                self._runs[name, status] = self.runs.labels(name, status)
        self._streams = {stream: self.active_streams.labels(stream) for stream in STREAMS}
        self._events = {stream: EventCounter(self.events_sent.labels(stream)) for stream in STREAMS}
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)

    # -- recording (per step, per run, per response) -----------------------------------------------------

    def step_done(self, workflow: str, done: Done) -> None:
        """Record an LLM step's `Done`: its duration, and its time to first token if a token came."""
        key = (workflow, done.response.provider)
        children = self._steps.get(key)
        if children is None:
            children = self._steps[key] = (self.step_duration.labels(*key), self.ttft.labels(*key))
        children[0].observe(done.duration_ms / 1000)
        if done.ttft_ms is not None:
            children[1].observe(done.ttft_ms / 1000)

    def run_ended(self, workflow: str, status: str) -> None:
        """Count a run that ended (`ok`, `failed` or `cancelled`)."""
        child = self._runs.get((workflow, status))
        if child is None:
            child = self._runs[workflow, status] = self.runs.labels(workflow, status)
        child.inc()

    def rejected(self, reason: str) -> None:
        """Count a refused request (one of `REJECTION_REASONS`)."""
        self.rejections.labels(reason).inc()

    @contextmanager
    def streaming(self, stream: Stream) -> Iterator[None]:
        """Count a response in `active_streams` for as long as it streams."""
        gauge = self._streams[stream]
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def events(self, stream: Stream) -> EventCounter:
        """The `events_sent_total` counter of a kind of stream."""
        return self._events[stream]

    # -- exposition --------------------------------------------------------------------------------------

    def exposition(self, active_runs: int) -> bytes:
        """The metrics in Prometheus' text format, with `active_runs` as just read."""
        self.active_runs.set(active_runs)
        return generate_latest(self.registry)
