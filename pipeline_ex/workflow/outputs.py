"""Where `output_to_file` writes: a file inside the run's output directory, checked against the disk."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline_ex.errors import PipelineError

OUTPUT_DIR_ENV = "PIPELINE_OUTPUT_DIR"
DEFAULT_OUTPUT_DIR = "outputs"


def output_directory(output_dir: str | os.PathLike[str] | None) -> Path:
    """The output directory: the argument, else `PIPELINE_OUTPUT_DIR`, else `./outputs`."""
    chosen = output_dir or os.environ.get(OUTPUT_DIR_ENV) or DEFAULT_OUTPUT_DIR
    return chosen if isinstance(chosen, Path) else _path(os.fspath(chosen))


@functools.lru_cache(maxsize=64)
def _path(text: str) -> Path:
    """The `Path` of a folder name, made once: every run asks for it, and a `Path` is immutable."""
    return Path(text)


def output_path(output_dir: Path, relative: str, step: str) -> Path:
    """Where a step's `output_to_file` goes; checked against what is on disk now.

    :param step: the step's path, for messages.
    :raises PipelineError: naming the step and the path, when the path is outside the output directory,
        is a directory, or has a file where a folder of the path should be.
    """
    if not relative.strip() or Path(relative).is_absolute():
        raise PipelineError(f"step {step!r}: output_to_file {relative!r} must be a relative path inside {output_dir}")
    target = (output_dir / relative).resolve()
    if not target.is_relative_to(output_dir.resolve()):
        raise PipelineError(f"step {step!r}: output_to_file {relative!r} points outside {output_dir}")
    shown = output_dir / relative  # as the user gave the folder, so a server's messages hold no absolute path
    if target.is_dir():
        raise PipelineError(
            f"step {step!r}: output_to_file {relative!r} is a directory ({shown}); "
            "give a file name, or move the directory away"
        )
    for folder in shown.parents:
        if folder.exists():
            if not folder.is_dir():
                raise PipelineError(
                    f"step {step!r}: output_to_file {relative!r} cannot be written: {folder} is a file, "
                    "not a directory; choose another output directory or file name"
                )
            break
    return target


def write_output(output_dir: Path, relative: str, text: str, step: str) -> Path:
    """Write a step's full text to its output file (folders are made as needed); return the file.

    :raises PipelineError: naming the step and the file, when it is not allowed or cannot be written.
    """
    target = output_path(output_dir, relative, step)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except (OSError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise PipelineError(
            f"step {step!r}: output_to_file {relative!r} cannot be written to {output_dir / relative}: {reason}"
        ) from error
    return target
