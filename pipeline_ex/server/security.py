"""Request guards: the browser guard, a bearer token, strict JSON bodies and a strict `Last-Event-ID`.

The browser guard checks Host, Origin and Sec-Fetch-Site; the optional bearer token is compared in
constant time; JSON bodies only, bounded in size, time and depth.

Why each exists:
- A web page the user visits can send a cross-origin "simple request" (a `text/plain` or form body needs
  no CORS preflight) to a server on localhost. So runs start only from `application/json` bodies, and a
  request whose `Origin` (or `Sec-Fetch-Site`) says it came from another site is refused with 403.
- DNS rebinding points a foreign name at 127.0.0.1, which makes the attacker's page "same-origin" with the
  server. Only loopback `Host` values are accepted unless more are allowed; the check is Starlette's own
  `TrustedHostMiddleware`, with its refusal answered in the server's JSON error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline_ex.sse import END_ID

API_KEY_ENV = "PIPELINE_SERVER_API_KEY"
ALLOWED_HOSTS_ENV = "PIPELINE_SERVER_ALLOWED_HOSTS"
DEFAULT_MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 64
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SEQ = re.compile(r"[0-9]{1,18}")


class RequestRejected(Exception):
    """A request the server refuses, with the HTTP status and a message safe to show the client.

    :param reason: the limit or guard that refused it, for the server's metrics (None for a bad request).
    """

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, reason: str | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.reason = reason
        super().__init__(message)


Refuse = Callable[[int, str], Response]


class BrowserGuard:
    """ASGI middleware: refuse foreign `Host` values (DNS rebinding) and requests from other sites.

    :param allowed_hosts: host names (or `*.domain` patterns, or `*`) accepted besides the loopback ones.
    :param refuse: builds the error response (the server's JSON error shape).
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str], refuse: Refuse) -> None:
        self.app = app
        self.refuse = refuse
        self.allowed_hosts = [*LOOPBACK_HOSTS, *allowed_hosts]
        self._hosts = TrustedHostMiddleware(_accept, allowed_hosts=self.allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then pass it on (or answer with the refusal)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._hosts(scope, receive, _discard)
        if not scope.pop("pipeline_ex.host_accepted", False):
            host = Headers(scope=scope).get("host", "")
            message = (
                f"the Host header {host!r} is not one this server answers to (DNS rebinding protection); "
                "start the server with --allowed-hosts NAME[,NAME...] (or PIPELINE_SERVER_ALLOWED_HOSTS) to add it"
            )
            await self.refuse(400, message)(scope, receive, send)
            return
        problem = foreign_request(scope)
        if problem is not None:
            await self.refuse(403, problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _accept(scope: Scope, receive: Receive, send: Send) -> None:
    scope["pipeline_ex.host_accepted"] = True


async def _discard(message: Message) -> None:
    return None


def foreign_request(scope: Scope) -> str | None:
    """Why a request comes from another site (its `Origin` or `Sec-Fetch-Site`), or None.

    The page at `GET /` may be opened from anywhere (a link); everything else must come from the server's
    own origin, from a non-browser client (no `Origin`), or from the user typing the address.
    """
    if scope["method"] == "GET" and scope["path"] == "/":
        return None
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, headers.get("host", "")):
        return (
            f"requests from another origin ({origin!r}) are refused; "
            "call the API from its own page or from a non-browser client"
        )
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"requests from another site (Sec-Fetch-Site: {site}) are refused, wherever their origin"
    return None


def _same_origin(origin: str, host: str) -> bool:
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        served = urlsplit(f"{parts.scheme}://{host}")
        host_port = served.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    return bool(parts.hostname) and parts.hostname == served.hostname and origin_port == host_port


def check_bearer(request: Request, api_key: str | None) -> None:
    """Require `Authorization: Bearer <api_key>` when a key is configured (constant-time comparison)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestRejected(401, "missing or wrong bearer token", reason="bearer_token")


def check_json_content_type(request: Request) -> None:
    """Runs start only from `application/json` bodies (a charset parameter is fine); else 415."""
    declared = request.headers.get("content-type")
    media_type = (declared or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        got = f"got {declared!r}" if declared else "none was given"
        raise RequestRejected(415, f"the request body must be sent as Content-Type: application/json ({got})")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _check_value(value: Any) -> None:
    """Refuse JSON nested more than MAX_JSON_DEPTH deep, and strings with unpaired surrogates (iteratively)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestRejected(400, "the request body has a string with an unpaired surrogate") from None
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise RequestRejected(400, f"the request body is nested too deep (more than {MAX_JSON_DEPTH} levels)")
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)


async def read_json_body(request: Request, limit: int, read_timeout: float | None = None) -> Any:
    """Read a JSON body of at most `limit` bytes, within `read_timeout` seconds, and parse it strictly.

    The size is checked while reading, not only by Content-Length. Non-finite numbers, unpaired surrogates
    and nesting deeper than `MAX_JSON_DEPTH` are refused with 400.
    """
    check_json_content_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, f"request body larger than {limit} bytes", reason="max_body")
    body = bytearray()
    try:
        # asyncio's own timeout rather than anyio's `fail_after`: the same deadline and TimeoutError, at a
        # third of the cost per request (no cancel scope to set up; the server only ever runs on asyncio).
        async with asyncio.timeout(read_timeout):
            async for part in request.stream():
                body.extend(part)
                if len(body) > limit:
                    raise RequestRejected(413, f"request body larger than {limit} bytes", reason="max_body")
    except TimeoutError:
        raise RequestRejected(
            408,
            f"the request body did not arrive within {read_timeout:g} s",
            headers={"Connection": "close"},
            reason="read_timeout",
        ) from None
    if not body:
        return {}
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise RequestRejected(400, f"the request body is nested too deep (more than {MAX_JSON_DEPTH} levels)") from None
    except json.JSONDecodeError as error:
        where = f"{error.msg} at character {error.pos}"
        raise RequestRejected(400, f"the request body is not valid JSON ({where})") from None
    except (ValueError, UnicodeDecodeError) as error:  # NaN, Infinity, 1e999; or not UTF-8
        raise RequestRejected(400, f"the request body is not valid JSON ({error})") from None
    _check_value(value)
    return value


def parse_last_event_id(value: str, run_id: str) -> int | None:
    """The seq in a `Last-Event-ID` of `<run_id>:<seq>` (ASCII digits only); 400 otherwise.

    None for `<run_id>:end`, the id of a finished stream's end frame: the client has seen everything.
    """
    last_run, _, seq_text = value.rpartition(":")
    if last_run == run_id and seq_text == END_ID:
        return None
    if last_run != run_id or not _SEQ.fullmatch(seq_text):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise RequestRejected(400, f"Last-Event-ID must be '{run_id}:<seq>' (seq in ASCII digits), got {shown!r}")
    return int(seq_text)
