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

Tool calls: a script's `tool_calls` (`ScriptedToolCall`: name, arguments, optional id, how many fragments
the arguments JSON is split into) are sent after the text pieces, each in its format's own shape:

- Anthropic: one `tool_use` content block per call (after the text block, if there is text):
  `content_block_start` with `{"type": "tool_use", "id", "name", "input": {}}`, an empty `input_json_delta`
  (as the API sends first), one `input_json_delta.partial_json` fragment per piece, `content_block_stop`;
  then `message_delta` with the script's `stop_reason` (`AnthropicScript.calling` makes it `"tool_use"`).
- Ollama: `message.tool_calls` (`{"function": {"index", "name", "arguments": {...}}}`, arguments a whole
  object, as Ollama never splits them), all calls on one NDJSON line or one line per call
  (`OllamaScript.tool_call_lines`); the final line says `done_reason: "stop"`, as Ollama does after tool calls.
- Gemini: `functionCall {name, args}` parts (with `id` only when the call has one, since the Developer API
  usually sends none), all in one chunk or one chunk per call (`GeminiScript.tool_call_chunks`), the last
  chunk carrying `finishReason: "STOP"` (or a chunk of its own, `finish_chunk`, as Gemini 3 models do).

A server answers the next requests with queued scripts, one each (`server.queue(round1, round2, ...)`),
then with the standing script set by `server.script(...)`: that is how a test scripts a tool loop, round by
round. `ScriptClass.calling(*calls)` builds a round that only calls tools, with the format's finish reason.

Every request is recorded (`RecordedRequest`: path, query, headers, parsed JSON body, pieces written,
the ids of the tool calls sent, whether the script ran to its end, when the client hung up mid-response),
so a test can check what the SDK sent: the tool definitions and, in later rounds, the assistant's tool
calls and the tool results.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar
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
class ScriptedToolCall:
    """One tool call a server sends.

    :param name: the tool's name.
    :param arguments: the arguments object; its JSON (`json.dumps`) is what the fragments join to.
    :param id: the call id; None lets a format that needs one generate it (`call_<request>_<n>` for OpenAI,
        `toolu_<request>_<n>` for Anthropic) and a format where it is optional (Ollama, Gemini) send none.
    :param fragments: how many pieces the arguments JSON is split into, where the format streams it in
        pieces (OpenAI, Anthropic); fewer when the JSON is shorter than that.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    fragments: int = 3

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON text the fragments join to."""
        return json.dumps(self.arguments)

    def argument_fragments(self) -> tuple[str, ...]:
        """The arguments JSON split into `fragments` non-empty pieces of about equal length."""
        text = self.arguments_json
        count = max(1, min(self.fragments, len(text)))
        bounds = [round(i * len(text) / count) for i in range(count + 1)]
        return tuple(text[start:end] for start, end in itertools.pairwise(bounds))

    def wire_id(self, prefix: str, request_number: int, index: int) -> str:
        """The id to send: the call's own, else one made from the request's number and the call's index."""
        return self.id or f"{prefix}{request_number}_{index}"


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
    :param tool_calls: the tool calls sent after the pieces (not sent when the stream stops early).
    """

    TOOL_FINISH_REASON: ClassVar[str | None] = None
    """The finish reason the format gives a reply that calls tools."""

    pieces: tuple[str, ...] = DEFAULT_PIECES
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error_after: int | None = None
    error_message: str = "the server is overloaded"
    break_after: int | None = None
    delay_s: float = 0.0
    framing: Framing = "close"
    tool_calls: tuple[ScriptedToolCall, ...] = ()

    @classmethod
    def calling(cls, *calls: ScriptedToolCall, **changes: Any) -> Self:
        """A reply that calls `calls`, with no text unless `pieces` is given, and the format's tool finish reason."""
        changes["pieces"] = tuple(changes.get("pieces", ()))
        changes.setdefault("finish_reason", cls.TOOL_FINISH_REASON)
        return cls(tool_calls=tuple(calls), **changes)

    @classmethod
    def replying(cls, *pieces: str, **changes: Any) -> Self:
        """A text reply made of `pieces` (the round after the tool results, typically)."""
        return cls(pieces=tuple(pieces), **changes)

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
    :param empty_json_delta: open every tool call's input with an empty `partial_json` delta, as the API does.
    """

    TOOL_FINISH_REASON: ClassVar[str | None] = "tool_use"

    finish_reason: str | None = "end_turn"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(ANTHROPIC_USAGE))
    start_output_tokens: int = 1
    error_type: str = "overloaded_error"
    empty_json_delta: bool = True


@dataclass(frozen=True)
class OllamaScript(Script):
    """An Ollama /api/chat stream. `usage` is `{"prompt_eval_count": ..., "eval_count": ...}`.

    :param tool_call_lines: `"one"` puts all tool calls in one NDJSON line's `message.tool_calls`; `"each"`
        sends one line per call.
    """

    TOOL_FINISH_REASON: ClassVar[str | None] = "stop"  # Ollama has no finish reason of its own for tool calls

    finish_reason: str | None = "stop"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(OLLAMA_USAGE))
    tool_call_lines: Literal["one", "each"] = "one"


@dataclass(frozen=True)
class GeminiScript(Script):
    """A Gemini streamGenerateContent stream. `usage` is a `usageMetadata` object (camelCase counts).

    :param usage_on_every_chunk: also send the running usage (prompt and total so far) on every chunk, as
        the Gemini API does; the last chunk carries the final counts.
    :param error_code: the HTTP-style `error.code` of a mid-stream error event.
    :param error_status: the `error.status` of a mid-stream error event.
    :param tool_call_chunks: `"one"` puts all `functionCall` parts in one chunk; `"each"` sends one chunk per call.
    :param calls_with_last_piece: put the first chunk of `functionCall` parts in the chunk of the last text
        piece (a reply whose one chunk holds both text and calls), instead of a chunk after it.
    :param finish_chunk: send the finish reason and usage in a chunk of their own after the calls, as Gemini 3
        models do, instead of on the last chunk with content.
    """

    TOOL_FINISH_REASON: ClassVar[str | None] = "STOP"  # Gemini has no finish reason of its own for tool calls

    finish_reason: str | None = "STOP"
    usage: dict[str, int] | None = field(default_factory=lambda: dict(GEMINI_USAGE))
    usage_on_every_chunk: bool = False
    error_code: int = 503
    error_status: str = "UNAVAILABLE"
    tool_call_chunks: Literal["one", "each"] = "one"
    calls_with_last_piece: bool = False
    finish_chunk: bool = False


S = TypeVar("S", bound=Script)


# -- requests ------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request a server received, and what became of its response.

    :param pieces_sent: content pieces successfully written.
    :param tool_call_ids: the ids of the tool calls sent in the response (None where the format sent none).
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
    number: int = 0
    """The request's position among those the server received, from 1."""
    pieces_sent: int = 0
    tool_call_ids: list[str | None] = field(default_factory=list)
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
        script = owner.take_script()
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


