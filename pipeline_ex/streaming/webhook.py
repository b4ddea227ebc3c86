"""`WebhookHandler`: POST a step's events as JSON to a URL, in batches, with retries and back-pressure.

Each POST carries one batch of one step run's events, in order:

    {"run_id": "...", "step": "draft", "batch": 0, "events": [{"type": "delta", ...}, ..., {"type": "done", ...}]}

Each event is `event.model_dump(mode="json")`; `batch` counts the step run's batches from 0, and the
step's `Done` is the last event of its last batch. Given to a run with `lifecycle=True` (as the server's
runs are), one handler serves the whole run instead: it gets every step's events and the lifecycle events,
`step` is null, and `RunFinished` ends the last batch (the run returns once all of it is acknowledged).

A batch that is retried is sent again whole, so a receiver that may see one twice (its 2xx reply was
lost) drops events it already has by `(run_id, seq)`.

Connections: a new handler is made for every step run, so the HTTP client is not the handler's own.
Handlers on the same event loop share one `httpx.AsyncClient` (and its keep-alive connections) while any
of them is delivering, so the steps of a parallel group, or the many runs a server holds at once, reuse
connections; the last one to finish closes it. Every client is built on one TLS context made once per
process, since building a client with its own costs about 30 ms and with a shared one well under 1 ms.
A run of sequential steps on the command line therefore opens one connection per step.

The retry loop is written here rather than with a retry library because each decision needs the
response (`Retry-After` on a 429 or 503, no retry on other 4xx) and the loop is a dozen lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import os
import random
import re
import ssl
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Done, RunEvent, RunFinished, StepStarted
from pipeline_ex.redaction import redact_text, register_secret_env

if TYPE_CHECKING:
    import httpx

_SECRET_HEADER = re.compile(r"authorization|cookie|api[-_]?key|token|secret|signature|password", re.IGNORECASE)
_BODY_SHOWN = 200
"""How much of a refusing receiver's reply an error quotes."""


class WebhookDeliveryError(PipelineError):
    """Events did not reach a webhook: names the URL (credentials redacted), why, and how many were lost."""

    def __init__(self, url: str, reason: str, undelivered: int) -> None:
        self.url = url
        self.reason = reason
        self.undelivered = undelivered
        super().__init__(f"webhook {url}: {undelivered} event(s) not delivered: {reason}")


class EnvValue(BaseModel):
    """A value read from an environment variable, written `{env: VARIABLE}`; it is treated as a secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def read(self) -> str:
        """The variable's value.

        :raises ValueError: the variable is not set.
        """
        value = os.environ.get(self.env)
        if not value:
            raise ValueError(f"environment variable {self.env} is not set (it holds a webhook secret)")
        return value


def _env_is_set(value: EnvValue) -> EnvValue:
    register_secret_env(value.env)
    value.read()
    return value


def _checked_url(value: str | EnvValue) -> str | EnvValue:
    if isinstance(value, EnvValue):
        return _env_is_set(value)
    if not re.match(r"^https?://[^/?#\s]+", value):
        raise ValueError(f"{_shown_url(value)!r} is not an http:// or https:// URL")
    return value


def _checked_headers(headers: dict[str, str | EnvValue] | None) -> dict[str, str | EnvValue] | None:
    for name, value in (headers or {}).items():
        if isinstance(value, EnvValue):
            _env_is_set(value)
        elif _SECRET_HEADER.search(name):
            raise ValueError(f"header {name!r} holds a secret: write it as {{env: VARIABLE}}, not inline")
    return headers


WebhookURL = Annotated[str | EnvValue, AfterValidator(_checked_url)]
WebhookHeaders = Annotated[dict[str, str | EnvValue] | None, AfterValidator(_checked_headers)]


def _shown_url(url: str) -> str:
    """The URL with its password and query values hidden, for messages."""
    url = re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", url)
    return re.sub(r"=([^&#]*)", "=***", url)


def _described(url: str | EnvValue) -> str:
    if isinstance(url, EnvValue):
        value = os.environ.get(url.env, "")
        host = re.match(r"^(https?://)(?:[^/@]*@)?([^/?#]+)", value)
        return f"{host.group(1)}{host.group(2)}/*** (from ${url.env})" if host else f"(from ${url.env})"
    return _shown_url(url)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client (certifi's CAs, as httpx uses by default)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


@dataclass
class _SharedClient:
    client: httpx.AsyncClient
    users: int = 0


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedClient] = weakref.WeakKeyDictionary()


def _acquire_client() -> httpx.AsyncClient:
    """The running loop's shared client, counting one more user."""
    import httpx

    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None:
        shared = _clients[loop] = _SharedClient(httpx.AsyncClient(verify=_tls_context()))
    shared.users += 1
    return shared.client


