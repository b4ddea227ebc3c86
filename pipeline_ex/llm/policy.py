"""Per-step limits and failure policy: `timeout`, `chunk_timeout`, `retries`, `on_handler_error`.

These are options of the step itself, not of the provider, so they are taken out of a step's options
before the provider sees them, and validated by the same model as a workflow's (`options.StepLimits`).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.options import LIMIT_EXPECTATIONS, STEP_OPTION_NAMES, OnHandlerError, StepLimits

_STREAMING_REJECTED = re.compile(
    r"stream(ing)?\b.*\b(not supported|unsupported|not available|not allowed|disabled)"
    r"|(does not|doesn't|cannot) (support )?stream",
    re.IGNORECASE,
)


class StepTimeout(Exception):
    """A step exceeded its `timeout` or went longer than `chunk_timeout` without a chunk."""


@dataclass(frozen=True)
class StepPolicy:
    """How one step is bounded and how it reacts to failures.

    :param timeout: seconds the whole step may take, retries included.
    :param chunk_timeout: the longest gap, in seconds, before the first chunk and between chunks.
    :param retries: extra attempts for failures before the first Delta was delivered. After a Delta
        a retry would deliver the same text twice, so the step fails instead.
    :param on_handler_error: "raise" stops the stream and fails the step; "log" logs each failing
        handler once and keeps streaming.
    """

    timeout: float | None = None
    chunk_timeout: float | None = None
    retries: int = 0
    on_handler_error: OnHandlerError = "raise"

    @property
    def has_limits(self) -> bool:
        """Whether the step needs a supervisor (time limits run on the event loop)."""
        return self.timeout is not None or self.chunk_timeout is not None

    @classmethod
    def take_from(cls, options: MutableMapping[str, Any]) -> StepPolicy:
        """Remove the step options from `options` and return them validated."""
        values = {name: options.pop(name) for name in STEP_OPTION_NAMES if name in options}
        try:
            # strict: a value given in Python must already have its type (True is not 1 retry, "5" no timeout)
            limits = StepLimits.model_validate(values, strict=True)
        except ValidationError as error:
            name = str(error.errors()[0]["loc"][0])
            raise ProviderConfigError(f"{name} must be {LIMIT_EXPECTATIONS[name]}, got {values[name]!r}") from None
        return cls(
            limits.timeout,
            limits.chunk_timeout,
            0 if limits.retries is None else limits.retries,
            limits.on_handler_error or "raise",
        )


_DROPPED_CONNECTION = frozenset(
    {
        "RemoteProtocolError",  # httpx / httpcore: "peer closed connection without sending complete message body"
        "ReadError",  # httpx / httpcore: the socket failed while reading the body
        "IncompleteRead",  # http.client
        "ProtocolError",  # urllib3: "Connection broken"
        "ChunkedEncodingError",  # requests
        "ClientPayloadError",  # aiohttp: the body ended early
        "ServerDisconnectedError",  # aiohttp
        "ConnectionResetError",
        "ConnectionAbortedError",
        "BrokenPipeError",
    }
)


def dropped_connection(error: BaseException) -> BaseException | None:
    """The transport failure behind `error` if the connection itself broke, else None.

    Provider SDKs wrap these (openai raises `APIConnectionError("Connection error.")` from an httpx
    `RemoteProtocolError`), so the whole cause chain is searched, by class name to avoid importing every
    HTTP client. A plain `ConnectionError` raised by a provider's own code is not a dropped connection.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _DROPPED_CONNECTION for cls in type(current).__mro__):
            return current
        current = current.__cause__ or current.__context__
    return None


def rejects_streaming(error: BaseException) -> bool:
    """Whether a provider error says streaming is not available for this model."""
    return bool(_STREAMING_REJECTED.search(str(error)))


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): 0.2 s, doubling, at most 5 s."""
    return float(min(0.2 * 2 ** (attempt - 1), 5.0))
