"""`PIPELINE_STREAM_DEBUG=1`: log every raw provider chunk and typed event to stderr, secrets redacted."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

ENV_VAR = "PIPELINE_STREAM_DEBUG"
_TRUE = {"1", "true", "yes", "on"}
# Whole-key matches only: "prompt_tokens" is a count, "access_token" is a secret.
_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|secret|password|(^|[_-])token)$", re.IGNORECASE)
_SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+[A-Za-z0-9._\-]{8,})"
)
REDACTED = "***"


def stream_debug_enabled() -> bool:
    """Whether `PIPELINE_STREAM_DEBUG` asks for debug logging (read when a run starts)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


def redact(value: Any, key: str = "") -> Any:
    """Return `value` with API keys and other secrets replaced by `***`, recursively."""
    if key and _SECRET_KEYS.search(key) and value not in (None, "", 0):
        return REDACTED
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: redact(v, k) for k, v in event_dict.items()}


def debug_logger() -> Any:
    """A structlog logger that writes redacted key-value lines to stderr."""
    import structlog  # only runs with debugging on; keeps start-up fast otherwise

    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _redact_processor,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
