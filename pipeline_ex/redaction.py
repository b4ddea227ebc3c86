"""Secrets never leave the process: text that does is redacted by value, and by pattern.

Redacted by value are the secrets this process holds:
- the environment variables providers read their keys from (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`,
  `GOOGLE_API_KEY`, `GEMINI_API_KEY`, any `api_key_env` a step names, the variables of `{env: VAR}`
  secrets), registered as providers are checked and built;
- the server's token (`PIPELINE_SERVER_API_KEY`, or the key `create_app` was given);
- any value given to `register_secret`.

A variable's value is read each time text is redacted, so a key set after start-up is covered too. Values
shorter than `MIN_SECRET_LENGTH` are not redacted (a two-letter "key" would blank out ordinary words).
Well-known key shapes (`sk-...`, `AIza...`, `Bearer ...`) are redacted as well, for keys this process does
not hold, and mapping values under secret-looking keys (`api_key`, `authorization`, `..._token`).

Every place text leaves the process goes through here: HTTP bodies and SSE frames (`sse.error_payload`),
the failing step's `Done.error.message` and exception message, the CLI's error lines, the console summary,
the debug log, cassettes and recorder saves, and the log records of pipeline_ex's own loggers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
MIN_SECRET_LENGTH = 8
SECRET_ENV_VARS: frozenset[str] = frozenset(
    {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY", "PIPELINE_SERVER_API_KEY"}
)
"""The variables every process treats as secrets, whether or not a workflow uses them."""

_secret_env_vars: set[str] = set(SECRET_ENV_VARS)
_secret_values: set[str] = set()
_watched: tuple[str, ...] = tuple(sorted(_secret_env_vars))
"""The secret variables, in a fixed order: their current values are the key of the cached pattern."""
_registrations = 0
_cached: tuple[tuple[int, tuple[str | None, ...]], re.Pattern[str]] | None = None

# Whole-key matches only: "prompt_tokens" is a count, "access_token" is a secret.
_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|secret|password|(^|[_-])token)$", re.IGNORECASE)
_SECRET_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|gsk_[A-Za-z0-9]{8,}"
    r"|Bearer\s+[A-Za-z0-9._\-]{8,})"
)


def register_secret_env(*names: str) -> None:
    """Treat the values of these environment variables as secrets from now on."""
    global _watched, _registrations
    added = {name for name in names if name} - _secret_env_vars
    if added:
        _secret_env_vars.update(added)
        _watched = tuple(sorted(_secret_env_vars))
        _registrations += 1


def register_secret(value: str | None) -> None:
    """Treat `value` as a secret from now on (ignored when empty or shorter than `MIN_SECRET_LENGTH`)."""
    global _registrations
    if value and len(value) >= MIN_SECRET_LENGTH and value not in _secret_values:
        _secret_values.add(value)
        _registrations += 1


def secret_values() -> tuple[str, ...]:
    """The secret values held right now, longest first (so a key that contains another goes whole)."""
    found = set(_secret_values)
    for name in _secret_env_vars:
        value = os.environ.get(name)
        if value and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def _pattern() -> re.Pattern[str]:
    """The pattern for the secrets held now; rebuilt only when a registration or a variable changed."""
    global _cached
    key = (_registrations, tuple(map(os.environ.get, _watched)))
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    held = "|".join(re.escape(value) for value in secret_values())
    pattern = re.compile(f"{held}|{_SECRET_SHAPES.pattern}" if held else _SECRET_SHAPES.pattern)
    _cached = (key, pattern)
    return pattern


def redact_text(text: str) -> str:
    """`text` with every secret value the process holds, and every well-known key shape, replaced by `***`."""
    if not text:
        return text
    return _pattern().sub(REDACTED, text)


def redact(value: Any, key: str = "") -> Any:
    """Return `value` with secrets replaced by `***`, recursively through mappings and lists.

    Strings are redacted by value and shape; any value under a secret-looking key is replaced whole.
    """
    return _redact(value, key, _pattern())


def _redact(value: Any, key: str, pattern: re.Pattern[str]) -> Any:
    if key and _SECRET_KEYS.search(key) and value not in (None, "", 0):
        return REDACTED
    if isinstance(value, str):
        return pattern.sub(REDACTED, value) if value else value
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k), pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, "", pattern) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message and its formatted traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place; never drops it."""
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def redacting_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with a `RedactingFilter` attached (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
