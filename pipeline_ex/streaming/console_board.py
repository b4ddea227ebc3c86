"""The console board: where the console handlers of steps that run at the same time print.

Steps inside a concurrent region (a `parallel` group, a `for_each` body) stream at the same time, so
writing their deltas as they arrive would interleave their tokens. Their `ConsoleHandler`s share one
`ConsoleBoard` per root region instead (see `board_for`), and each step instance holds a `StepSlot` on
it that collects its text:

- Off a terminal, a step's text is printed whole, under a header line naming its path, when its Done
  arrives; its summary line follows on stderr.
- On a terminal, the board keeps a live display (`rich.live.Live`) with one row per running step
  instance: a spinner, its path, the deltas so far and the tail of its latest text. When a step's Done
  arrives its row leaves the display and its text is printed whole above it, then its summary line.
  The display stops when the root region closes.

While a live display is on the screen, everything the board prints to a terminal goes through the
display's console (a write straight to the terminal would tear the display); writes to a stream that is
not a terminal (a file, a pipe) go straight to it. One module-level lock serialises the boards'
output, so the steps' blocks never mix whichever threads deliver their events; a delta takes no lock.
Only one board at a time shows a live display (one terminal, one display): a board that starts while
another one's display is up prints its steps' texts whole, without rows.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, TextIO

from pipeline_ex.streaming.concurrency import ConcurrentRegion

if TYPE_CHECKING:  # rich is imported only when a live display starts
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.live import Live
    from rich.spinner import Spinner

_ANSI = {"bold": "\x1b[1m", "dim": "\x1b[2m", "red": "\x1b[31m"}
_RESET = "\x1b[0m"
_REFRESH_PER_SECOND = 10
_TAIL_CHARS = 400
"""How much of a step's latest text its row keeps (before cropping to the terminal's width)."""

Styled = list[tuple[str, str | None]]
"""Text as (piece, style) pairs; the style is None, "bold", "dim" or "red"."""

_lock = threading.RLock()
"""Guards every board, the registry and the live display; held while a board prints."""
_boards: weakref.WeakKeyDictionary[ConcurrentRegion, ConsoleBoard] = weakref.WeakKeyDictionary()
_live_owner: ConsoleBoard | None = None
"""The board whose live display is on the screen, if any."""
_exit_hook_registered = False


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def _encodes(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class StepSlot:
    """One step instance's place on a board: its path, its streams and the text it streamed so far.

    The handler of the step adds every delta it shows with `add` (and counts the ones it hides with
    `count`); only that handler writes to the slot, so adding takes no lock.
    """

    def __init__(self, step: str, out: TextIO, err: TextIO, color: bool) -> None:
        self.step = step
        self.out = out
        self.err = err
        self.color = color
        self.pieces: list[tuple[str, bool]] = []
        """The shown deltas' content, each with whether it is reasoning."""
        self.deltas = 0
        """How many deltas arrived, shown or not."""
        self.spinner: Spinner | None = None

    def add(self, content: str, reasoning: bool = False) -> None:
        """Keep a delta that is shown."""
        self.pieces.append((content, reasoning))
        self.deltas += 1

    def count(self) -> None:
        """Count a delta that is not shown (reasoning, unless asked for)."""
        self.deltas += 1

    def tail(self, chars: int) -> str:
        """The last `chars` characters of the shown text, on one line."""
        pieces = self.pieces[-chars:]  # a delta is at least one character
        latest = " ".join("".join(content for content, _ in pieces).split())
        return latest[-chars:]

    def header(self) -> str:
        """The line that heads the step's text: its path between rules."""
        rule = "──" if _encodes(self.out, "─") else "--"
        return f"{rule} {self.step} {rule}"

    def block(self) -> Styled:
        """The step's text as printed on its Done: header, text, and a final newline; empty if no text."""
        if not self.pieces:
            return []
        bold, dim = ("bold", "dim") if self.color else (None, None)
        styled: Styled = [(self.header(), bold), ("\n", None)]
        styled.extend((content, dim if reasoning else None) for content, reasoning in self.pieces)
        if not self.pieces[-1][0].endswith("\n"):
            styled.append(("\n", None))
        return styled


