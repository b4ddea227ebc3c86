"""Real loopback HTTP servers speaking the Anthropic, Ollama and Gemini streaming wire formats, for tests.

Each server runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 (an ephemeral port) in a background thread,
like `openai_sse_server.OpenAISSEServer`, and answers the one endpoint its SDK calls:

- `AnthropicServer`: `POST /v1/messages` (Messages API). With `"stream": true` it sends Server-Sent Events
  `message_start` (with the input token count), `content_block_start`, `ping`, one `content_block_delta`
  (`text_delta`) per piece, `content_block_stop`, `message_delta` (with `stop_reason` and the cumulative
  output token count) and `message_stop`; a mid-stream error is `event: error` with
  `{"type": "error", "error": {"type": ..., "message": ...}}`. Otherwise one `message` JSON object.
  Point the SDK at it with `ANTHROPIC_BASE_URL=server.url`.
- `OllamaServer`: `POST /api/chat`. With `"stream": true` it sends NDJSON (`application/x-ndjson`), one
  `{"message": {"role": "assistant", "content": piece}, "done": false}` line per piece and a final
  `"done": true` line with `done_reason`, durations and `prompt_eval_count` / `eval_count`; a mid-stream
  error is a `{"error": "..."}` line. With `"stream": false` one chat response object. Point the
  `ollama` provider at it with `api_base_url=server.url`.
- `GeminiServer`: `POST /{version}/models/{model}:streamGenerateContent?alt=sse` sends `data: {json}`
  events, each a `GenerateContentResponse` (`candidates[0].content.parts[0].text`), the last piece carrying
  `finishReason` and `usageMetadata`; a mid-stream error is `data: {"error": {"code", "message",
  "status"}}`. `POST /{version}/models/{model}:generateContent` returns one `GenerateContentResponse`.
  Point the SDK at it with `GOOGLE_GEMINI_BASE_URL=server.url`.

What a server sends is set per test with `server.script(...)`: the content pieces, the finish/stop
reason (None: none at all), the usage (None: none at all), `error_after=N` (a provider error event after
N pieces), `break_after=N` (drop the connection after N pieces, with no finish and no usage), a delay
between events, and the framing (`"close"`: the body ends with the connection; `"chunked"`: HTTP/1.1
chunked encoding, so an abrupt close is visibly incomplete to the client).

Every request is recorded (`RecordedRequest`: path, query, headers, parsed JSON body, pieces written,
whether the script ran to its end, when the client hung up mid-response).
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

Framing = Literal["close", "chunked"]

ANTHROPIC_TEST_KEY = "sk-ant-test-key"
"""The API key the `anthropic_server` fixture puts in `ANTHROPIC_API_KEY`."""
GOOGLE_TEST_KEY = "google-test-key"
"""The API key the `gemini_server` fixture puts in `GOOGLE_API_KEY`."""

DEFAULT_PIECES: tuple[str, ...] = ("Hello", ", ", "wor", "ld", "!")

ANTHROPIC_USAGE: dict[str, int] = {"input_tokens": 25, "output_tokens": 15}
OLLAMA_USAGE: dict[str, int] = {"prompt_eval_count": 26, "eval_count": 7}
GEMINI_USAGE: dict[str, int] = {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13}


# -- scripts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """What a server answers to the next requests (the fields every wire format shares).

    :param pieces: the content pieces, one content event (or NDJSON line) each.
    :param model: the model name the server reports; None echoes the requested model.
    :param finish_reason: the provider's own finish/stop reason; None sends none at all.
    :param usage: token counts in the provider's own field names; None sends no usage at all.
    :param error_after: after this many pieces, send the provider's mid-stream error event and end the body.
    :param error_message: the message of that error.
    :param break_after: after this many pieces, close the connection abruptly (no finish, no usage).
    :param delay_s: pause before every event after the first, watching for the client hanging up.
    :param framing: how the response body is delimited (see the module docstring).
    """

    pieces: tuple[str, ...] = DEFAULT_PIECES
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error_after: int | None = None
    error_message: str = "the server is overloaded"
    break_after: int | None = None
    delay_s: float = 0.0
    framing: Framing = "close"

    @property
    def text(self) -> str:
        """The full text of all pieces."""
        return "".join(self.pieces)

    @property
    def stop_after(self) -> int | None:
        """After how many pieces the stream stops early (error or break), if it does."""
        return self.error_after if self.error_after is not None else self.break_after

    @property
    def sent_text(self) -> str:
        """The text of the pieces actually written before an error or a break."""
        stop = self.stop_after
        return self.text if stop is None else "".join(self.pieces[:stop])


@dataclass(frozen=True)
class AnthropicScript(Script):
    """An Anthropic Messages stream.

    `usage` is `{"input_tokens": ..., "output_tokens": ...}`: the input count goes in `message_start`
    (with `start_output_tokens`, as the API reports it before generating) and the final cumulative output
    count in `message_delta`.

    :param error_type: the `error.type` of a mid-stream error event.
    """

    finish_reason: str | None = "end_turn"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(ANTHROPIC_USAGE))
    start_output_tokens: int = 1
    error_type: str = "overloaded_error"


@dataclass(frozen=True)
class OllamaScript(Script):
    """An Ollama /api/chat stream. `usage` is `{"prompt_eval_count": ..., "eval_count": ...}`."""

    finish_reason: str | None = "stop"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(OLLAMA_USAGE))


@dataclass(frozen=True)
class GeminiScript(Script):
    """A Gemini streamGenerateContent stream. `usage` is a `usageMetadata` object (camelCase counts).

    :param usage_on_every_chunk: also send the running usage (prompt and total so far) on every chunk, as
        the Gemini API does; the last chunk carries the final counts.
    :param error_code: the HTTP-style `error.code` of a mid-stream error event.
    :param error_status: the `error.status` of a mid-stream error event.
    """

    finish_reason: str | None = "STOP"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(GEMINI_USAGE))
    usage_on_every_chunk: bool = False
    error_code: int = 503
    error_status: str = "UNAVAILABLE"


S = TypeVar("S", bound=Script)


# -- requests ------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request a server received, and what became of its response.

    :param pieces_sent: content pieces successfully written.
    :param completed: the response was written to its scripted end (or its scripted error or break).
    :param client_closed_at: `time.perf_counter()` when the server noticed the client had hung up while the
        response was still being written; None if it never did.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    received_at: float
    stream: bool = False
    pieces_sent: int = 0
    completed: bool = False
    client_closed_at: float | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)


class ClientClosed(Exception):
    """The client closed (or reset) the connection while the response was being written."""


# -- the HTTP machinery --------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        owner = self.server.owner
        parts = urlsplit(self.path)
        record = RecordedRequest(
            method="POST",
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.perf_counter(),
        )
        script = owner.current_script()
        owner.add_request(record)
        self.chunked = False
        self.first_event = True
        try:
            owner.respond(self, script, record)
            record.completed = True
        except ClientClosed:
            owner.note_client_closed(record)
        finally:
            owner.note_finished(record)

    # -- writing ---------------------------------------------------------------------------------

    def send_json(self, status: int, payload: Any) -> None:
        """A complete JSON response with a Content-Length."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self._write(data)

    def start_stream(self, content_type: str, framing: Framing) -> None:
        """Send the headers of a streamed body delimited as `framing` says."""
        self.chunked = framing == "chunked"
        if self.chunked:
            self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def send_event(self, data: bytes, delay_s: float) -> None:
        """Write one piece of the streamed body (pausing `delay_s` before all but the first), flushed."""
        if not self.first_event:
            self._pause(delay_s)
        self.first_event = False
        if self.chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self._write(data)

    def end_stream(self) -> None:
        """End the streamed body properly (the terminating chunk, with chunked framing)."""
        if self.chunked:
            self._write(b"0\r\n\r\n")

    def drop(self) -> None:
        """End the response abruptly, mid-body: send FIN now, with no further framing."""
        self.connection.shutdown(socket.SHUT_WR)
        self.close_connection = True

    def _write(self, data: bytes) -> None:
        self._check_client()
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ClientClosed from error

    def _check_client(self, timeout: float = 0.0) -> None:
        """Wait up to `timeout` for the socket to become readable; raise `ClientClosed` on EOF or reset."""
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if readable and not self.connection.recv(4096):
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ProviderServer[Any]


