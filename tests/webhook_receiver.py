"""A real webhook receiver on 127.0.0.1 for the webhook handler's tests (`http.server` in a thread).

It records every POST it answers with 2xx, and can be told to misbehave: answer the next requests with an
error status (and `Retry-After`), close the connection without answering, or answer slowly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """What the receiver was sent, and how it will answer next."""

    url: str = ""
    batches: list[dict[str, Any]] = field(default_factory=list)
    """The bodies of the POSTs answered with 200, in arrival order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """The headers of every request, accepted or not."""
    requests: int = 0
    failures: list[tuple[int, str | None]] = field(default_factory=list)
    """(status, Retry-After) to answer the next requests with, one each, before answering 200 again."""
    close_next: int = 0
    """How many of the next requests get their connection closed without an answer."""
    delay: float = 0.0
    """Seconds to wait before answering each request."""
    stall_next: int = 0
    """How many of the next requests get no answer for `stall` seconds, then a closed connection."""
    stall: float = 1.0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, in the order received."""
        return [event for batch in self.batches for event in batch["events"]]


@contextmanager
def webhook_receiver(path: str = "/hook") -> Iterator[Receiver]:
    """Start a receiver on a free port of 127.0.0.1; its `url` ends with `path`."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.requests += 1
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                receiver.in_flight += 1
                receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                stall = receiver.stall_next > 0
                receiver.stall_next -= stall
                close = stall or receiver.close_next > 0
                receiver.close_next -= close and not stall
                failure = receiver.failures.pop(0) if receiver.failures and not close else None
            try:
                if receiver.delay or stall:
                    time.sleep(receiver.stall if stall else receiver.delay)
                if close:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if failure is not None:
                    status, retry_after = failure
                    reply = b'{"error": "try again"}' if status >= 500 or status == 429 else b'{"error": "bad batch"}'
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                else:
                    with receiver.lock:
                        receiver.batches.append(json.loads(body))
                    reply = b'{"ok": true}'
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            finally:
                with receiver.lock:
                    receiver.in_flight -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="webhook receiver", daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
