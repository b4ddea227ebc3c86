"""Describe invalid options (of a handler class or a provider) the same way everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import ValidationError


def describe_option_errors(error: ValidationError, known: Iterable[str]) -> list[str]:
    """One line per problem: an unknown option (with "did you mean"), or a bad value and why."""
    return [problem for _, problem in option_problems(error, known)]


def option_problems(error: ValidationError, known: Iterable[str]) -> list[tuple[str | None, str]]:
    """Each problem with the top-level option it is about (None for a check across several options)."""
    names = list(known)
    problems: list[tuple[str | None, str]] = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        top = str(item["loc"][0]) if item["loc"] else None
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, names, n=1)
            problems.append((top, f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")))
        elif key:
            problems.append((top, f"option {key!r}: {message}"))
        else:  # a check across several options
            problems.append((None, message))
    return problems
