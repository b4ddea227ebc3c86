"""A real loopback HTTP server speaking the OpenAI Chat Completions wire format, for streaming tests.

`OpenAISSEServer` runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 (an ephemeral port) in a background
thread and answers `POST /v1/chat/completions`:

- with `"stream": true`: `Content-Type: text/event-stream`, one `data: {chat.completion.chunk}\\n\\n`
  event per chunk, written and flushed one by one, closed by `data: [DONE]\\n\\n`;
- with `"stream": false`: one `chat.completion` JSON object.

What it sends is set per test with `server.script(...)` (a `StreamScript`): the content pieces, whether
an empty role chunk comes first, the finish chunk and its `finish_reason`, a usage-only chunk
(`"choices": []`, sent only when the request asked for `stream_options.include_usage`), a delay
between chunks, and `break_after=N` to drop the connection after N content chunks without a finish
chunk or `[DONE]`.

Tool calls: `StreamScript.tool_calls` (`provider_servers.ScriptedToolCall`s) are streamed after the content
pieces as `choices[0].delta.tool_calls` entries: the first fragment of a call carries `index`, `id`,
`type: "function"`, `function.name` and empty `function.arguments`; the following ones only `index` and
a `function.arguments` fragment. `tool_call_style` says how the calls of one reply are laid out:
`"sequential"` (one call after the other, as OpenAI streams them), `"interleaved"` (the fragments of
parallel calls alternate by index, as some compatible servers send them) or `"one_chunk"` (every call whole
in a single delta, as Ollama's and llama.cpp's OpenAI-compatible endpoints do). `StreamScript.calling(...)`
makes a reply of tool calls with `finish_reason: "tool_calls"`. Non-streamed replies carry them in
`message.tool_calls`.

`server.queue(round1, round2, ...)` answers the next requests with those scripts, one each, and then
the standing script set by `server.script(...)`, so a test can script a tool loop round by round.

The body can be framed two ways (`StreamScript.framing`):

- `"close"` (default): HTTP/1.0 style, no `Content-Length`; the end of the body is the end of the
  connection. A `break_after` here looks to the client exactly like a body that simply ended.
- `"chunked"`: HTTP/1.1 `Transfer-Encoding: chunked` with `Connection: close`; a `break_after` closes
  the socket without the terminating zero-length chunk, so the client can tell the body is incomplete.

Every request is recorded (`RecordedRequest`: parsed JSON body, headers, how many content chunks were
written, the ids of the tool calls sent, whether the script ran to its end) together with the moment
the server noticed that the client closed the connection: while waiting between chunks it watches the
socket for EOF/reset, and a write failing with `BrokenPipeError` / `ConnectionResetError` counts too.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

from provider_servers import ScriptedToolCall, ScriptQueue

Framing = Literal["close", "chunked"]
ToolCallStyle = Literal["sequential", "interleaved", "one_chunk"]

COMPLETIONS_PATH = "/v1/chat/completions"
DEFAULT_USAGE: dict[str, int] = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


@dataclass(frozen=True)
class StreamScript:
    """What the server answers to the next chat completion requests.

    :param pieces: the content pieces, one content chunk each.
    :param model: the model name reported in every chunk.
    :param role_chunk: send `{"role": "assistant", "content": ""}` as the first chunk.
    :param finish_reason: the `finish_reason` of the finish chunk; None sends no finish chunk.
    :param usage: sent as a usage-only chunk (`"choices": []`) when the request asked for
        `stream_options.include_usage`, and in non-streaming replies; None sends no usage at all.
    :param send_done: close the stream with `data: [DONE]`.
    :param break_after: after this many content chunks, close the connection abruptly: no finish chunk,
        no usage, no `[DONE]` (and, with chunked framing, no terminating chunk).
    :param error_after: after this many content chunks, send an error event
        (`data: {"error": {...}}`, which the openai SDK raises as `APIError`) and end the body properly.
    :param reject_status: answer every request with this HTTP status and an OpenAI error body whose
        message quotes the request's bearer token, as some OpenAI-compatible proxies do
        (`reject_message` with `{key}` replaced).
    :param delay_s: pause before every chunk after the first, watching for the client hanging up.
    :param framing: how the response body is delimited, see the module docstring.
    :param tool_calls: tool calls streamed after the pieces (ids made as `call_<request>_<n>` when not given).
    :param tool_call_style: how the calls' fragments are laid out, see the module docstring.
    """

    pieces: tuple[str, ...] = ("Hello", ", ", "wor", "ld", "!")
    model: str = "gpt-test-mini"
    role_chunk: bool = True
    finish_reason: str | None = "stop"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(DEFAULT_USAGE))
    send_done: bool = True
    break_after: int | None = None
    error_after: int | None = None
    reject_status: int | None = None
    reject_message: str = "Incorrect API key provided: {key}. You can find your API key in your account."
    delay_s: float = 0.0
    framing: Framing = "close"
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    tool_call_style: ToolCallStyle = "sequential"

    @classmethod
    def calling(cls, *calls: ScriptedToolCall, **changes: Any) -> Self:
        """A reply that calls `calls`, with no text unless `pieces` is given, and `finish_reason: "tool_calls"`."""
        changes["pieces"] = tuple(changes.get("pieces", ()))
        changes.setdefault("finish_reason", "tool_calls")
        return cls(tool_calls=tuple(calls), **changes)

    @classmethod
    def replying(cls, *pieces: str, **changes: Any) -> Self:
        """A text reply made of `pieces` (the round after the tool results, typically)."""
        return cls(pieces=tuple(pieces), **changes)

    @property
    def text(self) -> str:
        """The full text the script streams when it is not broken off."""
        return "".join(self.pieces)

    @property
    def sent_text(self) -> str:
        """The text of the content chunks actually written (all of them unless `break_after` is set)."""
        stop = self.break_after if self.break_after is not None else self.error_after
        pieces = self.pieces if stop is None else self.pieces[:stop]
        return "".join(pieces)


@dataclass
class RecordedRequest:
    """One request the server received, and what became of its response.

    :param received_at: `time.perf_counter()` when the request was read.
    :param content_chunks_sent: content chunks successfully written.
    :param number: the request's position among those the server received, from 1.
    :param tool_call_ids: the ids of the tool calls sent in the response.
    :param completed: the response was written to its scripted end (or its scripted break).
    :param finished: set once the server is done with the response, however it ended.
    :param client_closed_at: `time.perf_counter()` when the server noticed the client had closed the
        connection while the response was still being written; None if it never did.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    content_chunks_sent: int = 0
    number: int = 0
    tool_call_ids: list[str] = field(default_factory=list)
    completed: bool = False
    client_closed_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed response."""
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


class ClientClosed(Exception):
    """The client closed (or reset) the connection while the response was being written."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass

    # -- request ---------------------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        owner = self.server.owner
        record = RecordedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.perf_counter(),
        )
        script = owner.take_script()
        owner.add_request(record)
        try:
            if self.path != COMPLETIONS_PATH or not isinstance(body, dict):
                error = {"message": f"no route {self.path}", "type": "invalid_request_error"}
                self._send_json(404, {"error": error})
            elif script.reject_status is not None:
                key = record.headers.get("authorization", "").removeprefix("Bearer ").strip()
                error = {"message": script.reject_message.format(key=key), "type": "invalid_request_error"}
                self._send_json(script.reject_status, {"error": error})
            elif body.get("stream"):
                self._stream(script, record, body)
            else:
                self._send_json(200, _completion(script, record))
            record.completed = True
        except ClientClosed:
            owner.note_client_closed(record)
        finally:
            owner.note_finished(record)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # -- streaming -------------------------------------------------------------------------------

    def _stream(self, script: StreamScript, record: RecordedRequest, body: dict[str, Any]) -> None:
        chunked = script.framing == "chunked"
        if chunked:
            self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

        completion_id = f"chatcmpl-test{id(record):x}"
        created = int(time.time())
        first = True

        def send(data: str, *, last: bool = False) -> None:
            nonlocal first
            if not first:
                self._pause(script.delay_s)
            first = False
            self._write_event(data, chunked, last=last)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": script.model,
                "system_fingerprint": "fp_test",
                "choices": choices,
            }
            if usage is not None:
                payload["usage"] = usage
            return json.dumps(payload)

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        if script.role_chunk:
            send(chunk([choice({"role": "assistant", "content": ""})]))
        for number, piece in enumerate(script.pieces):
            if script.break_after is not None and number >= script.break_after:
                break
            if script.error_after is not None and number >= script.error_after:
                break
            send(chunk([choice({"content": piece})]))
            record.content_chunks_sent += 1
        if script.break_after is not None:
            self._drop()
            return
        if script.error_after is not None:  # the last event of the body: nothing is written after it
            failure = {"message": f"the test server failed after {script.error_after} chunks", "type": "server_error"}
            send(json.dumps({"error": failure}), last=True)
            return
        for delta in _tool_call_deltas(script, record):
            send(chunk([choice({"tool_calls": delta})]))
        if script.finish_reason is not None:
            send(chunk([choice({}, script.finish_reason)]))
        stream_options = body.get("stream_options") or {}
        if script.usage is not None and isinstance(stream_options, dict) and stream_options.get("include_usage"):
            send(chunk([], dict(script.usage)))
        if script.send_done:
            send("[DONE]", last=True)  # with the terminating chunk in the same write: a client may hang up now
        elif chunked:
            self._write(b"0\r\n\r\n")

    def _write_event(self, data: str, chunked: bool, *, last: bool = False) -> None:
        event = f"data: {data}\n\n".encode()
        if chunked:
            event = f"{len(event):x}\r\n".encode() + event + b"\r\n" + (b"0\r\n\r\n" if last else b"")
        self._write(event)

    def _write(self, data: bytes) -> None:
        self._check_client()
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ClientClosed from error

    def _check_client(self, timeout: float = 0.0) -> None:
        """Wait up to `timeout` for the socket to become readable; raise `ClientClosed` on EOF or reset.

        The client sends nothing after its request, so a readable socket means it hung up.
        """
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], timeout)
            if readable and not sock.recv(4096):
                raise ClientClosed
        except (ConnectionResetError, BrokenPipeError) as error:
            raise ClientClosed from error

    def _pause(self, delay_s: float) -> None:
        deadline = time.perf_counter() + delay_s
        while True:
            if self.server.owner.stopping.is_set():
                raise ClientClosed  # the fixture is tearing down; give up quietly
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._check_client(min(remaining, 0.05))

    def _drop(self) -> None:
        """End the response abruptly, mid-body: send FIN now, with no further framing."""
        self.connection.shutdown(socket.SHUT_WR)
        self.close_connection = True


