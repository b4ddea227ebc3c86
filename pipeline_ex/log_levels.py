"""`-v` / `-q`: how much the command line logs to stderr.

pipeline_ex logs through the standard `logging` module, under the `pipeline_ex` logger (the server under
`pipeline_ex.server`, workers under `pipeline_ex.worker`), and reports recoverable problems as Python
warnings (`DeprecationWarning`, `CheckpointWarning`, `BatchWarning`, `OverrideWarning`). The levels:

- default: warnings and errors;
- `-v`: info too (which run started, its checkpoint, retries, workers picking up runs);
- `-vv`: debug too, and `PIPELINE_STREAM_DEBUG=1`: every raw provider chunk and typed event;
- `-q`: errors only; warnings (Python's and the log's) are hidden.

The library itself configures no logging; only the command line does, once, before a command runs.
`logging` is imported then, not when the parser is built, so that `pipeline-ex --help` stays fast.
"""

from __future__ import annotations

import argparse

LOGGER = "pipeline_ex"
ERROR, WARNING, INFO, DEBUG = 40, 30, 20, 10
"""The `logging` levels (the same numbers), without importing `logging` to build the parser."""


def level_for(verbose: int, quiet: bool) -> int:
    """The `logging` level that `-v` (counted) and `-q` ask for."""
    if quiet:
        return ERROR
    if verbose >= 2:
        return DEBUG
    if verbose == 1:
        return INFO
    return WARNING


def configure_logging(verbose: int, quiet: bool) -> None:
    """Send pipeline_ex's log to stderr at the level asked for, and hide Python warnings under `quiet`.

    Records print as `warning: message`, as the command line prints its other warnings and errors.
    """
    import logging
    import os
    import sys
    import warnings

    from pipeline_ex.debug import ENV_VAR as STREAM_DEBUG_ENV_VAR

    class LevelPrefixFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{record.levelname.lower()}: {super().format(record)}"

    level = level_for(verbose, quiet)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(getattr(handler, "pipeline_ex_cli", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LevelPrefixFormatter("%(message)s"))
        handler.pipeline_ex_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if quiet:
        warnings.simplefilter("ignore")
    if level <= DEBUG:
        os.environ[STREAM_DEBUG_ENV_VAR] = "1"  # read by each run (and by the processes a command starts)


def add_log_level_arguments(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """Add `-v`/`--verbose` (counted) and `-q`/`--quiet`; `suffix` makes their destinations distinct.

    The top-level parser and every subcommand take them, so `pipeline-ex -v run ...` and
    `pipeline-ex run ... -v` both work; `merge_log_level_arguments` adds the two up.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=f"verbose{suffix}",
        help="log more: -v info, -vv debug (every provider chunk and event)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", dest=f"quiet{suffix}", help="log errors only; hide warnings"
    )


SUBCOMMAND_SUFFIX = "_after_command"


def merge_log_level_arguments(args: argparse.Namespace) -> None:
    """Set `args.verbose` (a count) and `args.quiet` from the flags given before and after the subcommand.

    :raises ValueError: when both `-v` and `-q` are given.
    """
    args.verbose = getattr(args, "verbose", 0) + getattr(args, f"verbose{SUBCOMMAND_SUFFIX}", 0)
    args.quiet = bool(getattr(args, "quiet", False) or getattr(args, f"quiet{SUBCOMMAND_SUFFIX}", False))
    for name in (f"verbose{SUBCOMMAND_SUFFIX}", f"quiet{SUBCOMMAND_SUFFIX}"):
        if hasattr(args, name):
            delattr(args, name)
    if args.verbose and args.quiet:
        raise ValueError("-v and -q ask for opposite things; give one of them")


__all__ = ["add_log_level_arguments", "configure_logging", "level_for", "merge_log_level_arguments"]
