"""`pipeline-ex completion bash|zsh|tcsh`: a shell completion script, generated from the argument parser.

shtab writes the script from the argparse parser itself, so every command and flag completes as the
parser defines it, with nothing to keep in step by hand. The workflow `FILE` arguments complete
`*.yaml`/`*.yml` files (and folders), `DIR` options folders, and file options any file. shtab is
imported only here, so that `pipeline-ex --help` does not pay for it.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline_ex.cli_hints import subcommands

SHELLS = ("bash", "zsh", "tcsh")
WORKFLOW_ARGUMENTS = ("file", "files")
"""The positional arguments that name workflow files (`run FILE`, `validate FILE...`)."""
FILE_OPTIONS = ("--inputs", "--output")
"""Options that name any file (`batch --inputs ROWS.jsonl --output RESULTS.jsonl`)."""


def _mark_completions(parser: argparse.ArgumentParser, shtab: Any) -> None:
    """Tell shtab what each file or folder argument of every subcommand completes to."""
    workflow_files = shtab.glob("*.yaml", "*.yml")
    for sub in subcommands(parser).values():
        for action in sub._actions:  # argparse keeps the arguments of a parser only here
            if not action.option_strings and action.dest in WORKFLOW_ARGUMENTS:
                action.complete = workflow_files  # type: ignore[attr-defined]
            elif action.metavar == "DIR":
                action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
            elif any(flag in FILE_OPTIONS for flag in action.option_strings):
                action.complete = shtab.FILE  # type: ignore[attr-defined]


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` for `shell` (bash, zsh or tcsh)."""
    import shtab

    _mark_completions(parser, shtab)
    script: str = shtab.complete(parser, shell=shell)
    return script


__all__ = ["SHELLS", "completion_script"]