def _tool_call_deltas(script: StreamScript, record: RecordedRequest) -> list[list[dict[str, Any]]]:
    """The `delta.tool_calls` lists of the chunks that stream the script's tool calls, in sending order."""
    per_call: list[list[dict[str, Any]]] = []
    whole: list[dict[str, Any]] = []
    for index, call in enumerate(script.tool_calls):
        call_id = call.wire_id("call_", record.number, index)
        record.tool_call_ids.append(call_id)
        arguments = call.arguments_json if script.tool_call_style == "one_chunk" else ""
        function = {"name": call.name, "arguments": arguments}
        head = {"index": index, "id": call_id, "type": "function", "function": function}
        whole.append(head)
        fragments = [{"index": index, "function": {"arguments": f}} for f in call.argument_fragments()]
        per_call.append([head, *fragments])
    if script.tool_call_style == "one_chunk":
        return [whole] if whole else []
    if script.tool_call_style == "sequential":
        return [[entry] for entries in per_call for entry in entries]
    longest = max((len(entries) for entries in per_call), default=0)
    return [[entries[step]] for step in range(longest) for entries in per_call if step < len(entries)]


def _completion(script: StreamScript, record: RecordedRequest) -> dict[str, Any]:
    """The non-streaming `chat.completion` reply for `script`."""
    message: dict[str, Any] = {"role": "assistant", "content": script.text, "refusal": None}
    if script.tool_calls:
        message["content"] = script.text or None
        message["tool_calls"] = []
        for index, call in enumerate(script.tool_calls):
            call_id = call.wire_id("call_", record.number, index)
            record.tool_call_ids.append(call_id)
            function = {"name": call.name, "arguments": call.arguments_json}
            message["tool_calls"].append({"id": call_id, "type": "function", "function": function})
    payload: dict[str, Any] = {
        "id": "chatcmpl-test-plain",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": script.model,
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": script.finish_reason or "stop",
            }
        ],
    }
    if script.usage is not None:
        payload["usage"] = dict(script.usage)
    return payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OpenAISSEServer