class ProviderServer(Generic[S]):
    """Lifecycle, scripting and request records shared by the provider servers.

    Use as a context manager or call `start()` / `stop()`. Subclasses set `script_class` and implement
    `respond`.
    """

    script_class: ClassVar[type[Script]] = Script
    name: ClassVar[str] = "provider"

    def __init__(self, script: S | None = None) -> None:
        self._script: S = script or self.script_class()  # type: ignore[assignment]
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ProviderServer[S]:
        """Bind an ephemeral loopback port and serve in a background thread."""
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-server", daemon=True
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

    def __enter__(self) -> ProviderServer[S]:
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
        """The server's base URL, `http://127.0.0.1:PORT` (the SDKs add the API paths)."""
        return f"http://127.0.0.1:{self.port}"

    # -- configuration ---------------------------------------------------------------------------

    def script(self, script: S | None = None, /, **changes: Any) -> S:
        """Set what the following requests receive: a script, and/or field changes to the default one.

        `pieces` may be any sequence of strings. Returns the script in effect.
        """
        base = script or self.script_class()
        if "pieces" in changes:
            changes["pieces"] = tuple(changes["pieces"])
        new: S = replace(base, **changes)  # type: ignore[type-var]
        with self._lock:
            self._script = new
        return new

    def current_script(self) -> S:
        """The script the next request is answered with."""
        with self._lock:
            return self._script

    # -- responding (subclasses) -----------------------------------------------------------------

    def respond(self, handler: _Handler, script: S, record: RecordedRequest) -> None:
        """Write the response to `record` as `script` says."""
        raise NotImplementedError

    @staticmethod
    def stream_pieces(
        handler: _Handler, script: Script, record: RecordedRequest, encode: Any, error_event: bytes
    ) -> bool:
        """Write the pieces, one `encode(number, piece)` event each; handle `error_after` and `break_after`.

        :returns: True when the stream may go on to its finish events, False when it was ended early.
        """
        for number, piece in enumerate(script.pieces):
            if script.error_after is not None and number >= script.error_after:
                break
            if script.break_after is not None and number >= script.break_after:
                break
            handler.send_event(encode(number, piece), script.delay_s)
            record.pieces_sent += 1
        if script.error_after is not None:
            handler.send_event(error_event, script.delay_s)
            handler.end_stream()
            return False
        if script.break_after is not None:
            handler.drop()
            return False
        return True

    # -- what happened ---------------------------------------------------------------------------

    def add_request(self, record: RecordedRequest) -> None:
        """Record a received request (called by the request handler)."""
        with self._lock:
            self._requests.append(record)
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


