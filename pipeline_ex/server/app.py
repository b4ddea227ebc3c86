"""The HTTP API of `pipeline-ex serve`, on Starlette.

- `GET /workflows`: the workflows and their inputs.
- `POST /workflows/{name}/run` with `{"inputs": {...}}`: SSE for `Accept: text/event-stream`, the text
  alone for `text/plain`, the final results for `application/json` (the default).
- `GET /runs/{run_id}/events` with `Last-Event-ID: <run_id>:<seq>`: the events after `seq` from the
  run's in-memory log (then live, if the run is still going); dropped events are reported as a gap.
  A finished run's `end` frame has the id `<run_id>:end`; resuming with it, or after the last event of a
  run that succeeded, answers `204 No Content`, which stops a browser `EventSource` from reconnecting.
  SSE streams start with a `retry:` field.
- `GET /runs`: the newest runs (`?limit=N`, 100 by default), with their workflow and status.
- `DELETE /runs/{run_id}`: cancel a run that is still going; its streams get the cancelled `done`,
  `step_finished` and `run_finished` frames and then the `error` frame. Answers `{"run_id", "status"}`
  once the run has ended (`cancelled`, or how it had already ended), `202` with `cancelling` if it takes
  longer than a few seconds.
- `POST /v1/chat/completions`: OpenAI-compatible; `model` is the workflow name. `GET /v1/models` lists
  the workflows as models.
- `GET /healthz`: liveness, with the number of workflows served.
- `GET /metrics`: Prometheus metrics (see `metrics`), behind the same guards and bearer token as the API.
- `GET /`: a page to pick a workflow, fill in its inputs and watch the tokens stream, one panel per step
  instance (those that run at the same time side by side), with a Stop button (`DELETE /runs/{run_id}`).

SSE frames carry every event of a run under its own name: `delta` and `done`, and the lifecycle events
`step_started` (every step, groups included), `step_finished` and `run_finished` (the last event of a
run), each with its `id: <run_id>:<seq>`, so they are resumed and reported in gaps like the others. The
JSON, plain-text and chat completion answers are made from the same events and leave the lifecycle ones
out.

Requests carry inputs only: they can never choose handlers, providers or models. When a streaming
client disconnects, its run is cancelled (the provider stream closes), unless it asked for
`?resumable=true`, in which case the run goes on and can be followed again through `/runs/...` (and
cancelled with `DELETE /runs/{run_id}`).

Guards (see `security`): loopback `Host` values only unless widened, no requests from other sites, JSON
bodies only for runs, bounded bodies read within a deadline; at most `max_concurrent_runs` runs at once
(429 with `Retry-After` beyond). Every client-visible error goes through `sse.error_payload()` or
`_error()`, names paths relative to the workflows folder, and a failed run's error carries the reference
id its log line has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Done, RunEvent
from pipeline_ex.gaps import Gap
from pipeline_ex.redaction import redact_text, redacting_logger, register_secret
from pipeline_ex.server import openai_api, split_hosts
from pipeline_ex.server.body_send import StreamingApp
from pipeline_ex.server.catalog import WorkflowCatalog
from pipeline_ex.server.http import DEFAULT_READ_TIMEOUT
from pipeline_ex.server.metrics import CONTENT_TYPE, ServerMetrics, Stream
from pipeline_ex.server.page import PAGE
from pipeline_ex.server.public_events import PathScrubber, failure_payload, new_reference
from pipeline_ex.server.runs import RegistryFull, RunLog, RunRegistry, new_run_id
from pipeline_ex.server.security import (
    ALLOWED_HOSTS_ENV,
    API_KEY_ENV,
    DEFAULT_MAX_BODY,
    BrowserGuard,
    RequestRejected,
    check_bearer,
    parse_last_event_id,
    read_json_body,
)
from pipeline_ex.server.sse_response import RunFrames, RunSSEResponse
from pipeline_ex.sse import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RETRY_MS,
    HEADERS,
    MEDIA_TYPE,
    end_frame,
    error_frame,
    event_frame,
    gap_frame,
    retry_frame,
    text_chunks,
    with_keepalive,
)
from pipeline_ex.workflow.loader import LoadedWorkflow
from pipeline_ex.workflow.runner import InputError, resolve_inputs

logger = redacting_logger("pipeline_ex.server")  # failures may quote a secret the process holds
REDIS_URL_ENV = "PIPELINE_REDIS_URL"  # pipeline_ex.distributed.deployment's, without importing redis here


class RunStreamResponse(StreamingResponse):
    """A `StreamingResponse` that notices a disconnect at once and always closes its body.

    Starlette's own response relies on a failing `send` to notice a client that left when the server
    speaks ASGI 2.4, so an idle stream would go on until its next chunk, and the abandoned body iterator
    would only be closed when garbage collected. Here a task watches for `http.disconnect` the whole
    time, and the body iterator is closed as soon as the response ends, which cancels the run.
    `streaming` is entered for as long as the response streams (the metrics' count of active streams).
    It serves the plain-text and chat streams and the runs of a deployment (`--redis`); the SSE of a run
    in this process is `RunSSEResponse`'s, which reads the run's log directly.
    """

    def __init__(
        self,
        *args: Any,
        on_close: Callable[[], None] | None = None,
        streaming: AbstractContextManager[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close
        self.streaming = streaming or contextlib.nullcontext()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the body until it ends or the client disconnects; then close the body iterator."""
        with self.streaming:
            await self._stream(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                with contextlib.suppress(OSError):  # the client went away while we were sending
                    await self.stream_response(send)
                group.cancel_scope.cancel()
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
            if self.on_close is not None:
                self.on_close()


DEFAULT_MAX_CONCURRENT_RUNS = 1024
RETRY_AFTER_SECONDS = 2
CANCEL_WAIT_SECONDS = 5.0
DEFAULT_RUNS_LISTED = 100
MAX_RUNS_LISTED = 1000
"""How long `DELETE /runs/{run_id}` waits for the cancelled run to end before answering 202."""
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def _error(
    status: int,
    message: str,
    kind: str = "request",
    *,
    headers: dict[str, str] | None = None,
    reference: str | None = None,
) -> JSONResponse:
    """The server's JSON error response: `{"error": {"type", "message"[, "reference"]}}`, redacted."""
    error: dict[str, Any] = {"type": kind, "message": redact_text(message)}
    if reference is not None:
        error["reference"] = reference
    return JSONResponse({"error": error}, status_code=status, headers=headers)


class PipelineServer:
    """The state behind the routes: workflows, runs and settings."""

    def __init__(
        self,
        catalog: WorkflowCatalog,
        *,
        folder: Path,
        mock: bool,
        api_key: str | None,
        max_body: int,
        keepalive: float,
        registry: RunRegistry,
        max_concurrent_runs: int,
        read_timeout: float | None,
        retry_ms: int,
        metrics: ServerMetrics,
        remote: Any = None,
    ) -> None:
        self.catalog = catalog
        self.metrics = metrics
        self.remote = remote
        """The deployment's runs (`RemoteRunRegistry`) with `--redis`; None for runs in this process."""
        self.mock = mock
        self.api_key = api_key
        self.max_body = max_body
        self.keepalive = keepalive
        self.registry = registry
        self.max_concurrent_runs = max_concurrent_runs
        self.read_timeout = read_timeout
        self.retry_ms = retry_ms
        self.scrub = PathScrubber(folder)
        self.started = int(time.time())

    # -- helpers -----------------------------------------------------------------------------------

    def error_response(self, status: int, message: str, kind: str = "request", **options: Any) -> JSONResponse:
        """`_error()`, with the server's paths scrubbed from the message."""
        return _error(status, self.scrub.text(message), kind, **options)

    def describe(self, error: BaseException, reference: str | None = None) -> dict[str, Any]:
        """What a client is told about a failed run: `error_payload()`, paths scrubbed, with its reference."""
        return failure_payload(error, self.scrub, reference)

    def _describe_run(self, log: RunLog) -> Callable[[BaseException], dict[str, Any]]:
        return lambda error: self.describe(error, log.reference)

    def _workflow(self, name: str) -> LoadedWorkflow:
        loaded = self.catalog.workflows.get(name)
        if loaded is None:
            raise RequestRejected(404, f"no workflow named {name!r}; GET /workflows lists them")
        return loaded

    async def _body(self, request: Request) -> Any:
        return await read_json_body(request, self.max_body, self.read_timeout)

    async def _run_request(self, request: Request, loaded: LoadedWorkflow) -> dict[str, Any]:
        body = await self._body(request)
        if not isinstance(body, dict) or set(body) - {"inputs"}:
            raise RequestRejected(422, 'the body must be {"inputs": {...}}; nothing else can be set per request')
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict) or any(value is None for value in inputs.values()):
            raise RequestRejected(
                422,
                "'inputs' must map input names to values (text, numbers, booleans, and lists or objects for "
                "inputs of those types); leave an input out to take its default",
            )
        try:
            return resolve_inputs(loaded, inputs)
        except InputError as error:
            raise RequestRejected(422, str(error)) from None

    async def _start(self, loaded: LoadedWorkflow, inputs: dict[str, Any], run_id: str, hold: bool = True) -> Any:
        """Admit and start a run (or enqueue it for the workers), or refuse it with 429.

        With `hold`, its log keeps every event for the response that started it, until that response has
        read them (or ends).
        """
        busy = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self.remote is not None:
            from pipeline_ex.distributed.remote_runs import AdmissionRefused

            try:
                return await self.remote.start(
                    loaded,
                    inputs,
                    mock=self.mock,
                    run_id=run_id,
                    max_active=self.max_concurrent_runs,
                    observer=self.metrics,
                )
            except AdmissionRefused as error:
                raise RequestRejected(
                    429,
                    f"{error}; retry later (pipeline-ex serve --max-concurrent-runs raises the limit)",
                    headers=busy,
                    reason="max_concurrent_runs",
                ) from None
        if self.registry.active >= self.max_concurrent_runs:
            raise RequestRejected(
                429,
                f"the server is already running {self.max_concurrent_runs} runs; retry later "
                "(pipeline-ex serve --max-concurrent-runs raises the limit)",
                headers=busy,
                reason="max_concurrent_runs",
            )
        try:
            return self.registry.start(
                loaded, inputs, mock=self.mock, run_id=run_id, hold=hold, scrub=self.scrub.text, observer=self.metrics
            )
        except RegistryFull as error:
            raise RequestRejected(
                429,
                f"{error}; retry later (pipeline-ex serve --max-runs raises the limit)",
                headers=busy,
                reason="max_runs",
            ) from None

    async def _find(self, run_id: str) -> Any:
        """The run's log (here or in the deployment), or 404."""
        log = await self.remote.find(run_id) if self.remote is not None else self.registry.get(run_id)
        if log is None:
            raise RequestRejected(404, f"no run {run_id!r} is kept by this server")
        return log

    def _run_sse(
        self,
        log: RunLog,
        after_seq: int,
        *,
        cancel_on_exit: bool,
        headers: dict[str, str],
        primary: bool = False,
        stream: Stream = "run",
    ) -> RunSSEResponse:
        """The SSE response of a run of this process (`_frames`' frames, sent in batches)."""
        frames = RunFrames(
            log,
            after_seq,
            primary=primary,
            cancel_on_exit=cancel_on_exit,
            retry_ms=self.retry_ms,
            counter=self.metrics.events(stream),
            describe=self._describe_run(log),
        )
        return RunSSEResponse(
            frames,
            keepalive=self.keepalive,
            headers=headers,
            on_close=log.release if primary else None,
            streaming=self.metrics.streaming(stream),
        )

    async def _frames(
        self, log: RunLog, after_seq: int, cancel_on_exit: bool, primary: bool = False, stream: Stream = "run"
    ) -> AsyncIterator[str]:
        yield retry_frame(self.retry_ms)
        counter = self.metrics.events(stream)
        sent = 0  # events sent since the counter was last added to (at each Done: never per event)
        try:
            async for item in log.follow(after_seq, primary=primary):
                if isinstance(item, Gap):
                    yield gap_frame(item.first_seq, item.last_seq)
                    continue
                yield event_frame(item)
                sent += 1  # counted once the frame was taken to be sent
                if type(item) is Done:
                    counter.add(sent)
                    sent = 0
        except asyncio.CancelledError:
            raise
        except Exception as error:
            yield error_frame(error, self.describe(error, log.reference))
        finally:
            counter.add(sent)
            if cancel_on_exit and not log.finished:
                log.cancel()  # the client is gone: stop the provider stream now
        yield end_frame(log.run_id, finished=log.finished)

    async def _text(self, log: RunLog) -> AsyncIterator[str]:
        try:
            async for chunk in text_chunks(self._events(log, "text"), self._describe_run(log)):
                yield chunk
        finally:
            if not log.finished:
                log.cancel()

    async def _events(self, log: RunLog, stream: Stream) -> AsyncIterator[RunEvent]:
        """The events of a run for its primary response (which sees every one of them), counted as sent."""
        counter = self.metrics.events(stream)
        sent = 0
        try:
            async for item in log.follow(0, primary=True):
                assert not isinstance(item, Gap)
                yield item
                sent += 1
                if type(item) is Done:
                    counter.add(sent)
                    sent = 0
        finally:
            counter.add(sent)

    async def _outcome(self, log: RunLog) -> None:
        """Wait for a run to end, cancelling it if the waiting request goes away."""
        assert log.task is not None
        try:
            await asyncio.shield(log.task)
        except asyncio.CancelledError:
            log.cancel()
            raise

    # -- routes ------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The browser page (which may not be framed by another site)."""
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def health(self, request: Request) -> Response:
        """`GET /healthz`: the server is up; how many workflows it serves and runs it is running."""
        active = await self.remote.active() if self.remote is not None else self.registry.active
        return JSONResponse({"status": "ok", "workflows": len(self.catalog.workflows), "active_runs": active})

    async def metrics_page(self, request: Request) -> Response:
        """`GET /metrics`: the server's Prometheus metrics, in the text exposition format."""
        check_bearer(request, self.api_key)
        active = await self.remote.active() if self.remote is not None else self.registry.active
        return Response(self.metrics.exposition(active), media_type=CONTENT_TYPE)

    async def list_workflows(self, request: Request) -> Response:
        """`GET /workflows`."""
        check_bearer(request, self.api_key)
        return JSONResponse({"workflows": self.catalog.describe()})

    async def list_models(self, request: Request) -> Response:
        """`GET /v1/models`: the workflows as OpenAI models."""
        check_bearer(request, self.api_key)
        return JSONResponse(openai_api.models(sorted(self.catalog.workflows), self.started))

    async def run_workflow(self, request: Request) -> Response:
        """`POST /workflows/{name}/run`."""
        check_bearer(request, self.api_key)
        loaded = self._workflow(request.path_params["name"])
        inputs = await self._run_request(request, loaded)
        run_id = new_run_id()
        accept = request.headers.get("accept", "")
        headers = {"X-Run-Id": run_id}
        streamed = MEDIA_TYPE in accept or "text/plain" in accept
        log = await self._start(loaded, inputs, run_id, hold=streamed)
        if MEDIA_TYPE in accept:
            resumable = bool(request.scope["query_string"]) and (  # no query string: nothing to parse
                request.query_params.get("resumable", "").lower() in ("1", "true", "yes")
            )
            if isinstance(log, RunLog):
                return self._run_sse(log, 0, cancel_on_exit=not resumable, primary=True, headers={**HEADERS, **headers})
            frames = self._frames(log, 0, cancel_on_exit=not resumable, primary=True)
            return RunStreamResponse(
                with_keepalive(frames, self.keepalive),
                media_type=MEDIA_TYPE,
                headers={**HEADERS, **headers},
                on_close=log.release,
                streaming=self.metrics.streaming("run"),
            )
        if "text/plain" in accept:
            return RunStreamResponse(
                self._text(log),
                media_type="text/plain; charset=utf-8",
                headers=headers,
                on_close=log.release,
                streaming=self.metrics.streaming("text"),
            )
        await self._outcome(log)
        if log.error is not None:
            payload = self.describe(log.error, log.reference)
            return JSONResponse({"error": payload, "run_id": run_id}, status_code=502, headers=headers)
        assert log.result is not None
        return JSONResponse(log.result.to_json(), headers=headers)

    async def run_events(self, request: Request) -> Response:
        """`GET /runs/{run_id}/events`, resuming after `Last-Event-ID`; 204 when there is nothing more to say."""
        check_bearer(request, self.api_key)
        run_id = request.path_params["run_id"]
        log = await self._find(run_id)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or f"{run_id}:0"
        after_seq = parse_last_event_id(last, run_id)  # None: the client saw the stream's end frame
        if after_seq is None or (log.finished and log.error is None and after_seq >= log.last_seq):
            return Response(status_code=204, headers=HEADERS)  # an EventSource stops reconnecting on 204
        if isinstance(log, RunLog):
            return self._run_sse(log, after_seq, cancel_on_exit=False, stream="resume", headers=HEADERS)
        frames = with_keepalive(self._frames(log, after_seq, cancel_on_exit=False, stream="resume"), self.keepalive)
        return RunStreamResponse(
            frames, media_type=MEDIA_TYPE, headers=HEADERS, streaming=self.metrics.streaming("resume")
        )

    async def list_runs(self, request: Request) -> Response:
        """`GET /runs?limit=N`: the newest runs (of the whole deployment with `--redis`), newest first."""
        check_bearer(request, self.api_key)
        text = request.query_params.get("limit", str(DEFAULT_RUNS_LISTED))
        if not text.isdigit() or not 1 <= int(text) <= MAX_RUNS_LISTED:
            raise RequestRejected(422, f"'limit' must be a whole number from 1 to {MAX_RUNS_LISTED}, got {text!r}")
        limit = int(text)
        runs = await self.remote.recent(limit) if self.remote is not None else self.registry.recent(limit)
        return JSONResponse({"runs": runs})

    async def cancel_run(self, request: Request) -> Response:
        """`DELETE /runs/{run_id}`: cancel a run that is still going, and answer how it ended.

        The answer waits (up to `CANCEL_WAIT_SECONDS`) for the run to deliver its cancelled events; a run that
        had already ended is left as it was and its status is given.
        """
        check_bearer(request, self.api_key)
        run_id = request.path_params["run_id"]
        log = await self._find(run_id)
        if not log.finished:
            log.cancel()
            if log.task is not None:
                await asyncio.wait({log.task}, timeout=CANCEL_WAIT_SECONDS)  # never cancels the run's task
                if self.remote is not None and not log.task.done():
                    log.task.cancel()  # only this view's follower of the stream: the run goes on ending
        status = log.status
        if status == "running":
            return JSONResponse({"run_id": run_id, "status": "cancelling"}, status_code=202)
        return JSONResponse({"run_id": run_id, "status": status})

    async def chat_completions(self, request: Request) -> Response:
        """`POST /v1/chat/completions`."""
        check_bearer(request, self.api_key)
        chat = openai_api.parse_chat_request(await self._body(request))
        loaded = self._workflow(chat.model)
        try:
            inputs = resolve_inputs(loaded, openai_api.chat_inputs(loaded, chat))
        except InputError as error:
            raise RequestRejected(422, str(error)) from None
        run_id = new_run_id()
        log = await self._start(loaded, inputs, run_id)
        if chat.stream:

            async def chunks() -> AsyncIterator[str]:
                try:
                    async for chunk in openai_api.stream_chunks(
                        self._events(log, "chat"),
                        loaded,
                        run_id,
                        chat.include_usage,
                        self._describe_run(log),
                        chat.tool_names,
                    ):
                        yield chunk
                finally:
                    if not log.finished:
                        log.cancel()

            return RunStreamResponse(
                with_keepalive(chunks(), self.keepalive),
                media_type=MEDIA_TYPE,
                headers=HEADERS,
                on_close=log.release,
                streaming=self.metrics.streaming("chat"),
            )
        try:
            return JSONResponse(await openai_api.complete(self._events(log, "chat"), loaded, run_id, chat.tool_names))
        except Exception as error:
            if error is not log.error:
                raise
            return JSONResponse({"error": self.describe(error, log.reference)}, status_code=502)
        finally:
            log.release()
            if not log.finished:
                log.cancel()


def create_app(
    workflows: str | Path = "workflows",
    *,
    mock: bool = False,
    api_key: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    keepalive: float = DEFAULT_KEEPALIVE,
    registry: RunRegistry | None = None,
    max_runs: int | None = None,
    log_events: int | None = None,
    log_bytes: int | None = None,
    allowed_hosts: Sequence[str] | None = None,
    max_concurrent_runs: int | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    retry_ms: int = DEFAULT_RETRY_MS,
    redis: Any = None,
) -> Starlette:
    """Build the Starlette app serving the workflows in a folder.

    :param mock: run every LLM step on the mock provider.
    :param api_key: require `Authorization: Bearer <api_key>`; by default `PIPELINE_SERVER_API_KEY`.
    :param max_body: the largest request body accepted, in bytes.
    :param keepalive: seconds of silence before an SSE keepalive comment (run and chat streams).
    :param registry: where runs are kept (its `max_runs`, `log_capacity` and `log_bytes` bound them).
    :param max_runs: runs kept for resuming, finished or not (for the registry made when none is given).
    :param log_events: events kept per run log (likewise).
    :param log_bytes: bytes kept per run log (likewise); the response that started a run sees all of it.
    :param allowed_hosts: `Host` names accepted besides localhost, 127.0.0.1 and [::1] (`*.domain`
        patterns, or `*` for any); by default from `PIPELINE_SERVER_ALLOWED_HOSTS` (comma-separated).
    :param max_concurrent_runs: runs going at once (by default 1024, or the registry's `max_runs` if lower);
        more get 429 with `Retry-After`.
    :param read_timeout: seconds a request body may take to arrive (408 after that); None for no limit.
    :param retry_ms: the SSE `retry:` field, how long an `EventSource` waits before reconnecting.
    :param redis: a Redis URL or a `pipeline_ex.distributed.Deployment`: runs are enqueued for
        `pipeline-ex worker` processes, and this server streams, resumes, lists and cancels any run of the
        deployment; `max_concurrent_runs` then counts the runs of the whole deployment. By default
        `PIPELINE_REDIS_URL`; without either, runs run in this process.
    """
    bounds = {"max_runs": max_runs, "log_capacity": log_events, "log_bytes": log_bytes}
    given = {name: value for name, value in bounds.items() if value is not None}
    if registry is not None and given:
        raise ValueError(f"pass {', '.join(given)} to the RunRegistry given as registry=, not to create_app")
    registry = registry if registry is not None else RunRegistry(**given)
    if max_concurrent_runs is None:
        max_concurrent_runs = min(DEFAULT_MAX_CONCURRENT_RUNS, registry.max_runs)
    if max_concurrent_runs < 1 or max_concurrent_runs > registry.max_runs:
        raise ValueError(
            f"max_concurrent_runs must be between 1 and the registry's max_runs ({registry.max_runs}), "
            f"got {max_concurrent_runs}"
        )
    folder = Path(workflows)
    catalog = WorkflowCatalog.from_folder(folder, mock=mock)
    remote = None
    if redis is None:
        redis = os.environ.get(REDIS_URL_ENV) or None
    if redis is not None:
        from pipeline_ex.distributed.deployment import Deployment
        from pipeline_ex.distributed.remote_runs import RemoteRunRegistry

        remote = RemoteRunRegistry(redis if isinstance(redis, Deployment) else Deployment(redis))
    token = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    register_secret(token)  # the server's own token never appears in what it says
    metrics = ServerMetrics(catalog.workflows)
    server = PipelineServer(
        catalog,
        folder=folder,
        mock=mock,
        api_key=token,
        max_body=max_body,
        keepalive=keepalive,
        registry=registry,
        max_concurrent_runs=max_concurrent_runs,
        read_timeout=read_timeout,
        retry_ms=retry_ms,
        metrics=metrics,
        remote=remote,
    )
    hosts = list(allowed_hosts) if allowed_hosts is not None else split_hosts(os.environ.get(ALLOWED_HOSTS_ENV, ""))

    async def rejected(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestRejected)
        if error.reason is not None:
            metrics.rejected(error.reason)
        return server.error_response(error.status, error.message, headers=error.headers)

    def refuse_foreign(status: int, message: str) -> Response:
        metrics.rejected("host" if status == 400 else "origin")  # BrowserGuard's two refusals: 400 and 403
        return server.error_response(status, message)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)  # Starlette's own: no such route, method not allowed
        return server.error_response(error.status_code, f"{error.detail}: {request.method} {request.url.path}")

    def failed(request: Request, error: Exception) -> Response:
        reference = new_reference()
        logger.error(
            "request %s %s failed (reference %s)",
            request.method,
            request.url.path,
            reference,
            exc_info=error,
            extra={"reference": reference},
        )
        message = str(error) if isinstance(error, PipelineError) else "internal server error"
        return server.error_response(500, f"{message} (reference {reference})", "internal", reference=reference)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if server.remote is not None:
            await server.remote.check()
        yield
        if server.remote is not None:
            await server.remote.close()  # the runs go on on the workers
        else:
            await server.registry.cancel_all()

    app = StreamingApp(
        routes=[
            Route("/", server.page, methods=["GET"]),
            Route("/healthz", server.health, methods=["GET"]),
            Route("/metrics", server.metrics_page, methods=["GET"]),
            Route("/workflows", server.list_workflows, methods=["GET"]),
            Route("/workflows/{name}/run", server.run_workflow, methods=["POST"]),
            Route("/runs", server.list_runs, methods=["GET"]),
            Route("/runs/{run_id}/events", server.run_events, methods=["GET"]),
            Route("/runs/{run_id}", server.cancel_run, methods=["DELETE"]),
            Route("/v1/models", server.list_models, methods=["GET"]),
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        ],
        middleware=[
            Middleware(UnexpectedFailures, respond=failed),
            Middleware(BrowserGuard, allowed_hosts=hosts, refuse=refuse_foreign),
        ],
        exception_handlers={RequestRejected: rejected, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.pipeline = server
    return app


class UnexpectedFailures:
    """ASGI middleware: an unexpected exception is answered with the server's JSON 500 and not re-raised.

    `respond` logs it (through the redacting logger, with a reference the client also sees) and builds
    the answer. Starlette's own `ServerErrorMiddleware` re-raises after its handler has answered, so that
    the server can log the error too: uvicorn would then log the raw traceback, secrets and all. A failure
    after the response started only ends the response.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Any], *, respond: Callable[..., Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer (or end) a request whose handling raised."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            response = self.respond(Request(scope), error)
            if not started:
                await response(scope, receive, send)
