"""The sync entry points (`run`, `stream`, `invoke`) called where an event loop is already running.

A Jupyter cell is sync code running inside the kernel's event loop. The loop here is a plain
`run_until_complete` one, as a notebook kernel's is: asyncio installs no SIGINT handler for it, so Ctrl-C
raises `KeyboardInterrupt` in the waiting cell. The last tests run real cells on an ipykernel kernel:
through nbclient, and interrupted mid-run through jupyter_client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import pipeline_ex
from pipeline_ex import Delta, Done, ProviderError, StepError, StreamingRecorder
from pipeline_ex import running_loop as running_loop_module
from pipeline_ex.streaming.ambient import deliver_everything_to
from pipeline_ex.workflow.loader import parse_workflow

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
NO_LOOP = "no running event loop"

TWO_STEPS = """
workflow:
  name: two_steps
  steps:
    - id: first
      provider: mock
      prompt: "one"
      options: {mock_response: ["alpha ", "beta"]}
    - id: second
      provider: mock
      prompt: "two"
      options: {mock_response: ["gamma"]}
"""

FAILING = """
workflow:
  name: failing
  steps:
    - id: flaky
      provider: mock
      prompt: "will fail"
      options:
        mock_response: ["one ", "two ", "three"]
        error_after: 2
"""

SLOW = """
workflow:
  name: slow
  steps:
    - id: slow
      provider: mock
      prompt: "take your time"
      options:
        mock_response: ["tick "]
        delay_ms: 50