async def _release_client(client: httpx.AsyncClient) -> None:
    """One user fewer; the last one closes the client (after taking it out, so no one new picks it up)."""
    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None or shared.client is not client:
        await client.aclose()
        return
    shared.users -= 1
    if shared.users == 0:
        del _clients[loop]
        await client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    """The wait a 429 or 503 asks for, in seconds (`Retry-After` as seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _as_env_value(value: str | EnvValue | Mapping[str, str]) -> str | EnvValue:
    """`{env: VARIABLE}` given as a plain mapping (a handler built in Python code) as an `EnvValue`."""
    return EnvValue.model_validate(value) if isinstance(value, Mapping) else value


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {redact_text(str(error)) or 'no detail'}"


class WebhookHandler:
    """POSTs a step run's events as JSON to a URL, in batches, and has them all acknowledged by its Done.

    Delivery runs beside the stream: events wait in a bounded buffer while a batch is on its way. A batch
    goes when it holds `batch_size` events, when its first event has waited `max_delay` seconds, when
    the previous POST returns with events waiting, or at the step's Done. When the receiver is slower than
    the stream and `max_buffer` events are waiting, the stream waits for room (nothing is dropped, and
    memory stays bounded: `max_buffer` waiting plus the batch being sent).

    A POST that fails to connect, times out, loses its connection or gets a 5xx or 429 is retried, at
    most `retries` times, after `backoff` seconds doubled each time (up to `max_backoff`) with random
    jitter; a 429 or 503 with `Retry-After` waits what it asks (up to `max_backoff`). Any other 4xx is
    not retried. On the Done the handler returns only once every event got a 2xx; if delivery fails, the
    handler raises `WebhookDeliveryError` naming the URL and how many events were not delivered (then,
    or at the next event if it failed mid-stream), so the step fails with `HandlerError` after its Done.

    Options:
        url: where to POST, http:// or https://; `{env: VARIABLE}` reads it from the environment (for URLs
            that hold a token). Credentials in it are hidden in messages.
        headers: extra request headers; a secret one (Authorization, *-Token, *-Api-Key, ...) must be
            written as `{env: VARIABLE}`, whose value is never logged.
        batch_size: the most events per POST.
        max_delay: how long, in seconds, the first event of a batch waits for more before it is sent.
        max_buffer: the most events waiting to be sent before the stream waits for the receiver.
        timeout: seconds allowed for each POST (connecting, sending and the reply).
        retries: how many times a failed POST is tried again before delivery fails.
        backoff: the wait before the first retry, in seconds; it doubles with each retry.
        max_backoff: the longest wait between two tries, in seconds (Retry-After included).
    """

    def __init__(
        self,
        url: WebhookURL,
        headers: WebhookHeaders = None,
        batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100,
        max_delay: Annotated[float, Field(ge=0, le=60)] = 0.2,
        max_buffer: Annotated[int, Field(ge=1, le=1_000_000)] = 1000,
        timeout: Annotated[float, Field(gt=0, le=600)] = 10.0,
        retries: Annotated[int, Field(ge=0, le=100)] = 5,
        backoff: Annotated[float, Field(ge=0, le=60)] = 0.5,
        max_backoff: Annotated[float, Field(ge=0, le=3600)] = 30.0,
    ) -> None:
        self.url = _as_env_value(url)
        self.headers = {name: _as_env_value(value) for name, value in (headers or {}).items()}
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.max_buffer = max_buffer
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.shown_url = _described(url)
        self.posts = 0
        """POST requests made, retries included."""
        self.delivered = 0
        """Events acknowledged with a 2xx."""
        self._waiting: list[RunEvent] = []
        self._sending = 0
        self._undelivered = 0
        """Events lost for good (a failed batch, what waited behind it, and events after the failure)."""
        self._failure: WebhookDeliveryError | None = None
        self._closing = False
        self._batches = 0
        self._sender: asyncio.Task[None] | None = None
        self._step: str | None = None
        self._run_id = ""
        self._end: type[Done] | type[RunFinished] = Done
        self._client: httpx.AsyncClient | None = None
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """Events held now: waiting to be sent, or in the batch being sent (at most `max_buffer + batch_size`)."""
        return len(self._waiting) + self._sending

    async def handle_event(self, event: RunEvent) -> None:
        """Queue the event for delivery (waiting for room if the buffer is full); on Done, deliver everything."""
        if self._sender is None:
            self._start(event)
        elif event.run_id != self._run_id or (self._step is not None and event.step != self._step):  # type: ignore[union-attr]
            raise PipelineError(
                f"one WebhookHandler instance got the events of two step runs at once ({self._step!r} and "
                f"{getattr(event, 'step', None)!r}); give the class, or {{'handler': 'webhook', 'options': {{...}}}}, "
                "so that every step run gets its own"
            )
        if self._failure is not None:
            await self._refuse(event)
        assert self._wake is not None and self._room is not None
        waiting = self._waiting
        try:
            while len(waiting) >= self.max_buffer and self._failure is None:
                self._room.clear()
                await self._room.wait()
        except asyncio.CancelledError:
            waiting.append(event)  # the step is being cancelled: its Done, coming next, delivers this too
            raise
        if self._failure is not None:
            await self._refuse(event)
        waiting.append(event)
        if len(waiting) == 1 or len(waiting) >= self.batch_size:
            self._wake.set()
        if isinstance(event, self._end):
            try:
                await self._finish()
            finally:
                self._reset()

    def _start(self, event: RunEvent) -> None:
        # A handler bound once for a run (run(..., lifecycle=True)) first gets the run's StepStarted: it then
        # delivers the whole run's events, and the run's RunFinished is its end instead of a step's Done.
        run_level = isinstance(event, StepStarted)
        self._end = RunFinished if run_level else Done
        self._step = None if run_level else getattr(event, "step", None)
        self._run_id = event.run_id
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._client = _acquire_client()
        self._sender = asyncio.get_running_loop().create_task(self._send_all(), name=f"webhook {self.shown_url}")

    async def _refuse(self, event: RunEvent) -> None:
        """Delivery failed earlier: this event is not delivered either; at the Done, let the client go."""
        assert self._failure is not None
        self._undelivered += 1
        error = WebhookDeliveryError(self.shown_url, self._failure.reason, self._undelivered)
        if isinstance(event, self._end):
            self._stop_sender()
            await self._close_client()
            self._reset()
        raise error

    def _reset(self) -> None:
        """The step run is over: an instance given as an object may serve the next one."""
        self._waiting.clear()
        self._sender = self._wake = self._room = self._failure = None
        self._closing = False
        self._batches = self._undelivered = 0

    async def _finish(self) -> None:
        """The Done is queued: wait until everything is acknowledged, then let the client go."""
        assert self._sender is not None and self._wake is not None
        self._closing = True
        self._wake.set()
        try:
            await asyncio.shield(self._sender)
        except asyncio.CancelledError:
            self._stop_sender()
            raise
        finally:
            await self._close_client()
        if self._failure is not None:
            raise self._failure

    def _stop_sender(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _release_client(client)

    async def _send_all(self) -> None:
        """Send batches until the Done's batch is acknowledged or a batch fails for good."""
        assert self._wake is not None and self._room is not None
        waiting, wake = self._waiting, self._wake
        backlog = False
        """Events arrived while the previous POST was on its way: they have waited already."""
        while True:
            if not waiting:
                backlog = False
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
                continue
            if not backlog and self.max_delay > 0:
                await self._fill_up()
            batch = waiting[: self.batch_size]
            del waiting[: len(batch)]
            self._sending = len(batch)
            self._room.set()
            try:
                await self._post(batch)
            except Exception as failure:  # a refusal, the retries used up, or a URL httpx cannot use
                reason = failure.reason if isinstance(failure, WebhookDeliveryError) else _why(failure)
                self._undelivered += len(batch) + len(waiting)
                waiting.clear()
                self._failure = WebhookDeliveryError(self.shown_url, reason, self._undelivered)
                self._room.set()
                return
            finally:
                self._sending = 0
            self.delivered += len(batch)
            backlog = True

    async def _fill_up(self) -> None:
        """Give a new batch's first event up to `max_delay` for the batch to fill (or the Done to come)."""
        assert self._wake is not None
        wake = self._wake
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_delay):
                while len(self._waiting) < min(self.batch_size, self.max_buffer) and not self._closing:
                    wake.clear()
                    await wake.wait()

    def _body(self, batch: list[RunEvent]) -> bytes:
        first = batch[0]
        head = f'{{"run_id":{json.dumps(first.run_id)},"step":{json.dumps(self._step)},"batch":{self._batches},'
        events = b",".join(event.model_dump_json().encode() for event in batch)
        return head.encode() + b'"events":[' + events + b"]}"

    def _request_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "user-agent": "pipeline-ex webhook"}
        for name, value in self.headers.items():
            try:
                headers[name] = value.read() if isinstance(value, EnvValue) else value
            except ValueError as error:
                raise WebhookDeliveryError(self.shown_url, str(error), 0) from None
        return headers

    def _target(self) -> str:
        if isinstance(self.url, EnvValue):
            try:
                return self.url.read()
            except ValueError as error:
                raise WebhookDeliveryError(self.shown_url, str(error), 0) from None
        return self.url

    async def _post(self, batch: list[RunEvent]) -> None:
        """POST one batch, retrying as the class describes.

        :raises WebhookDeliveryError: the receiver refused it, or every try failed.
        """
        import httpx

        assert self._client is not None
        body, headers, target = self._body(batch), self._request_headers(), self._target()
        self._batches += 1
        reason = ""
        for attempt in range(self.retries + 1):
            wait: float | None = None
            self.posts += 1
            try:
                response = await self._client.post(target, content=body, headers=headers, timeout=self.timeout)
            except httpx.TransportError as error:
                reason = _why(error).replace(target, self.shown_url)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return
                reason = f"HTTP {status} {response.reason_phrase}".rstrip()
                if status != 429 and status < 500:
                    shown = redact_text(response.text[:_BODY_SHOWN].strip())
                    raise WebhookDeliveryError(
                        self.shown_url,
                        f"{reason}, not retried (a 4xx other than 429 means the receiver refuses the batch)"
                        + (f": {shown}" if shown else ""),
                        len(batch),
                    )
                wait = _retry_after(response)
            if attempt == self.retries:
                break
            if wait is None:
                step = min(self.max_backoff, self.backoff * 2**attempt)
                wait = random.uniform(step / 2, step)  # jitter: retries of many runs do not arrive together
            await asyncio.sleep(min(wait, self.max_backoff))
        tries = self.retries + 1
        raise WebhookDeliveryError(
            self.shown_url, f"gave up after {tries} tr{'y' if tries == 1 else 'ies'}: {reason}", 0
        )