# -- Anthropic -----------------------------------------------------------------------------------------


def _sse(event: str | None, payload: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


class AnthropicServer(ProviderServer[AnthropicScript]):
    """The Anthropic Messages API (`POST /v1/messages`), streamed as SSE or as one JSON message."""

    script_class = AnthropicScript
    name = "anthropic"
    PATH = "/v1/messages"

    def respond(self, handler: _Handler, script: AnthropicScript, record: RecordedRequest) -> None:
        body = record.body
        if record.path != self.PATH or not isinstance(body, dict):
            error = {"type": "not_found_error", "message": f"no route {record.path}"}
            handler.send_json(404, {"type": "error", "error": error})
            return
        record.stream = bool(body.get("stream"))
        model = script.model or body.get("model") or "claude-test"
        message_id = f"msg_test{id(record):x}"
        if not record.stream:
            handler.send_json(200, self._message(script, model, message_id))
            return
        handler.start_stream("text/event-stream; charset=utf-8", script.framing)
        usage = script.usage
        start_usage: dict[str, Any] | None = None
        if usage is not None:  # only the counts the script gives: a missing one is missing on the wire too
            start_usage = {}
            if "input_tokens" in usage:
                start_usage.update(
                    input_tokens=usage["input_tokens"], cache_creation_input_tokens=0, cache_read_input_tokens=0
                )
            if "output_tokens" in usage:
                start_usage["output_tokens"] = script.start_output_tokens
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if start_usage is not None:
            message["usage"] = start_usage
        handler.send_event(_sse("message_start", {"type": "message_start", "message": message}), script.delay_s)
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        handler.send_event(_sse("content_block_start", block), script.delay_s)
        handler.send_event(_sse("ping", {"type": "ping"}), script.delay_s)

        def encode(number: int, piece: str) -> bytes:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            return _sse("content_block_delta", delta)

        error = {"type": "error", "error": {"type": script.error_type, "message": script.error_message}}
        if not self.stream_pieces(handler, script, record, encode, _sse("error", error)):
            return
        handler.send_event(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}), script.delay_s)
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": script.finish_reason, "stop_sequence": None},
        }
        if usage is not None:
            message_delta["usage"] = {k: v for k, v in usage.items() if k == "output_tokens"}
        handler.send_event(_sse("message_delta", message_delta), script.delay_s)
        handler.send_event(_sse("message_stop", {"type": "message_stop"}), script.delay_s)
        handler.end_stream()

    @staticmethod
    def _message(script: AnthropicScript, model: str, message_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": script.text}],
            "stop_reason": script.finish_reason,
            "stop_sequence": None,
        }
        if script.usage is not None:
            payload["usage"] = dict(script.usage)
        return payload


# -- Ollama --------------------------------------------------------------------------------------------


