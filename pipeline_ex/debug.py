"""`PIPELINE_STREAM_DEBUG=1`: log every raw provider chunk and typed event to stderr, secrets redacted."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

from pipeline_ex.redaction import redact

ENV_VAR = "PIPELINE_STREAM_DEBUG"
_TRUE = {"1", "true", "yes", "on"}


def stream_debug_enabled() -> bool:
    """Whether `PIPELINE_STREAM_DEBUG` asks for debug logging (read when a run starts)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


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
