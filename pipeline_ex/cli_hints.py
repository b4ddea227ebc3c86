"""Hints for command-line arguments a command does not take, instead of argparse's bare usage error.

`pipeline-ex run FILE topic=cats` says inputs are given with `--input topic=cats`; a flag of another
command (`run --inputs`) says whose it is and what this command takes instead; a misspelt flag gets
"did you mean". argparse has no hook for this, so `main` parses with `parse_known_args` and hands the
leftovers here.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

SPECIFIC_HINTS: dict[tuple[str, str], str] = {
    ("run", "--inputs"): "--inputs is pipeline-ex batch's flag (a file of rows); for run, use --input NAME=VALUE",
}
"""(command, flag) -> the hint for a flag that users of one command often give to another."""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands, by name."""
    for action in parser._actions:  # argparse offers no public way to reach the subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]


def _owners(flag: str, commands: dict[str, argparse.ArgumentParser], current: str) -> list[str]:
    return [name for name, sub in commands.items() if name != current and flag in _flags(sub)]


def unrecognized_message(parser: argparse.ArgumentParser, command: str | None, extras: Sequence[str]) -> str:
    """The error for arguments that `command` (None: the top level) does not take, with a hint to fix them."""
    commands = subcommands(parser)
    here = commands.get(command, parser) if command is not None else parser
    prog = here.prog
    first = extras[0]
    flag = first.partition("=")[0] if first.startswith("--") else first
    specific = SPECIFIC_HINTS.get((command or "", flag))
    if specific is not None:
        return f"{prog}: error: unexpected argument {first!r}; {specific}"
    if first.startswith("-"):
        owners = _owners(flag, commands, command or "")
        if owners:
            whose = owners[0] if len(owners) == 1 else ", ".join(owners[:-1]) + " and " + owners[-1]
            return f"{prog}: error: {flag} is a flag of pipeline-ex {whose}, not of {prog}; see {prog} --help"
        close = difflib.get_close_matches(flag, _flags(here), n=1)
        if close:
            return f"{prog}: error: unknown flag {flag!r} (did you mean {close[0]}?); see {prog} --help"
        return f"{prog}: error: unknown flag {flag!r}; see {prog} --help"
    name, sep, _ = first.partition("=")
    if sep and name and command in ("run", None):
        return f"{prog}: error: unexpected argument {first!r}; inputs are given with --input {first}"
    if command is None:
        close = difflib.get_close_matches(first, list(commands), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{prog}: error: unexpected argument {first!r}{hint}; see {prog} --help"
    return f"{prog}: error: unexpected argument {first!r}; see {prog} --help"


__all__ = ["subcommands", "unrecognized_message"]
