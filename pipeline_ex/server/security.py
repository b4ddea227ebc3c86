"""Request guards: an optional bearer token, checked in constant time, and a limit on body size."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request

API_KEY_ENV = "PIPELINE_SERVER_API_KEY"
DEFAULT_MAX_BODY = 64 * 1024


class RequestRejected(Exception):
    """A request the server refuses, with the HTTP status and a message safe to show the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def check_bearer(request: Request, api_key: str | None) -> None:
    """Require `Authorization: Bearer <api_key>` when a key is configured (constant-time comparison)."""
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestRejected(401, "missing or wrong bearer token")


async def read_json_body(request: Request, limit: int) -> Any:
    """Read a JSON body of at most `limit` bytes (checked while reading, not only by Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, f"request body larger than {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > limit:
            raise RequestRejected(413, f"request body larger than {limit} bytes")
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestRejected(400, "the request body is not valid JSON") from None