class _BoardView:
    """The live display's content: one row per running step instance of a board."""

    def __init__(self, board: ConsoleBoard) -> None:
        self.board = board

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        rows = list(self.board.rows.values())  # a snapshot; the display thread takes no board lock
        if not rows:
            return
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, justify="right")
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        tail_chars = min(_TAIL_CHARS, max(10, options.max_width // 2))
        for slot in rows:
            color = slot.color
            grid.add_row(
                slot.spinner or "",
                Text(slot.step, style="bold" if color else ""),
                Text(f"{slot.deltas} token{'' if slot.deltas == 1 else 's'}", style="dim" if color else ""),
                Text(slot.tail(tail_chars), style="dim" if color else ""),
            )
        yield grid


class ConsoleBoard:
    """The console of one root concurrent region, shared by the console handlers of its step instances.

    Get it with `board_for(region)`; a handler calls `join` for its step instance (on the step's first
    event), adds deltas to the slot it gets, and calls `finish` with the Done's summary line. The board
    closes when its root region does, which stops its live display; a step that finishes after that still
    prints its text, without a display.
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.closed = False
        self.rows: dict[int, StepSlot] = {}
        """The running step instances shown on the live display, in the order they joined."""
        self._live: Live | None = None
        self._live_failed = False

    def join(self, step: str, *, out: TextIO, err: TextIO, color: bool, live: bool) -> StepSlot:
        """Give the step instance `step` a slot; with `live` (its output is a terminal), a row on the display."""
        slot = StepSlot(step, out, err, color)
        if not live:
            return slot
        with _lock:
            display = self._display(out)
            if display is not None:
                from rich.spinner import Spinner

                slot.spinner = Spinner(
                    "dots" if (display.console.encoding or "").lower().startswith("utf") else "line",
                    style="cyan" if color else None,
                )
                self.rows[id(slot)] = slot
                display.refresh()
        return slot

    def finish(self, slot: StepSlot, summary: str | None, failed: bool) -> None:
        """The step ended: print its text whole under its header, then its summary line (if any)."""
        with _lock:
            was_shown = self.rows.pop(id(slot), None) is not None
            redrawn = _print(slot.out, slot.block())
            if summary is not None:
                style = ("red" if failed else "dim") if slot.color else None
                redrawn = _print(slot.err, [(summary + "\n", style)]) or redrawn
            if was_shown and not redrawn and self._live is not None:
                self._live.refresh()  # the row leaves the display even when nothing was printed

    def close(self) -> None:
        """The root region finished: stop the live display (the cursor is restored)."""
        global _live_owner
        with _lock:
            if self.closed:
                return
            self.closed = True
            self.rows.clear()
            live, self._live = self._live, None
            if _live_owner is self:
                _live_owner = None
            if live is not None:
                live.stop()

    def _display(self, out: TextIO) -> Live | None:
        """The board's live display, started on `out` if it is not yet; None if it cannot have one."""
        global _live_owner, _exit_hook_registered
        if self._live is not None:
            return self._live
        if self.closed or self._live_failed or _live_owner is not None:
            return None
        from rich.console import Console
        from rich.live import Live

        console = Console(file=out, highlight=False, no_color=False)
        if not console.is_interactive:  # TERM=dumb: no cursor movement, so no display
            self._live_failed = True
            return None
        live = Live(
            _BoardView(self),
            console=console,
            transient=True,
            refresh_per_second=_REFRESH_PER_SECOND,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        if not _exit_hook_registered:
            atexit.register(_close_all)
            _exit_hook_registered = True
        try:
            live.start()
        except Exception:  # a terminal rich cannot drive: the texts still print whole, without rows
            self._live_failed = True
            with contextlib.suppress(Exception):
                live.stop()
            return None
        self._live = live
        _live_owner = self
        return live


def _print(stream: TextIO, styled: Styled) -> bool:
    """Write styled text to `stream`: through the live display's console if it would land on its screen.

    Return whether it went through the display (which redraws the display below the text).
    """
    if not styled:
        return False
    owner = _live_owner
    display = owner._live if owner is not None else None
    if display is not None and (stream is display.console.file or _isatty(stream)):
        from rich.text import Text

        text = Text()
        for piece, style in styled:
            text.append(piece, style=style or "")
        display.console.print(text, end="", soft_wrap=True)
        return True
    stream.write("".join(f"{_ANSI[style]}{piece}{_RESET}" if style else piece for piece, style in styled))
    stream.flush()
    return False


def board_for(region: ConcurrentRegion) -> ConsoleBoard:
    """The board of `region`'s root region: created on first use, closed and forgotten when the root closes."""
    root = region.root
    with _lock:
        board = _boards.get(root)
        if board is None:
            board = _boards[root] = ConsoleBoard(root.group)
            root.on_close(_Closer(weakref.ref(root), board))  # right away if the root already closed
        return board


class _Closer:
    """Closes a board and drops it from the registry; holds the region weakly, so the registry's key can go."""

    def __init__(self, root: weakref.ref[ConcurrentRegion], board: ConsoleBoard) -> None:
        self.root = root
        self.board = board

    def __call__(self) -> None:
        with _lock:
            root = self.root()
            if root is not None and _boards.get(root) is self.board:
                del _boards[root]
            self.board.close()


def _close_all() -> None:
    """At exit: stop any live display still up, so the terminal gets its cursor back."""
    if not _lock.acquire(timeout=2):  # a thread is stuck writing (a stalled pipe): do not hang the exit
        return
    try:
        for board in list(_boards.values()):
            board.close()
    finally:
        _lock.release()