T = TypeVar("T")


class ScriptQueue(Generic[T]):
    """The scripts a loopback server answers with: a standing one, and queued ones used first, one each.

    The server sets `_lock` (a `threading.Condition`), `_script` and `_queued` (a deque).
    """

    _lock: threading.Condition
    _script: T
    _queued: deque[T]

    def current_script(self) -> T:
        """The standing script: what requests are answered with once the queued scripts are used up."""
        with self._lock:
            return self._script

    def queue(self, *scripts: T) -> None:
        """Answer the next requests with `scripts`, one each, in order; after them, the standing script.

        A tool loop is scripted this way: round 1 calls tools, round 2 (which carries the results) replies.
        """
        with self._lock:
            self._queued.extend(scripts)

    @property
    def queued(self) -> int:
        """How many queued scripts are still unused."""
        with self._lock:
            return len(self._queued)

    def take_script(self) -> T:
        """The script for a request that just arrived: the next queued one, else the standing one."""
        with self._lock:
            return self._queued.popleft() if self._queued else self._script


class ProviderServer(ScriptQueue[S], Generic[S]):
    """Lifecycle, scripting and request records shared by the provider servers.

    Use as a context manager or call `start()` / `stop()`. Subclasses set `script_class` and implement
    `respond`.
    """

    script_class: ClassVar[type[Script]] = Script
    name: ClassVar[str] = "provider"

    def __init__(self, script: S | None = None) -> None:
        self._script: S = script or self.script_class()  # type: ignore[assignment]
        self._queued: deque[S] = deque()
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
        new: S = replace(base, **changes)  # type: ignore[assignment]
        with self._lock:
            self._script = new
        return new

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
            handler.send_json(200, self._message(script, record, model, message_id))
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
        has_text = bool(script.pieces) or not script.tool_calls  # the API sends no empty text block before tools
        if has_text:
            block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            handler.send_event(_sse("content_block_start", block), script.delay_s)
        handler.send_event(_sse("ping", {"type": "ping"}), script.delay_s)

        def encode(number: int, piece: str) -> bytes:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            return _sse("content_block_delta", delta)

        failure = {"type": script.error_type, "message": script.error_message}
        if not self.stream_pieces(handler, script, record, encode, _sse("error", {"type": "error", "error": failure})):
            return
        if has_text:
            handler.send_event(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}), script.delay_s)
        for number, call in enumerate(script.tool_calls):
            self._stream_tool_use(handler, script, record, number, int(has_text) + number, call)
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
    def _stream_tool_use(
        handler: _Handler,
        script: AnthropicScript,
        record: RecordedRequest,
        number: int,
        index: int,
        call: ScriptedToolCall,
    ) -> None:
        """One `tool_use` content block: its start, its input as `input_json_delta` fragments, its stop."""
        call_id = call.wire_id("toolu_", record.number, number)
        record.tool_call_ids.append(call_id)
        start = {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": call_id, "name": call.name, "input": {}},
        }
        handler.send_event(_sse("content_block_start", start), script.delay_s)
        fragments = ("", *call.argument_fragments()) if script.empty_json_delta else call.argument_fragments()
        for fragment in fragments:
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            }
            handler.send_event(_sse("content_block_delta", delta), script.delay_s)
        handler.send_event(_sse("content_block_stop", {"type": "content_block_stop", "index": index}), script.delay_s)

    @staticmethod
    def _message(script: AnthropicScript, record: RecordedRequest, model: str, message_id: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if script.text or not script.tool_calls:
            content.append({"type": "text", "text": script.text})
        for number, call in enumerate(script.tool_calls):
            call_id = call.wire_id("toolu_", record.number, number)
            record.tool_call_ids.append(call_id)
            content.append({"type": "tool_use", "id": call_id, "name": call.name, "input": call.arguments})
        payload: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
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
            handler.send_json(200, self._final(script, model, script.text, self._tool_calls(script, record)))
            return
        handler.start_stream("application/x-ndjson", script.framing)

        def line(content: str, tool_calls: list[dict[str, Any]] | None = None) -> bytes:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return _ndjson({"model": model, "created_at": self.CREATED_AT, "message": message, "done": False})

        if not self.stream_pieces(
            handler, script, record, lambda number, piece: line(piece), _ndjson({"error": script.error_message})
        ):
            return
        calls = self._tool_calls(script, record)
        groups = [calls] if script.tool_call_lines == "one" else [[call] for call in calls]
        for group in groups:
            if group:
                handler.send_event(line("", group), script.delay_s)
        handler.send_event(_ndjson(self._final(script, model, "")), script.delay_s)
        handler.end_stream()

    @staticmethod
    def _tool_calls(script: OllamaScript, record: RecordedRequest) -> list[dict[str, Any]]:
        """The script's tool calls as Ollama writes them: arguments a whole object, an id only when given."""
        calls: list[dict[str, Any]] = []
        for number, call in enumerate(script.tool_calls):
            entry: dict[str, Any] = {"function": {"index": number, "name": call.name, "arguments": call.arguments}}
            if call.id is not None:
                entry["id"] = call.id
            record.tool_call_ids.append(call.id)
            calls.append(entry)
        return calls

    def _final(
        self, script: OllamaScript, model: str, content: str, tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The `done: true` object: the last line of a stream, or the whole non-streamed reply."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        payload: dict[str, Any] = {
            "model": model,
            "created_at": self.CREATED_AT,
            "message": message,
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
        call_parts = self._call_parts(script, record)
        if not record.stream:
            parts = ([{"text": script.text}] if script.text or not call_parts else []) + call_parts
            handler.send_json(200, self._response(script, model, parts, finish=True, usage=script.usage))
            return
        handler.start_stream("text/event-stream", script.framing)
        groups = ([call_parts] if call_parts else []) if script.tool_call_chunks == "one" else [[p] for p in call_parts]
        last = len(script.pieces) - 1
        early = script.stop_after is not None
        merged = groups.pop(0) if groups and script.pieces and script.calls_with_last_piece else []
        finish_on_content = not script.finish_chunk

        def encode(number: int, piece: str) -> bytes:
            final = number == last and not early and not groups and finish_on_content
            usage = script.usage if final else self._running_usage(script)
            parts = [{"text": piece}, *(merged if number == last else [])]
            return _data(self._response(script, model, parts, finish=final, usage=usage))

        error = {"error": {"code": script.error_code, "message": script.error_message, "status": script.error_status}}
        if not self.stream_pieces(handler, script, record, encode, _data(error)):
            record.tool_call_ids.clear()  # the stream stopped before any call was sent
            return
        for number, group in enumerate(groups):
            final = number == len(groups) - 1 and finish_on_content
            usage = script.usage if final else self._running_usage(script)
            handler.send_event(_data(self._response(script, model, group, finish=final, usage=usage)), script.delay_s)
        if script.finish_chunk or not (script.pieces or groups):
            # nothing carried the finish reason and usage: send them on their own
            closing = self._response(script, model, [{"text": ""}], finish=True, usage=script.usage)
            handler.send_event(_data(closing), script.delay_s)
        handler.end_stream()

    @staticmethod
    def _call_parts(script: GeminiScript, record: RecordedRequest) -> list[dict[str, Any]]:
        """The script's tool calls as `functionCall` parts: whole `args` objects, an `id` only when given."""
        parts: list[dict[str, Any]] = []
        for call in script.tool_calls:
            function_call: dict[str, Any] = {"name": call.name, "args": call.arguments}
            if call.id is not None:
                function_call["id"] = call.id
            record.tool_call_ids.append(call.id)
            parts.append({"functionCall": function_call})
        return parts

    @staticmethod
    def _running_usage(script: GeminiScript) -> dict[str, int] | None:
        if not script.usage_on_every_chunk or script.usage is None:
            return None
        prompt = script.usage.get("promptTokenCount", 0)
        return {"promptTokenCount": prompt, "totalTokenCount": prompt}

    @staticmethod
    def _response(
        script: GeminiScript, model: str, parts: list[dict[str, Any]], *, finish: bool, usage: dict[str, int] | None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish and script.finish_reason is not None:
            candidate["finishReason"] = script.finish_reason
        payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "resp-test"}
        if usage is not None:
            payload["usageMetadata"] = dict(usage)
        return payload
