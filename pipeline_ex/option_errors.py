"""Describe invalid options (of a handler class or a provider) the same way everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import ValidationError


def describe_option_errors(error: ValidationError, known: Iterable[str]) -> list[str]:
    """One line per problem: an unknown option (with "did you mean"), or a bad value and why."""
    names = list(known)
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, names, n=1)
            problems.append(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif key:
            problems.append(f"option {key!r}: {message}")
        else:  # a check across several options
            problems.append(message)
    return problems
