"""The HTTP protocols of uvicorn, with a deadline for request headers (slowloris).

uvicorn (0.3x to 0.5x, h11 and httptools alike) has no deadline for the head of a request: its keep-alive
timer only runs while a connection is completely idle and is cancelled by the first byte of a new request,
so a client that sends one header byte every few seconds holds a connection (and its memory) for ever.
uvicorn offers no option for this, so it is added here, in a small subclass of whichever protocol class
uvicorn would pick (`auto` means httptools when installed, else h11): from the moment a connection starts
waiting for a request (when it opens, and after each response), the whole head must arrive within
`read_timeout` seconds, or the connection gets a `408` and is closed. An idle connection that sent nothing
is closed quietly. The body has its own deadline in the app (see `security.read_json_body`), where the
error can be the server's JSON.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

DEFAULT_READ_TIMEOUT = 10.0

_TIMEOUT_BODY = json.dumps(
    {"error": {"type": "timeout", "message": "the request headers did not arrive in time; the connection is closed"}}
).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


def uvicorn_protocol(http: str = "auto", *, read_timeout: float = DEFAULT_READ_TIMEOUT) -> type[asyncio.Protocol]:
    """The uvicorn HTTP protocol class `http` (`auto`, `h11` or `httptools`), with a deadline for request heads."""
    if http == "auto":  # uvicorn's own rule: httptools when it is installed
        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    elif http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown HTTP implementation {http!r}; use auto, h11 or httptools")
    return type(f"HeadDeadline{base.__name__}", (_HeadDeadline, base), {"read_timeout": read_timeout})


class _HeadDeadline:
    """Mixed into a uvicorn HTTP protocol: close connections whose request head is too slow to arrive."""

    read_timeout: float
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def _arm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.read_timeout, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request arrived in time and is being answered
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Start the connection's first deadline."""
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        """Count the bytes of a request head still being waited for."""
        self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        """After a response, the next request's head has its own deadline."""
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)  # type: ignore[misc]
