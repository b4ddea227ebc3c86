"""Two runs writing the same `FileHandler` path at once: one writes the file, the other fails clearly.

A step holds an exclusive lock on its file while it writes (from its first event to its Done). A second
run that reaches the same file meanwhile gets `HandlerError` saying which file and to give each run its
own path; every handler of both runs still gets exactly one Done, and the file holds exactly one run's
text. Later steps of the same run still append to the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_ex import Done, HandlerError, StepResult, StreamingRecorder, arun, llm, run
from pipeline_ex.context import Context
from pipeline_ex.events import EVENT_ADAPTER, Event
from pipeline_ex.streaming.file import FileHandler, FileInUseError, JsonlFileHandler
from pipeline_ex.workflow import parse_workflow

pytestmark = pytest.mark.streaming

LOCKED = "is being written by another run"
ADVICE = "give each run its own path"
WINNER = [f"winner{i} " for i in range(6)]
LOSER = [f"loser{i} " for i in range(6)]


def one_done(recorder: StreamingRecorder) -> Done:
    """The recorder's only Done (it must be the last event of its only step)."""
    recorder.assert_complete()
    dones = [e for e in recorder.events if isinstance(e, Done)]
    assert len(dones) == 1
    return dones[0]


def assert_lost_to_the_lock(error: BaseException, path: Path, recorder: StreamingRecorder) -> None:
    """The loser failed with HandlerError naming the file, and its handlers got their Done."""
    assert isinstance(error, HandlerError), repr(error)
    assert isinstance(error.__cause__, FileInUseError)
    message = str(error)
    assert str(path) in message and LOCKED in message and ADVICE in message
    done = one_done(recorder)
    assert done is error.done
    assert done.error is not None and done.error.type == "handler"
    assert LOCKED in done.error.message


@pytest.mark.parametrize("handler_class", [FileHandler, JsonlFileHandler])
def test_two_threads_one_file_the_second_run_fails_and_the_file_holds_the_first(
    tmp_path: Path, handler_class: type[FileHandler]
) -> None:
    path = tmp_path / "shared.out"
    winner_writing = threading.Event()
    loser_finished = threading.Event()
    outcomes: dict[str, StepResult | BaseException] = {}
    recorders = {"winner": StreamingRecorder(), "loser": StreamingRecorder()}

    def hold_until_the_loser_finished(event: Event) -> None:
        # runs after the file handler wrote the winner's first delta, so the winner holds the lock
        winner_writing.set()
        loser_finished.wait(10)

    def invoke(name: str, chunks: list[str], *extra: Any) -> None:
        try:
            outcomes[name] = llm.invoke(
                prompt=name,
                provider="mock",
                mock_response=chunks,
                on_event=[handler_class(path), recorders[name], *extra],
                step=name,
            )
        except BaseException as error:
            outcomes[name] = error

    winner = threading.Thread(target=invoke, args=("winner", WINNER, hold_until_the_loser_finished))
    winner.start()
    assert winner_writing.wait(10)
    loser = threading.Thread(target=invoke, args=("loser", LOSER))
    loser.start()
    loser.join(10)
    loser_finished.set()
    winner.join(10)

    assert_lost_to_the_lock(outcomes["loser"], path, recorders["loser"])
    assert isinstance(outcomes["winner"], StepResult)
    assert one_done(recorders["winner"]).error is None
    if handler_class is FileHandler:
        assert path.read_text() == "".join(WINNER)
    else:
        events = [EVENT_ADAPTER.validate_json(line) for line in path.read_text().splitlines()]
        assert events == recorders["winner"].events


SHARED_WORKFLOW = """
workflow:
  name: shared
  inputs: {{who: {{default: someone}}}}
  steps:
    - id: write
      provider: mock
      prompt: "{{{{ inputs.who }}}} writes one two three four five"
      options: {{delay_ms: 25}}
      stream_handler: file
      stream_handler_options: {{path: "{path}"}}
"""


async def test_two_concurrent_tasks_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.txt"
    workflow = parse_workflow(SHARED_WORKFLOW.format(path=path), "shared.yaml")
    recorders = [StreamingRecorder(), StreamingRecorder()]
    outcomes = await asyncio.gather(
        *(arun(workflow, {"who": who}, on_event=r) for who, r in zip(("ada", "bob"), recorders, strict=True)),
        return_exceptions=True,
    )
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert len(failed) == 1, outcomes
    loser = failed[0]
    winner = 1 - loser
    assert_lost_to_the_lock(outcomes[loser], path, recorders[loser])  # type: ignore[arg-type]
    winner_done = one_done(recorders[winner])
    assert winner_done.error is None
    assert path.read_text() == winner_done.response.text
    assert ("ada", "bob")[winner] in path.read_text()


def test_later_steps_of_one_run_still_append(tmp_path: Path) -> None:
    path = tmp_path / "both.txt"
    text = f"""
workflow:
  name: two_steps
  defaults:
    provider: mock
    stream_handler: file
    stream_handler_options: {{path: "{path}"}}
  steps:
    - {{id: first, prompt: "p", mock_response: ["one\\n"]}}
    - {{id: second, prompt: "p", mock_response: ["two\\n"]}}
"""
    path.write_text("left over from an earlier run\n")
    run(parse_workflow(text, "two_steps.yaml"))
    assert path.read_text() == "one\ntwo\n"