class OpenAISSEServer(ScriptQueue["StreamScript"]):
    """An OpenAI-compatible chat completions server on 127.0.0.1, driven by a `StreamScript`.

    Use as a context manager or call `start()` / `stop()`. `url` is the `api_base_url` to give the
    client (it ends in `/v1`).
    """

    def __init__(self, script: StreamScript | None = None) -> None:
        self._script = script or StreamScript()
        self._queued: deque[StreamScript] = deque()
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> OpenAISSEServer:
        """Bind an ephemeral loopback port and serve in a background thread."""
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-sse-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end in-flight responses and close the listening socket."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()  # joins the request threads
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAISSEServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        assert self._httpd is not None, "the server is not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. `http://127.0.0.1:PORT/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- configuration ---------------------------------------------------------------------------

    def script(self, script: StreamScript | None = None, /, **changes: Any) -> StreamScript:
        """Set what the following requests receive: a `StreamScript`, and/or field changes to it.

        Without a script, the changes apply to the default `StreamScript()`. `pieces` may be any
        sequence of strings. Returns the script in effect.
        """
        base = script or StreamScript()
        if "pieces" in changes:
            changes["pieces"] = tuple(changes["pieces"])
        new = replace(base, **changes)
        with self._lock:
            self._script = new
        return new

    # -- what happened ---------------------------------------------------------------------------

    def add_request(self, record: RecordedRequest) -> None:
        """Record a received request (called by the request handler)."""
        with self._lock:
            self._requests.append(record)
            record.number = len(self._requests)
            self._lock.notify_all()

    def note_client_closed(self, record: RecordedRequest) -> None:
        """Record that the client closed the connection of `record` (called by the request handler)."""
        with self._lock:
            if record.client_closed_at is None and not self.stopping.is_set():
                record.client_closed_at = time.perf_counter()
            self._lock.notify_all()

    def note_finished(self, record: RecordedRequest) -> None:
        """Record that the server is done with the response of `record` (called by the request handler)."""
        with self._lock:
            record.finished.set()
            self._lock.notify_all()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def bodies(self) -> list[Any]:
        """The parsed JSON bodies of the requests received so far."""
        return [r.body for r in self.requests]

    @property
    def closed_at(self) -> list[float]:
        """`time.perf_counter()` of every client hang-up noticed mid-response, in request order."""
        return [r.client_closed_at for r in self.requests if r.client_closed_at is not None]

    def wait_for_response(self, index: int = -1, timeout: float = 2.0) -> RecordedRequest:
        """Block until the server is done with the response to request `index`; return its record.

        :raises TimeoutError: if there is no such request, or its response is still being written.
        """
        deadline = time.perf_counter() + timeout
        with self._lock:
            while not self._requests or not -len(self._requests) <= index < len(self._requests):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError(f"no request #{index} within {timeout}s")
                self._lock.wait(remaining)
            record = self._requests[index]
        if not record.finished.wait(max(0.0, deadline - time.perf_counter())):
            raise TimeoutError(f"the response to request #{index} did not end within {timeout}s: {record!r}")
        return record

    def wait_for_client_close(self, index: int = -1, timeout: float = 2.0) -> float:
        """Block until the client of request `index` hung up mid-response; return when it was noticed.

        :raises TimeoutError: if that did not happen within `timeout` seconds, or the response ended without it.
        """
        deadline = time.perf_counter() + timeout
        with self._lock:
            while True:
                record = self._requests[index] if self._requests else None
                if record is not None:
                    if record.client_closed_at is not None:
                        return record.client_closed_at
                    if record.finished.is_set():
                        raise TimeoutError(f"the response ended without the client hanging up: {record!r}")
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise TimeoutError(f"the client did not hang up within {timeout}s: {record!r}")
                self._lock.wait(remaining)
