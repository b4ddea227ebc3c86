"""A transient status line on a terminal's stderr: shown while the embedded model loads, then erased.

Hand-written rather than a rich `Status`: the line is written once and erased once (a carriage return,
then erase to the end of the line), so it needs no refresh thread and costs nothing to import, while a
spinner would import rich and redraw while llama.cpp loads the model.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TextIO

from pipeline_ex.streaming.console import _DIM, _RESET, _isatty, _wants_color

ERASE_LINE = "\r\x1b[K"
"""Back to the start of the line, and clear it."""


class ModelLoadStatus:
    """Shows `loading NAME (SIZE)…` on a terminal while a model loads, and erases it when the load ends.

    A `ModelLoadWatcher` (see `pipeline_ex.llm.model_loading`). The line is dimmed unless `NO_COLOR` is
    set; it is erased before the step's first token is printed, also when the load fails.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.color = _wants_color(stream)
        self.shown = False

    @classmethod
    def on_terminal(cls) -> ModelLoadStatus | None:
        """A status for stderr when it is a terminal; None otherwise (a pipe or a file shows nothing)."""
        return cls(sys.stderr) if _isatty(sys.stderr) else None

    def load_started(self, name: str, size_bytes: int | None) -> None:
        """Show the status line."""
        text = f"loading {name}" + (f" ({_size(size_bytes)})" if size_bytes else "") + "…"
        self.stream.write(f"{_DIM}{text}{_RESET}" if self.color else text)
        self.stream.flush()
        self.shown = True

    def load_ended(self) -> None:
        """Erase the status line."""
        if self.shown:
            self.stream.write(ERASE_LINE)
            self.stream.flush()
            self.shown = False


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.0f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.0f} kB"


def model_loads_shown_on_terminal() -> AbstractContextManager[None]:
    """Within the block, a model that loads shows a `ModelLoadStatus` on stderr, if stderr is a terminal."""
    from pipeline_ex.llm.model_loading import showing_model_loads

    status = ModelLoadStatus.on_terminal()
    return nullcontext() if status is None else showing_model_loads(status)
