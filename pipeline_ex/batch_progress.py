"""What `pipeline-ex batch` shows on stderr while it runs: a progress bar on a terminal, else failed rows only.

rich is imported only when a bar is shown, so the command line stays fast to start.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, TextIO

from pipeline_ex.batch import BatchSummary
from pipeline_ex.redaction import redact_text

_MESSAGE_CHARS = 300


def failed_row_line(line: dict[str, Any]) -> str:
    """`row 17 failed at step 'check': ValueError: ...`: the first line of a row's error, shortened."""
    error = line.get("error") or {}
    message = str(error.get("message", "")).strip().splitlines()
    text = message[0] if message else "(no message)"
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 3] + "..."
    where = f"at step {error['step']!r}" if error.get("step") else f"({error.get('type', 'error')})"
    return redact_text(f"row {line['row']} failed {where}: {text}")


class BatchDisplay:
    """Shows a batch's progress on `stream`: a rich progress bar when it is a terminal, else nothing.

    Either way, each failed row gets one line (`row 17 failed at step 'check': ...`), above the bar on a terminal.
    Use it as a context manager around the batch, and pass `update` as `run_batch`'s `on_progress`.

    :param total: the number of rows of the inputs file (the bar's length); None when unknown.
    """

    def __init__(self, total: int | None, *, stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.summary: BatchSummary | None = None
        """The latest counts seen (None until a row was written or skipped)."""
        self._progress: Any = None
        self._task: Any = None
        self._console: Any = None
        if bar is None:
            bar = self.stream.isatty()
        if bar:
            from rich.console import Console

            console = Console(file=self.stream, highlight=False)
            if console.is_interactive:  # TERM=dumb: no cursor movement, so no bar
                self._console = console
                self._start_bar(total)

    def _start_bar(self, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self._console,
            redirect_stdout=False,  # what a workflow's own handlers print stays on stdout
            redirect_stderr=True,  # warnings print above the bar
        )
        self._task = self._progress.add_task("batch", total=total, counts=self._counts(None))

    @property
    def shows_bar(self) -> bool:
        """Whether a progress bar is shown."""
        return self._progress is not None

    @staticmethod
    def _counts(summary: BatchSummary | None) -> str:
        if summary is None:
            return "0 ok, 0 failed"
        skipped = f", {summary.skipped} skipped" if summary.skipped else ""
        return f"{summary.ok} ok, {summary.failed} failed{skipped}"

    def __enter__(self) -> BatchDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._progress is not None:
            if self.summary is not None:
                self._progress.update(self._task, completed=self.summary.done, counts=self._counts(self.summary))
            self._progress.stop()

    def update(self, summary: BatchSummary, line: dict[str, Any] | None) -> None:
        """Take the batch's latest counts; print a line for a row that failed."""
        self.summary = summary
        if line is not None and line.get("status") == "failed":
            text = failed_row_line(line)
            if self._console is not None:
                self._console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                print(text, file=self.stream, flush=True)
        if self._progress is not None:
            self._progress.update(self._task, completed=summary.done, counts=self._counts(summary))