def _ndjson(payload: Any) -> bytes:
    return (json.dumps(payload) + "\n").encode()


class OllamaServer(ProviderServer[OllamaScript]):
    """Ollama's chat API (`POST /api/chat`), streamed as NDJSON or as one JSON object."""

    script_class = OllamaScript
    name = "ollama"
    PATH = "/api/chat"
    CREATED_AT = "2025-01-01T00:00:00.000000Z"

    def respond(self, handler: _Handler, script: OllamaScript, record: RecordedRequest) -> None:
        body = record.body
        if record.path != self.PATH or not isinstance(body, dict):
            handler.send_json(404, {"error": f"no route {record.path}"})
            return
        record.stream = bool(body.get("stream"))
        model = script.model or body.get("model") or "ollama-test"
        if not record.stream:
            handler.send_json(200, self._final(script, model, script.text))
            return
        handler.start_stream("application/x-ndjson", script.framing)

        def encode(number: int, piece: str) -> bytes:
            return _ndjson(
                {
                    "model": model,
                    "created_at": self.CREATED_AT,
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
            )

        if not self.stream_pieces(handler, script, record, encode, _ndjson({"error": script.error_message})):
            return
        handler.send_event(_ndjson(self._final(script, model, "")), script.delay_s)
        handler.end_stream()

    def _final(self, script: OllamaScript, model: str, content: str) -> dict[str, Any]:
        """The `done: true` object: the last line of a stream, or the whole non-streamed reply."""
        payload: dict[str, Any] = {
            "model": model,
            "created_at": self.CREATED_AT,
            "message": {"role": "assistant", "content": content},
            "done": True,
        }
        if script.finish_reason is not None:
            payload["done_reason"] = script.finish_reason
        payload.update({"total_duration": 5_000_000, "load_duration": 1_000_000})
        if script.usage is not None:
            payload["prompt_eval_count"] = script.usage["prompt_eval_count"]
            payload["prompt_eval_duration"] = 1_000_000
            payload["eval_count"] = script.usage["eval_count"]
            payload["eval_duration"] = 2_000_000
        return payload


# -- Gemini --------------------------------------------------------------------------------------------

_GEMINI_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<method>\w+)$")


def _data(payload: Any) -> bytes:
    """One Gemini SSE event (the API ends its lines with CRLF)."""
    return f"data: {json.dumps(payload)}\r\n\r\n".encode()


class GeminiServer(ProviderServer[GeminiScript]):
    """The Gemini Developer API: `:streamGenerateContent?alt=sse` (SSE) and `:generateContent` (JSON)."""

    script_class = GeminiScript
    name = "gemini"
    METHODS = ("streamGenerateContent", "generateContent")

    def respond(self, handler: _Handler, script: GeminiScript, record: RecordedRequest) -> None:
        match = _GEMINI_PATH.match(record.path)
        if match is None or match["method"] not in self.METHODS or not isinstance(record.body, dict):
            error = {"code": 404, "message": f"no route {record.path}", "status": "NOT_FOUND"}
            handler.send_json(404, {"error": error})
            return
        model = script.model or match["model"]
        record.stream = match["method"] == "streamGenerateContent"
        if not record.stream:
            handler.send_json(200, self._response(script, model, script.text, finish=True, usage=script.usage))
            return
        handler.start_stream("text/event-stream", script.framing)
        last = len(script.pieces) - 1
        early = script.stop_after is not None

        def encode(number: int, piece: str) -> bytes:
            final = number == last and not early
            usage = script.usage if final else self._running_usage(script)
            return _data(self._response(script, model, piece, finish=final, usage=usage))

        error = {"error": {"code": script.error_code, "message": script.error_message, "status": script.error_status}}
        if not self.stream_pieces(handler, script, record, encode, _data(error)):
            return
        if not script.pieces:  # nothing carried the finish reason and usage: send them on their own
            final = self._response(script, model, "", finish=True, usage=script.usage)
            handler.send_event(_data(final), script.delay_s)
        handler.end_stream()

    @staticmethod
    def _running_usage(script: GeminiScript) -> dict[str, int] | None:
        if not script.usage_on_every_chunk or script.usage is None:
            return None
        prompt = script.usage.get("promptTokenCount", 0)
        return {"promptTokenCount": prompt, "totalTokenCount": prompt}

    @staticmethod
    def _response(
        script: GeminiScript, model: str, text: str, *, finish: bool, usage: dict[str, int] | None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish and script.finish_reason is not None:
            candidate["finishReason"] = script.finish_reason
        payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "resp-test"}
        if usage is not None:
            payload["usageMetadata"] = dict(usage)
        return payload