"""


def workflow(text: str) -> Any:
    return parse_workflow(textwrap.dedent(text).lstrip("\n"), "wf.yaml", mock=True)


def slow_workflow(chunks: int) -> Any:
    return workflow(SLOW.replace('["tick "]', "[" + ", ".join(['"tick "'] * chunks) + "]"))


def in_a_cell(cell: Callable[[], T]) -> T:
    """Call sync code the way a notebook does: from a coroutine, on a loop asyncio set no SIGINT handler for."""

    async def kernel() -> T:
        assert running_loop_module.running_loop() is asyncio.get_running_loop()
        return cell()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(kernel())
    finally:
        loop.close()


@pytest.fixture(autouse=True)
def warnings_not_yet_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running_loop_module, "_warned", set())


def context_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def assert_not_chained_to_the_loop_lookup(error: BaseException) -> None:
    for link in context_chain(error):
        assert not (isinstance(link, RuntimeError) and NO_LOOP in str(link)), f"chained to {link!r}"
    formatted = "".join(traceback.format_exception(error))
    assert NO_LOOP not in formatted
    assert "During handling of the above exception" not in formatted


# ---------------------------------------------------------------------------------------------------------
# results and events inside a running loop
# ---------------------------------------------------------------------------------------------------------


def test_run_in_a_running_loop_returns_the_result_and_delivers_every_event_from_a_worker_thread() -> None:
    recorder = StreamingRecorder()
    threads: set[str] = set()

    def spy(event: Any) -> None:
        threads.add(threading.current_thread().name)

    with pytest.warns(RuntimeWarning, match=r"pipeline_ex\.run\(\) was called inside a running event loop") as w:
        result = in_a_cell(lambda: pipeline_ex.run(workflow(TWO_STEPS), mock=True, on_event=[recorder, spy]))
    assert [str(m.message) for m in w] == [
        "pipeline_ex.run() was called inside a running event loop: the work runs on a worker thread and "
        "this loop is blocked until it ends; in async code, use 'await pipeline_ex.arun(...)'"
    ]
    assert w[0].filename == __file__  # it points at the caller's line
    assert result.status == "ok"
    assert result.steps["first"].text == "alpha beta" and result.steps["second"].text == "gamma"
    recorder.assert_complete()
    assert [d.step for d in recorder.dones] == ["first", "second"]
    assert threads == {"pipeline-ex-run"}


def test_the_warning_is_given_once_per_entry_point() -> None:
    with pytest.warns(RuntimeWarning):
        in_a_cell(lambda: pipeline_ex.run(workflow(TWO_STEPS), mock=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = in_a_cell(lambda: pipeline_ex.run(workflow(TWO_STEPS), mock=True))
    assert result.steps["second"].text == "gamma"


def test_run_without_a_loop_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pipeline_ex.run(workflow(TWO_STEPS), mock=True)
    assert result.steps["first"].text == "alpha beta"


def test_the_run_sees_the_callers_context_variables() -> None:
    seen = StreamingRecorder()

    def cell() -> Any:
        with deliver_everything_to(seen):
            return pipeline_ex.run(workflow(TWO_STEPS), mock=True)

    with pytest.warns(RuntimeWarning):
        in_a_cell(cell)
    assert [d.step for d in seen.dones] == ["first", "second"]
    seen.assert_complete()


def test_stream_in_a_running_loop_yields_the_events_and_one_done_per_step() -> None:
    def cell() -> list[Any]:
        return list(pipeline_ex.stream(workflow(TWO_STEPS), mock=True))

    with pytest.warns(RuntimeWarning, match=r"pipeline_ex\.stream\(\).*'await pipeline_ex\.astream\(\.\.\.\)'"):
        events = in_a_cell(cell)
    assert [type(e).__name__ for e in events] == ["Delta", "Delta", "Done", "Delta", "Done"]
    assert "".join(e.content for e in events if isinstance(e, Delta) and e.step == "first") == "alpha beta"


def test_invoke_in_a_running_loop_runs_a_step_that_needs_an_event_loop() -> None:
    seen: list[Any] = []

    async def async_handler(event: Any) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    def cell() -> Any:
        return pipeline_ex.invoke(prompt="hi", provider="mock", mock_response=["he", "llo"], on_event=async_handler)

    with pytest.warns(RuntimeWarning, match=r"pipeline_ex\.invoke\(\).*'await pipeline_ex\.ainvoke\(\.\.\.\)'"):
        result = in_a_cell(cell)
    assert result.text == "hello"
    assert [type(e).__name__ for e in seen] == ["Delta", "Delta", "Done"]


def test_a_sync_invoke_in_a_running_loop_runs_on_the_callers_thread_without_a_warning() -> None:
    threads: list[str] = []

    def cell() -> Any:
        return pipeline_ex.invoke(
            prompt="hi",
            provider="mock",
            mock_response="hello",
            on_event=lambda e: threads.append(threading.current_thread().name),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = in_a_cell(cell)
    assert result.text == "hello"
    assert set(threads) == {threading.current_thread().name}


# ---------------------------------------------------------------------------------------------------------
# errors: the run's own exception and traceback, never chained to the loop lookup
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_loop", [True, False], ids=["in_a_running_loop", "without_a_loop"])
def test_a_failing_run_raises_its_own_error_after_one_done(with_loop: bool) -> None:
    recorder = StreamingRecorder()

    def call() -> Any:
        return pipeline_ex.run(workflow(FAILING), mock=True, on_event=recorder)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ProviderError, match="error_after=2") as caught:
            in_a_cell(call) if with_loop else call()
    error = caught.value
    assert_not_chained_to_the_loop_lookup(error)
    assert [d.step for d in recorder.dones] == ["flaky"]
    assert recorder.dones[0].response.finish_reason == "error"
    assert error.done == recorder.dones[0]
    recorder.assert_complete()
    # the traceback runs from this test down into the run, whichever thread the run was on
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "call" in frames and "arun" in frames


@pytest.mark.parametrize("with_loop", [True, False], ids=["in_a_running_loop", "without_a_loop"])
def test_a_failing_invoke_on_its_own_loop_raises_its_own_error(with_loop: bool) -> None:
    dones: list[Done] = []

    def call() -> Any:
        return pipeline_ex.invoke(
            prompt="x",
            provider="mock",
            mock_response=["a ", "b ", "c"],
            error_after=1,
            timeout=30,  # a timeout makes the step run on an event loop of its own
            on_event=lambda e: dones.append(e) if isinstance(e, Done) else None,
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(StepError) as caught:
            in_a_cell(call) if with_loop else call()
    assert_not_chained_to_the_loop_lookup(caught.value)
    assert len(dones) == 1 and dones[0].response.finish_reason == "error"


def test_a_failing_stream_in_a_running_loop_yields_one_done_then_raises() -> None:
    events: list[Any] = []

    def cell() -> None:
        for event in pipeline_ex.stream(workflow(FAILING), mock=True):
            events.append(event)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ProviderError) as caught:
            in_a_cell(cell)
    assert_not_chained_to_the_loop_lookup(caught.value)
    assert [type(e).__name__ for e in events] == ["Delta", "Delta", "Done"]


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C (a notebook's "interrupt kernel") while a cell waits for its run
# ---------------------------------------------------------------------------------------------------------


def test_ctrl_c_while_a_cell_waits_cancels_the_run_delivers_its_done_and_raises_keyboard_interrupt() -> None:
    recorder = StreamingRecorder()
    first_delta = threading.Event()

    def on_event(event: Any) -> None:
        recorder.handle_event(event)
        if isinstance(event, Delta):
            first_delta.set()

    def interrupt() -> None:
        assert first_delta.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(KeyboardInterrupt):
            in_a_cell(lambda: pipeline_ex.run(slow_workflow(200), mock=True, on_event=on_event))
    interrupter.join()
    # the Done arrived before KeyboardInterrupt reached the cell, and the worker thread is gone
    assert [d.response.finish_reason for d in recorder.dones] == ["cancelled"]
    recorder.assert_complete()
    assert len(recorder.deltas) < 200
    assert not [t for t in threading.enumerate() if t.name == "pipeline-ex-run"]


# ---------------------------------------------------------------------------------------------------------
# a real notebook cell, through ipykernel
# ---------------------------------------------------------------------------------------------------------

NOTEBOOK_CELL = """
import asyncio, threading
import pipeline_ex
from pipeline_ex import Delta

