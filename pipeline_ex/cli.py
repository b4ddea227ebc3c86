"""The `pipeline-ex` command line (also `python -m pipeline_ex`).

argparse from the standard library keeps `--help` fast: nothing from haystack is imported unless a
command needs a provider.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


def _cmd_handlers(_: argparse.Namespace) -> int:
    from pipeline_ex.streaming.names import BUILTINS, ELIXIR_ALIASES, LEGACY_ALIASES, handler_entry_points

    print("Built-in handlers (short name -> class):")
    for name, target in BUILTINS.items():
        print(f"  {name:<10} {target.replace(':', '.')}")
    entries = {n: ep for n, ep in handler_entry_points().items() if n not in BUILTINS}
    print("\nRegistered by installed packages (entry-point group pipeline_ex.handlers):")
    if entries:
        for name, entry in sorted(entries.items()):
            print(f"  {name:<10} {entry.value}")
    else:
        print("  (none)")
    print("\nElixir aliases from the migration guide:")
    for alias, name in ELIXIR_ALIASES.items():
        print(f"  {alias:<40} -> {name}")
    print("\nDeprecated legacy names (still run, with a warning):")
    for alias, replacement in LEGACY_ALIASES.items():
        print(f"  {alias:<40} -> {replacement}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `pipeline-ex` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="pipeline-ex",
        description="Run YAML LLM workflows whose steps stream typed events (Delta, Done) to handlers.",
    )
    from pipeline_ex import __version__

    parser.add_argument("--version", action="version", version=f"pipeline-ex {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = commands.add_parser(
        "handlers",
        help="list the stream handlers a workflow can name",
        description="List built-in handlers, handlers registered by installed packages, and the Elixir aliases.",
    )
    handlers.set_defaults(func=_cmd_handlers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 run failed, 2 usage or validation error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # output piped into a command that stopped reading (`| head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return EXIT_OK
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
