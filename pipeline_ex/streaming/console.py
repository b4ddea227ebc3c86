"""`ConsoleHandler`: stream text to the terminal as it arrives, then one summary line per step.

Steps that run at the same time print through a shared console board instead (`console_board`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Literal, TextIO

from pipeline_ex.events import Delta, Done, Partial, Response, StepEvent, ToolCall, ToolResult
from pipeline_ex.redaction import redact_text
from pipeline_ex.streaming.concurrency import current_region
from pipeline_ex.streaming.console_board import StepSlot, board_for

_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_RESET = "\x1b[0m"


def _wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):  # any non-empty value, as no-color.org defines it
        return False
    return _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ConsoleHandler:
    """Writes each text Delta to stdout (or stderr) immediately, flushed.

    On Done it writes one summary line to stderr: step, finish reason, tokens, time to first token and
    tokens per second. Colour is used only when stderr is a terminal and `NO_COLOR` is not set.

    Steps that run at the same time (the children of a `parallel` group, the bodies of a `for_each`)
    never interleave their tokens. A handler created inside a concurrent region (see
    `pipeline_ex.streaming.concurrency`) holds its step's text instead and shares the region's console
    board (`pipeline_ex.streaming.console_board`) with the other step instances of the root region:

    - When the output is not a terminal, the step's text is printed whole when its Done arrives, under a
      header line naming its path (`── sections[2].draft ──`), then its summary line on stderr.
    - On a terminal, a live display shows one row per running step instance (spinner, path, tokens so
      far, the tail of its text). When a step's Done arrives, its row leaves the display and its text is
      printed whole above it under the same header, then its summary line (through the display, when
      stderr is the terminal too). The display stops when the root region ends.

    A step that fails or is cancelled prints the text it had, and its summary line names the error.
    Whether a handler streams or holds its text is decided once, when it is created.

    Options:
        to: "stdout" (default) or "stderr", where the streamed text goes.
        summary: write the summary line on Done (default true).
        color: force colour on or off; by default it is decided from the terminal and NO_COLOR.
        show_reasoning: also print reasoning deltas, dimmed (default false).
    """

    def __init__(
        self,
        to: Literal["stdout", "stderr"] = "stdout",
        summary: bool = True,
        color: bool | None = None,
        show_reasoning: bool = False,
    ) -> None:
        self._out: TextIO = sys.stdout if to == "stdout" else sys.stderr
        self._err: TextIO = sys.stderr
        self.summary = summary
        self.color = _wants_color(self._err) if color is None else color
        self.show_reasoning = show_reasoning
        self._ends_with_newline = True
        region = current_region()
        if region is not None:
            self._board = board_for(region)
            self._slot: StepSlot | None = None
            self._live = _isatty(self._out)
            self.handle_event = self._handle_in_region  # type: ignore[method-assign]

    def handle_event(self, event: StepEvent) -> None:
        """Print a delta's text, a line per tool call and result, or the summary for a Done."""
        if isinstance(event, Delta):
            if event.kind == "text":
                self._write(event.content)
            elif event.kind == "reasoning" and self.show_reasoning:
                self._write(f"{_DIM}{event.content}{_RESET}" if self.color else event.content)
            return
        if isinstance(event, Partial):
            return  # the object's text streams as text deltas already
        if not self._ends_with_newline:
            self._write("\n")
        if isinstance(event, ToolCall | ToolResult):
            line = tool_line(event)
            self._err.write((f"{_DIM}{line}{_RESET}" if self.color else line) + "\n")
            self._err.flush()
            return
        if self.summary:
            line = summary_line(event)
            if self.color:
                line = f"{_RED if event.error else _DIM}{line}{_RESET}"
            self._err.write(line + "\n")
            self._err.flush()

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
        self._ends_with_newline = text.endswith("\n")

    def _handle_in_region(self, event: StepEvent) -> None:
        """Keep a delta's text on the board, or print the step's text and summary for a Done."""
        if isinstance(event, ToolCall | ToolResult | Partial):
            return  # a board row shows the step's text; its tool calls are in its Done
        slot = self._slot
        if slot is None:
            live = self._live and isinstance(event, Delta)  # no row for a step that ends before any delta
            slot = self._slot = self._board.join(event.step, out=self._out, err=self._err, color=self.color, live=live)
        if isinstance(event, Delta):
            if event.kind == "text":
                slot.add(event.content)
            elif self.show_reasoning:
                slot.add(event.content, reasoning=True)
            else:
                slot.count()
            return
        self._board.finish(slot, summary_line(event) if self.summary else None, failed=event.error is not None)


def tool_line(event: ToolCall | ToolResult, width: int = 160) -> str:
    """Describe a tool call (`→ name(arguments)`) or its result (`← name: result`) in one line."""
    if isinstance(event, ToolCall):
        text = f"[{event.step}] → {event.name}({json.dumps(event.arguments, ensure_ascii=False)})"
    else:
        text = f"[{event.step}] ← {event.name}{' failed' if event.error else ''}: {event.result}"
    text = " ".join(redact_text(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def is_estimated(response: Response) -> bool:
    """Whether a response's usage was estimated by pipeline_ex rather than reported by the provider."""
    return str(response.meta.get("usage_source", "")).startswith("estimated")


def summary_line(done: Done) -> str:
    """Describe a finished step in one line: finish reason, tokens, TTFT and tokens per second."""
    response = done.response
    parts = [f"[{done.step}] {response.finish_reason}"]
    if done.error is not None:
        parts[0] += f" ({done.error.type}: {redact_text(done.error.message)})"
    usage = response.usage
    if usage is not None and usage.output_tokens is not None:
        tokens = f"{usage.output_tokens} tokens"
        if is_estimated(response):
            tokens = f"~{tokens} (estimated)"
        if usage.input_tokens is not None:
            tokens += f" ({usage.input_tokens} in)"
        parts.append(tokens)
    elif "streamed_chunks" in response.meta:
        chunks = response.meta["streamed_chunks"]
        parts.append(f"tokens n/a ({chunks} chunk{'' if chunks == 1 else 's'} streamed)")
    else:
        parts.append("tokens n/a")
    if done.ttft_ms is not None:
        parts.append(f"TTFT {done.ttft_ms:.0f} ms")
        generating_s = (done.duration_ms - done.ttft_ms) / 1000
        if usage is not None and usage.output_tokens and generating_s > 0:
            parts.append(f"{usage.output_tokens / generating_s:.1f} tok/s")
    parts.append(f"{done.duration_ms / 1000:.2f} s")
    if not done.streamed:
        parts.append("not streamed")
    return " · ".join(parts)