def test_a_run_whose_file_another_run_rewrote_between_its_steps_fails(tmp_path: Path) -> None:
    path = tmp_path / "taken.txt"
    first_run, other_run = Context(), Context()
    llm.invoke(first_run, prompt="p", provider="mock", mock_response=["first "], on_event=FileHandler(path), step="a")
    llm.invoke(other_run, prompt="p", provider="mock", mock_response=["other"], on_event=FileHandler(path), step="x")
    recorder = StreamingRecorder()
    with pytest.raises(HandlerError) as caught:
        llm.invoke(
            first_run,
            prompt="p",
            provider="mock",
            mock_response=["second"],
            on_event=[FileHandler(path), recorder],
            step="b",
        )
    message = str(caught.value)
    assert str(path) in message and "another run wrote it after this run's previous step" in message
    assert ADVICE in message
    assert one_done(recorder).error is not None
    assert path.read_text() == "other"


def test_runs_that_append_one_after_another_share_the_file(tmp_path: Path) -> None:
    """`append=True` keeps what the file holds, including what another run wrote between this run's steps."""
    path = tmp_path / "shared.log"
    first_run, other_run = Context(), Context()
    for ctx, text, step in ((first_run, "first ", "a"), (other_run, "other ", "x"), (first_run, "second", "b")):
        recorder = StreamingRecorder()
        handlers = [FileHandler(path, append=True), recorder]
        llm.invoke(ctx, prompt="p", provider="mock", mock_response=[text], on_event=handlers, step=step)
        assert one_done(recorder).error is None
    assert path.read_text() == "first other second"


# -- two processes ---------------------------------------------------------------------------------------

PROBE_HANDLERS = """
import json
import os
import time

from pipeline_ex.streaming.file import FileHandler


class SharedFile(FileHandler):
    '''The built-in FileHandler on the path both runs share.'''

    def __init__(self) -> None:
        super().__init__(os.environ["SHARED_FILE"])


class Probe:
    '''Writes every event it gets to this run's own file; the winner waits for the release file.'''

    def handle_event(self, event) -> None:
        with open(os.environ["PROBE_FILE"], "a", encoding="utf-8") as out:
            out.write(event.model_dump_json() + "\\n")
        release = os.environ.get("WAIT_FOR")
        deadline = time.monotonic() + 60
        while release and event.type == "delta" and not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
"""

PROCESS_WORKFLOW = """
workflow:
  name: shared
  inputs: {who: {default: someone}}
  steps:
    - id: write
      provider: mock
      prompt: "{{ inputs.who }} writes one two three"
      stream_handler: [probe_handlers.SharedFile, probe_handlers.Probe]
"""


def _start(tmp_path: Path, who: str, **env_extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(SHARED_FILE=str(tmp_path / "shared.txt"), PROBE_FILE=str(tmp_path / f"{who}.jsonl"), **env_extra)
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("pipeline-ex")), "run", "shared.yaml", "--input", f"who={who}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _probe(tmp_path: Path, who: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / f"{who}.jsonl").read_text().splitlines()]


@pytest.mark.skipif(sys.platform == "win32", reason="file locks are taken with fcntl.flock")
def test_two_pipeline_ex_processes_one_file(tmp_path: Path) -> None:
    (tmp_path / "probe_handlers.py").write_text(textwrap.dedent(PROBE_HANDLERS), encoding="utf-8")
    (tmp_path / "shared.yaml").write_text(PROCESS_WORKFLOW, encoding="utf-8")
    shared, release = tmp_path / "shared.txt", tmp_path / "release"
    winner = _start(tmp_path, "ada", WAIT_FOR=str(release))
    try:
        deadline = time.monotonic() + 60
        while not (shared.exists() and shared.stat().st_size):  # the winner wrote its first delta
            assert winner.poll() is None, winner.communicate()
            assert time.monotonic() < deadline, "the first run never wrote its file"
            time.sleep(0.02)
        loser = _start(tmp_path, "bob")
        _, loser_err = loser.communicate(timeout=60)
    finally:
        release.touch()
        _, winner_err = winner.communicate(timeout=60)

    assert loser.returncode == 1, loser_err
    assert str(shared) in loser_err and LOCKED in loser_err and ADVICE in loser_err
    assert "HandlerError" in loser_err or "stream handler" in loser_err
    assert winner.returncode == 0, winner_err

    ada, bob = _probe(tmp_path, "ada"), _probe(tmp_path, "bob")
    for events, failed in ((ada, False), (bob, True)):
        dones = [e for e in events if e["type"] == "done"]
        assert len(dones) == 1 and events[-1] is dones[0]
        assert (dones[0]["error"] is not None) is failed
    assert bob[-1]["error"]["type"] == "handler" and LOCKED in bob[-1]["error"]["message"]
    assert shared.read_text() == ada[-1]["response"]["text"]
    assert shared.read_text().startswith("Mock reply to: ada writes")