loop = asyncio.get_running_loop()  # a Jupyter cell runs inside the kernel's event loop
result = pipeline_ex.run("wf.yaml", mock=True, default_handler="console")  # prints from the run's thread
print("run:", result.status, result.steps["first"].text, "|", result.steps["second"].text)
events = list(pipeline_ex.stream("wf.yaml", mock=True))
print("stream:", [type(e).__name__ for e in events])

async def collect(event):
    seen.append(type(event).__name__)

seen = []
step = pipeline_ex.invoke(prompt="hi", provider="mock", mock_response=["he", "llo"], on_event=collect)
print("invoke:", step.text, seen)
"""

FAILING_CELL = """
pipeline_ex.run("failing.yaml", mock=True)
"""

AWAITING_CELL = """
awaited = await pipeline_ex.arun("wf.yaml", mock=True)  # top-level await, as the README suggests
print("arun:", awaited.steps["second"].text)
"""


def test_a_notebook_cell_runs_a_workflow_through_ipykernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    (tmp_path / "wf.yaml").write_text(textwrap.dedent(TWO_STEPS).lstrip("\n"))
    (tmp_path / "failing.yaml").write_text(textwrap.dedent(FAILING).lstrip("\n"))
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(code) for code in (NOTEBOOK_CELL, FAILING_CELL, AWAITING_CELL)]
    )
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    first, failing, awaiting = (cell["outputs"] for cell in notebook.cells)
    text = "".join(o.get("text", "") for o in first if o["output_type"] == "stream" and o["name"] == "stdout")
    assert "run: ok alpha beta | gamma" in text
    # the console handler, called from the run's worker thread, printed into this cell
    assert text.startswith("alpha beta\ngamma\n"), text
    errors = "".join(o.get("text", "") for o in first if o["output_type"] == "stream" and o["name"] == "stderr")
    assert "first" in errors and "second" in errors
    assert "stream: ['Delta', 'Delta', 'Done', 'Delta', 'Done']" in text
    assert "invoke: hello ['Delta', 'Delta', 'Done']" in text
    assert not [o for o in first if o["output_type"] == "error"]
    # inside IPython a cell waiting for its run is expected: no warning
    assert "RuntimeWarning" not in "".join(o.get("text", "") for o in first)
    (error,) = [o for o in failing if o["output_type"] == "error"]
    assert error["ename"] == "ProviderError"
    assert "error_after=2" in error["evalue"]
    assert NO_LOOP not in "\n".join(error["traceback"])
    assert [o.get("text") for o in awaiting] == ["arun: gamma\n"]


INTERRUPTED_CELL = """
import pipeline_ex
from pipeline_ex import Done


def report(event):
    if isinstance(event, Done):
        print(f"\\nDONE {event.response.finish_reason}", flush=True)


pipeline_ex.run("slow.yaml", mock=True, on_event=report, default_handler="console")
"""

AFTERWARDS_CELL = """
import threading
print("threads:", sorted(t.name for t in threading.enumerate() if t.name.startswith("pipeline-ex")))
"""


def execute(client: Any, code: str, *, on_output: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run one cell; return its stdout text and the name of the error it raised, if any."""
    msg_id = client.execute(code)
    stdout: list[str] = []
    error: str | None = None
    while True:
        message = client.get_iopub_msg(timeout=60)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
            on_output("".join(stdout))
        elif kind == "error":
            error = content["ename"]
        elif kind == "status" and content["execution_state"] == "idle":
            return {"stdout": "".join(stdout), "error": error}


def test_interrupting_the_kernel_cancels_the_run_of_a_waiting_cell(tmp_path: Path) -> None:
    manager_module = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    (tmp_path / "slow.yaml").write_text(
        textwrap.dedent(SLOW.replace('["tick "]', '["tick "' + ', "tick "' * 199 + "]"))
    )
    manager, client = manager_module.start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    interrupted = threading.Event()

    def interrupt_once_streaming(stdout: str) -> None:
        if "tick tick" in stdout and not interrupted.is_set():
            interrupted.set()
            manager.interrupt_kernel()

    try:
        cell = execute(client, INTERRUPTED_CELL, on_output=interrupt_once_streaming)
        afterwards = execute(client, AFTERWARDS_CELL)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert interrupted.is_set()
    assert cell["error"] == "KeyboardInterrupt"
    # the step's Done came before KeyboardInterrupt reached the cell, and the run had not finished
    assert cell["stdout"].count("DONE ") == 1 and "DONE cancelled" in cell["stdout"], cell["stdout"]
    assert cell["stdout"].count("tick") < 200
    assert "\nDONE cancelled\n" in cell["stdout"]
    assert afterwards["error"] is None and "threads: []" in afterwards["stdout"]
