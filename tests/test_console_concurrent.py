"""The console handler of steps that run at the same time: whole texts off a terminal, a live board on one.

The engine's `parallel` groups and `for_each` bodies are simulated here as the runner drives them: the
step instances run inside `concurrent_region(...)`, each with its own step path.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pty_kit import read_in_background

from pipeline_ex import BufferHandler, ConsoleHandler, Delta, Done, Response, llm
from pipeline_ex.streaming import console_board
from pipeline_ex.streaming.concurrency import concurrent_region

ROOT = Path(__file__).resolve().parent.parent
PROS = [f"pro{i} " for i in range(8)] + ["\n"]
CONS = [f"con{i} " for i in range(6)]
CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SGR = re.compile(r"\x1b\[[0-9;]*m")


def block(step: str, chunks: list[str]) -> str:
    text = "".join(chunks)
    return f"── {step} ──\n{text}" + ("" if text.endswith("\n") else "\n")


class Journal(io.StringIO):
    """A text stream that keeps every write separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class TtyIO(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def alternations(steps: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(steps) if a != b)


async def two_steps(order: list[str], **options: object) -> None:
    """Run `pros` and `cons` at once, as the children of a `parallel` group named `views`."""

    def note(event: object) -> None:
        if isinstance(event, Delta):
            order.append(event.step)

    with concurrent_region("views", 2):
        await asyncio.gather(
            llm.ainvoke(
                prompt="pros",
                provider="mock",
                step="pros",
                on_event=["console", note],
                mock_response=PROS,
                delay_ms=7,
                **options,
            ),
            llm.ainvoke(
                prompt="cons",
                provider="mock",
                step="cons",
                on_event=["console", note],
                mock_response=CONS,
                delay_ms=9,
                **options,
            ),
        )


# -- off a terminal --------------------------------------------------------------------------------


@pytest.mark.streaming
async def test_off_a_tty_each_step_prints_whole_under_its_header(monkeypatch, capsys):
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Journal()
    monkeypatch.setattr(sys, "stdout", out)
    order: list[str] = []

    await two_steps(order)

    assert alternations(order) >= 4  # the two streams really were interleaved in time
    # One write per step, each the step's whole text under its header: never token by token.
    assert sorted(out.writes) == sorted([block("pros", PROS), block("cons", CONS)])
    assert out.getvalue() in (block("pros", PROS) + block("cons", CONS), block("cons", CONS) + block("pros", PROS))
    err = capsys.readouterr().err
    assert "\x1b[" not in out.getvalue() + err  # not a terminal: no colour
    summaries = err.splitlines()
    assert len(summaries) == 2
    assert sorted(line.split(" ")[0] for line in summaries) == ["[cons]", "[pros]"]
    assert all(" stop · " in line and "tokens" in line for line in summaries)


@pytest.mark.streaming
async def test_sync_steps_on_worker_threads_never_mix(monkeypatch, capsys):
    out = Journal()
    monkeypatch.setattr(sys, "stdout", out)
    texts = {f"sections[{i}].draft": [f"s{i}w{j} " for j in range(12)] for i in range(4)}

    with concurrent_region("sections", 4):
        await asyncio.gather(
            *(
                asyncio.to_thread(
                    llm.invoke,
                    prompt=step,
                    provider="mock",
                    step=step,
                    on_event="console",
                    mock_response=chunks,
                    delay_ms=2,
                )
                for step, chunks in texts.items()
            )
        )

    assert sorted(out.writes) == sorted(block(step, chunks) for step, chunks in texts.items())
    assert len(capsys.readouterr().err.splitlines()) == 4


@pytest.mark.streaming
async def test_a_cancelled_instance_prints_its_partial_text_and_a_cancelled_summary(monkeypatch, capsys):
    out = Journal()
    monkeypatch.setattr(sys, "stdout", out)
    long = [f"w{i} " for i in range(500)]
    buffer = BufferHandler()
    started = asyncio.Event()

    def after_three(event: object) -> None:
        if isinstance(event, Delta) and len(buffer.deltas) == 3:
            started.set()

    with concurrent_region("views", 2):
        slow = asyncio.create_task(
            llm.ainvoke(
                prompt="p",
                provider="mock",
                step="pros",
                on_event=["console", buffer, after_three],
                mock_response=long,
                delay_ms=5,
            )
        )
        quick = asyncio.create_task(
            llm.ainvoke(prompt="c", provider="mock", step="cons", on_event="console", mock_response=CONS, delay_ms=5)
        )
        await started.wait()
        slow.cancel()
        results = await asyncio.gather(slow, quick, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    done = buffer.done
    assert done is not None and done.response.finish_reason == "cancelled"
    partial = done.response.text
    assert 0 < len(partial) < len("".join(long))
    assert sorted(out.writes) == sorted([f"── pros ──\n{partial}\n", block("cons", CONS)])
    err = capsys.readouterr().err
    (cancelled,) = [line for line in err.splitlines() if line.startswith("[pros]")]
    assert cancelled.startswith("[pros] cancelled (cancelled: ")
    assert any(line.startswith("[cons] stop") for line in err.splitlines())


@pytest.mark.streaming
async def test_a_failed_instance_prints_its_text_and_names_the_error(monkeypatch, capsys):
    out = Journal()
    monkeypatch.setattr(sys, "stdout", out)
    with concurrent_region("views", 2):
        results = await asyncio.gather(
            llm.ainvoke(
                prompt="p", provider="mock", step="pros", on_event="console", mock_response=PROS, error_after=3
            ),
            llm.ainvoke(prompt="c", provider="mock", step="cons", on_event="console", mock_response=CONS),
            return_exceptions=True,
        )
    assert isinstance(results[0], Exception)
    assert sorted(out.writes) == sorted([block("pros", PROS[:3]), block("cons", CONS)])
    (failed,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[pros]")]
    assert failed.startswith("[pros] error (provider: ")


def _delta(step: str, content: str, seq: int, kind: str = "text") -> Delta:
    return Delta(content=content, step=step, run_id="r", seq=seq, kind=kind)


def _done(step: str, text: str, seq: int) -> Done:
    response = Response(text=text, provider="mock", finish_reason="stop")
    return Done(response=response, step=step, run_id="r", seq=seq, duration_ms=5.0)


@pytest.mark.streaming
def test_a_done_after_the_region_closed_still_prints(capsys):
    with concurrent_region("views", 2) as region:
        handler = ConsoleHandler(color=False)
        handler.handle_event(_delta("pros", "late ", 1))
        handler.handle_event(_delta("pros", "text", 2))
    assert region.closed
    assert capsys.readouterr().out == ""  # held until its Done
    handler.handle_event(_done("pros", "late text", 3))
    captured = capsys.readouterr()
    assert captured.out == "── pros ──\nlate text\n"
    assert captured.err.startswith("[pros] stop")


@pytest.mark.streaming
def test_options_in_a_region(capsys):
    with concurrent_region("views", 2):
        quiet = ConsoleHandler(summary=False, color=False)
        for seq, (content, kind) in enumerate([("hmm", "reasoning"), ("a", "text")]):
            quiet.handle_event(_delta("quiet", content, seq, kind))
        quiet.handle_event(_done("quiet", "a", 9))

        coloured = ConsoleHandler(color=True, show_reasoning=True, to="stderr")
        coloured.handle_event(_delta("loud", "hmm ", 1, "reasoning"))
        coloured.handle_event(_delta("loud", "b\n", 2))
        coloured.handle_event(_done("loud", "b\n", 3))

    captured = capsys.readouterr()
    assert captured.out == "── quiet ──\na\n"  # reasoning hidden, no summary
    assert captured.err.startswith("\x1b[1m── loud ──\x1b[0m\n\x1b[2mhmm \x1b[0mb\n\x1b[2m[loud] stop")


def test_the_mode_is_decided_when_the_handler_is_created():
    sequential = ConsoleHandler()
    assert "handle_event" not in vars(sequential)  # the streaming path is the class's own method
    with concurrent_region("views", 2):
        concurrent = ConsoleHandler()
    assert vars(concurrent)["handle_event"] == concurrent._handle_in_region


def test_one_board_per_root_region_dropped_when_it_closes():
    with concurrent_region("report", 2) as outer:
        board = console_board.board_for(outer)
        with concurrent_region("report[0].sections", 3) as inner:
            assert console_board.board_for(inner) is board
        assert not board.closed  # an inner region ending leaves the root's board alone
        assert outer in console_board._boards
    assert board.closed
    assert outer not in console_board._boards
    late = console_board.board_for(outer)  # a handler made after the root closed gets a closed board
    assert late.closed and late is not board


# -- on a terminal, in process ----------------------------------------------------------------------


@pytest.mark.streaming
def test_on_a_tty_the_board_shows_rows_and_prints_texts_above_them(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    screen = TtyIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)

    with concurrent_region("views", 2) as region:
        first, second = ConsoleHandler(), ConsoleHandler()
        first.handle_event(_delta("pros", "one ", 1))
        second.handle_event(_delta("cons", "two ", 2))
        board = console_board.board_for(region)
        assert [slot.step for slot in board.rows.values()] == ["pros", "cons"]
        assert board._live is not None and console_board._live_owner is board
        first.handle_event(_delta("pros", "three", 3))
        first.handle_event(_done("pros", "one three", 4))
        assert [slot.step for slot in board.rows.values()] == ["cons"]
        second.handle_event(_done("cons", "two ", 5))
    assert board._live is None and console_board._live_owner is None

    raw = screen.getvalue()
    assert "\x1b[?25l" in raw and raw.rstrip("\r").endswith("\x1b[?25h")  # cursor hidden, then restored
    assert not SGR.search(raw)  # NO_COLOR
    plain = CSI.sub("", raw).replace("\r\n", "\n")
    assert re.search(r"pros +1 token ", plain) and re.search(r"cons +1 token ", plain)
    assert "── pros ──\none three\n" in plain and "── cons ──\ntwo \n" in plain
    assert "[pros] stop" in plain and "[cons] stop" in plain


# -- on a terminal, in a pseudo-terminal --------------------------------------------------------------

CHILD = """
import asyncio, signal, sys
from pipeline_ex import llm
from pipeline_ex.streaming.concurrency import concurrent_region

PROS = [f"pro{i} " for i in range(int(sys.argv[1]))] + ["\\n"]
CONS = [f"con{i} " for i in range(int(sys.argv[2]))]


async def main():
    with concurrent_region("views", 2):
        await asyncio.gather(
            llm.ainvoke(prompt="p", provider="mock", step="pros", on_event="console", mock_response=PROS, delay_ms=40),
            llm.ainvoke(prompt="c", provider="mock", step="cons", on_event="console", mock_response=CONS, delay_ms=55),
        )


signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores Ctrl-C
try:
    asyncio.run(main())
except KeyboardInterrupt:
    sys.exit(130)
"""


def run_in_pty(script: Path, args: list[str], env: dict[str, str], interrupt: bool = False) -> tuple[int, str]:
    """Run `script ARGS` with stdout and stderr on a pseudo-terminal; return its exit code and raw output."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    reader, chunks = read_in_background(master)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
        )
        try:
            if interrupt:
                deadline = time.monotonic() + 60
                while b"token" not in b"".join(chunks) and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode()


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES"):
        env.pop(name, None)
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _plain(raw: str) -> str:
    return CSI.sub("", raw).replace("\r\n", "\n")


@pytest.mark.streaming
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_on_a_pty_a_live_board_then_whole_texts(tmp_path: Path, no_color: bool) -> None:
    script = tmp_path / "views.py"
    script.write_text(CHILD, encoding="utf-8")
    code, raw = run_in_pty(script, ["12", "10"], _child_env(**({"NO_COLOR": "1"} if no_color else {})))

    assert code == 0, raw
    plain = _plain(raw)
    # The live board: a spinner, the path and a count of tokens so far, for each running step.
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] pros +\d+ tokens? ", plain), raw
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] cons +\d+ tokens? ", plain), raw
    assert max(int(n) for n in re.findall(r"pros +(\d+) tokens?", plain)) > 1  # it counted as tokens came
    # Each text printed whole, under its header, followed by its summary line.
    pros = "".join(f"pro{i} " for i in range(12)) + "\n"
    cons = "".join(f"con{i} " for i in range(10)) + "\n"
    assert f"── pros ──\n{pros}" in plain and f"── cons ──\n{cons}" in plain
    assert re.search(r"\[pros\] stop · 12 tokens", plain) and re.search(r"\[cons\] stop · 10 tokens", plain)
    # The board ended cleanly: the cursor came back after it was hidden.
    assert raw.index("\x1b[?25l") < raw.rindex("\x1b[?25h")
    assert "\x1b[?25l" not in raw[raw.rindex("\x1b[?25h") :]
    assert bool(SGR.search(raw)) is not no_color


@pytest.mark.streaming
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_ctrl_c_on_a_pty_prints_every_partial_text_and_ends_the_board(tmp_path: Path) -> None:
    script = tmp_path / "views.py"
    script.write_text(CHILD, encoding="utf-8")
    code, raw = run_in_pty(script, ["400", "400"], _child_env(NO_COLOR="1"), interrupt=True)

    assert code == 130, raw
    plain = _plain(raw)
    for step, word in (("pros", "pro"), ("cons", "con")):
        match = re.search(rf"── {step} ──\n((?:{word}\d+ )+)\n", plain)
        assert match is not None, raw
        count = len(match.group(1).split())
        assert 0 < count < 400
        assert match.group(1) == "".join(f"{word}{i} " for i in range(count))  # the whole partial text
        assert f"[{step}] cancelled (cancelled: " in plain
    assert raw.index("\x1b[?25l") < raw.rindex("\x1b[?25h")
    assert "\x1b[?25l" not in raw[raw.rindex("\x1b[?25h") :]
