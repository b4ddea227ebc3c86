"""Durable runs on local files: checkpoints after each top-level step, and `pipeline-ex run --resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cli_kit import cli, cli_env

from pipeline_ex import RunFinished, StepStarted, arun, load_workflow
from pipeline_ex.errors import StepError
from pipeline_ex.workflow.checkpoints import Checkpoint, FileCheckpoints, ResumeError

GATE = """
import os
from pathlib import Path

def count(ctx, name):
    with open(Path(os.environ["CALLS"]), "a") as calls:
        calls.write(name + "\\n")
    return {"n": len(name)}

def gate(ctx):
    if not Path(os.environ["GATE"]).exists():
        raise RuntimeError("the gate is closed")
    return "open"

class Opaque:
    pass

def opaque(ctx):
    count(ctx, "opaque")
    return Opaque()
"""

THREE_STEPS = """
workflow:
  name: three
  inputs:
    topic: {type: string}
  steps:
    - {id: first, type: python, callable: gate_steps.count, args: {name: first}}
    - {id: draft, prompt: "Write about {{ inputs.topic }} ({{ steps.first.n }})"}
    - {id: gate, type: python, callable: gate_steps.gate}
    - {id: final, prompt: "Polish {{ steps.draft.text }} now that it is {{ steps.gate }}"}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "gate_steps.py").write_text(GATE, encoding="utf-8")
    (tmp_path / "three.yaml").write_text(textwrap.dedent(THREE_STEPS), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("GATE", str(tmp_path / "gate-open"))
    sys.modules.pop("gate_steps", None)
    return tmp_path


def calls(project: Path) -> list[str]:
    path = project / "calls.txt"
    return path.read_text(encoding="utf-8").split() if path.exists() else []


class Lifecycle:
    """Collects every event of a run, lifecycle ones included."""

    lifecycle = True

    def __init__(self) -> None:
        self.events: list[Any] = []

    def handle_event(self, event: Any) -> None:
        self.events.append(event)


async def test_a_failed_run_continues_from_the_failed_step_without_running_the_earlier_ones(project: Path) -> None:
    loaded = load_workflow(project / "three.yaml", mock=True)
    store = FileCheckpoints(project / "out")
    first = Lifecycle()
    with pytest.raises(RuntimeError, match="the gate is closed"):
        await arun(loaded, {"topic": "rivers"}, mock=True, on_event=first, run_id="r1", checkpoints=store)
    saved = await store.load("r1")
    assert saved is not None
    assert (saved.status, saved.finished, saved.attempts) == (
        "failed",
        ["first", "draft"],
        {"first": 1, "draft": 1, "gate": 1},
    )
    assert saved.last_seq == first.events[-1].seq  # the RunFinished

    (project / "gate-open").touch()
    second = Lifecycle()
    result = await arun(loaded, mock=True, on_event=second, run_id="r1", checkpoints=store, resume=True)

    assert calls(project) == ["first"]  # step 1 ran once
    started = [(e.step, e.attempt) for e in second.events if isinstance(e, StepStarted)]
    assert started == [("gate", 2), ("final", 1)]
    seqs = [e.seq for e in second.events]
    assert seqs == sorted(seqs) and seqs[0] == first.events[-1].seq + 1  # the numbering goes on
    assert result.steps["draft"].text == "Mock reply to: Write about rivers (5)"  # restored, not re-run
    assert result.text.startswith("Mock reply to: Polish Mock reply to: Write about rivers (5)")
    assert result.values == {"first": {"n": 5}, "gate": "open"}
    finished = second.events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "ok"
    assert finished.usage is not None and finished.usage.total_tokens == sum(
        result.steps[s].response.usage.total_tokens for s in ("draft", "final")
    )  # the restored step's tokens count too
    assert await store.load("r1") is None  # a run that succeeded keeps no checkpoint
    assert not store.folder.exists()


async def test_resuming_checks_the_workflow_and_the_inputs(project: Path) -> None:
    loaded = load_workflow(project / "three.yaml", mock=True)
    store = FileCheckpoints(project / "out")
    with pytest.raises(RuntimeError):
        await arun(loaded, {"topic": "rivers"}, mock=True, run_id="r2", checkpoints=store)
    with pytest.raises(ResumeError, match="continues with the inputs it started with"):
        await arun(loaded, {"topic": "lakes"}, mock=True, run_id="r2", checkpoints=store, resume=True)
    (project / "gate-open").touch()
    same = await arun(loaded, {"topic": "rivers"}, mock=True, run_id="r2", checkpoints=store, resume=True)
    assert same.values["gate"] == "open"

    with pytest.raises(RuntimeError):  # again, with the gate closed, then change the file
        (project / "gate-open").unlink()
        await arun(loaded, {"topic": "rivers"}, mock=True, run_id="r3", checkpoints=store)
    (project / "three.yaml").write_text(textwrap.dedent(THREE_STEPS).replace("Polish", "Shine"), encoding="utf-8")
    changed = load_workflow(project / "three.yaml", mock=True)
    with pytest.raises(ResumeError, match=r"changed since run r3 started.*restore the file, or start a new run"):
        await arun(changed, mock=True, run_id="r3", checkpoints=store, resume=True)
    other = load_workflow(project / "three.yaml", mock=True)
    other.workflow.name = "another"
    with pytest.raises(ResumeError, match="is of workflow 'three', not 'another'"):
        await arun(other, mock=True, run_id="r3", checkpoints=store, resume=True)


async def test_a_resume_without_a_checkpoint_runs_from_the_start(project: Path) -> None:
    """What a worker does on a first delivery: `resume=True` and nothing saved yet."""
    (project / "gate-open").touch()
    store = FileCheckpoints(project / "out")
    result = await arun(
        project / "three.yaml", {"topic": "sea"}, mock=True, run_id="fresh", checkpoints=store, resume=True
    )
    assert calls(project) == ["first"] and result.values["gate"] == "open"
    with pytest.raises(Exception, match="needs checkpoints= and the run_id="):
        await arun(project / "three.yaml", {"topic": "sea"}, mock=True, resume=True)


GROUPS = """
workflow:
  name: groups
  steps:
    - id: pair
      parallel:
        - {id: left, prompt: "Left"}
        - {id: right, prompt: "Right"}
    - id: each
      for_each: "{{ ['a', 'b'] }}"
      as: letter
      steps:
        - {id: say, prompt: "Say {{ letter }}"}
    - id: again
      loop: {max_iterations: 2}
      steps:
        - {id: once, prompt: "Once"}
    - {id: skipped, prompt: "never", when: "{{ false }}"}
    - id: tag
      type: set
      vars: {mood: calm}
    - {id: gate, type: python, callable: gate_steps.gate}
    - id: last
      type: set
      vars:
        summary: >-
          {{ steps.left.text }}|{{ steps.pair.steps.right.text }}|{{ steps.each.items[1].say.text }}|{{
          steps.again.last.once.text }}|{{ steps.skipped.skipped }}|{{ vars.mood }}
"""


async def test_group_results_variables_and_skipped_steps_are_restored(project: Path) -> None:
    (project / "groups.yaml").write_text(textwrap.dedent(GROUPS), encoding="utf-8")
    loaded = load_workflow(project / "groups.yaml", mock=True)
    store = FileCheckpoints(project / "out")
    with pytest.raises(RuntimeError):
        await arun(loaded, mock=True, run_id="g", checkpoints=store)
    saved = json.loads((store.folder / "g.json").read_text(encoding="utf-8"))
    assert saved["finished"] == ["pair", "each", "again", "skipped", "tag"]
    (project / "gate-open").touch()
    resumed = Lifecycle()
    result = await arun(loaded, mock=True, run_id="g", checkpoints=store, resume=True, on_event=resumed)
    assert [e.step for e in resumed.events if isinstance(e, StepStarted)] == ["gate", "last"]
    expected = "Mock reply to: Left|Mock reply to: Right|Mock reply to: Say b|Mock reply to: Once|True|calm"
    assert result.vars == {"mood": "calm", "summary": expected}
    assert list(result.steps) == ["left", "right", "pair", "each", "again", "skipped"]  # as the first run had them


async def test_a_value_json_cannot_hold_keeps_the_checkpoint_before_its_step(project: Path) -> None:
    text = textwrap.dedent(THREE_STEPS).replace(
        "- {id: gate,", "- {id: thing, type: python, callable: gate_steps.opaque}\n    - {id: gate,"
    )
    (project / "opaque.yaml").write_text(text, encoding="utf-8")
    loaded = load_workflow(project / "opaque.yaml", mock=True)
    store = FileCheckpoints(project / "out")
    with pytest.raises(RuntimeError):
        await arun(loaded, {"topic": "fog"}, mock=True, run_id="o", checkpoints=store)
    saved = await store.load("o")
    assert saved is not None and saved.finished == ["first", "draft"]  # not past the opaque value
    (project / "gate-open").touch()
    resumed = Lifecycle()
    await arun(loaded, mock=True, run_id="o", checkpoints=store, resume=True, on_event=resumed)
    assert calls(project) == ["first", "opaque", "opaque"]  # the step whose value was not saved ran again
    assert next((e.step, e.attempt) for e in resumed.events if isinstance(e, StepStarted)) == ("thing", 2)


def test_a_checkpoint_file_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    store = FileCheckpoints(tmp_path)
    store.folder.mkdir()
    (store.folder / "x.json").write_text('{"format": 99}', encoding="utf-8")
    with pytest.raises(
        ResumeError,
        match=r"x\.json is not a readable checkpoint \(the checkpoint has format 99; this version reads 1\); delete it",
    ):
        store.read("x")
    (store.folder / "y.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ResumeError, match=r"y\.json is not a readable checkpoint"):
        store.read("y")
    with pytest.raises(ResumeError, match="is not a run id"):
        store.path("../escape")
    assert Checkpoint.from_json(Checkpoint("a", "w", "d", {}).to_json()) == Checkpoint("a", "w", "d", {})


# -- the command line ----------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=cwd, env=cli_env(PYTHONPATH=str(cwd)), timeout=timeout)  # the project's python steps


def test_run_resume_continues_a_run_that_failed_at_step_two(project: Path) -> None:
    failed = _cli("run", "three.yaml", "--mock", "-i", "topic=rivers", cwd=project)
    assert failed.returncode == 1
    hint = failed.stderr.strip().splitlines()
    line = next(text for text in hint if text.startswith("continue it with: "))
    command = line.removeprefix("continue it with: ").split()
    assert command[:4] == ["pipeline-ex", "run", "three.yaml", "--resume"]
    run_id = command[4]
    assert (project / "outputs" / ".checkpoints" / f"{run_id}.json").is_file()

    (project / "gate-open").touch()
    resumed = _cli("run", "three.yaml", "--mock", "--resume", run_id, "--json", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["run_id"] == run_id
    assert result["steps"]["final"]["text"].startswith("Mock reply to: Polish Mock reply to: Write about rivers")
    assert "[draft]" not in resumed.stderr  # the restored step printed nothing
    assert calls(project) == ["first"]
    assert not (project / "outputs" / ".checkpoints").exists()

    again = _cli("run", "three.yaml", "--mock", "--resume", run_id, cwd=project)
    assert again.returncode == 2
    assert f"no checkpoint of run {run_id} in outputs/.checkpoints" in again.stderr
    assert "keeps one until it succeeds" in again.stderr


def test_run_resume_with_other_inputs_is_a_usage_error(project: Path) -> None:
    failed = _cli("run", "three.yaml", "--mock", "-i", "topic=rivers", "--output-dir", "elsewhere", cwd=project)
    assert failed.returncode == 1
    assert "--output-dir elsewhere" in failed.stderr  # the hint repeats where the checkpoint is
    (run_id,) = [p.stem for p in (project / "elsewhere" / ".checkpoints").iterdir()]
    other = _cli(
        "run", "three.yaml", "--mock", "--resume", run_id, "-i", "topic=lakes", "--output-dir", "elsewhere", cwd=project
    )
    assert other.returncode == 2
    assert "continues with the inputs it started with" in other.stderr


SLOW = """
workflow:
  name: slow
  steps:
    - {id: first, type: python, callable: gate_steps.count, args: {name: first}}
    - id: long
      provider: mock
      prompt: "Go on"
      mock_response: ["one ", "two ", "three ", "four ", "five ", "six ", "seven ", "eight"]
      options: {delay_ms: 400}
    - {id: last, prompt: "End"}
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_resumes_from_the_interrupted_step(project: Path, stop: signal.Signals) -> None:
    (project / "slow.yaml").write_text(textwrap.dedent(SLOW), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(NO_COLOR="1", PYTHONPATH=str(project))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline_ex", "run", "slow.yaml", "--mock"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    folder = project / "outputs" / ".checkpoints"
    while time.monotonic() < deadline:  # wait until the long step has started
        found = list(folder.glob("*.json")) if folder.exists() else []
        if found and '"long": 1' in found[0].read_text(encoding="utf-8"):
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("the long step never started")
    process.send_signal(stop)
    _, err = process.communicate(timeout=30)
    assert process.returncode == (143 if stop == signal.SIGTERM else 130), err
    saved = json.loads(found[0].read_text(encoding="utf-8"))
    assert (saved["status"], saved["finished"]) == ("cancelled", ["first"])
    assert f"--resume {found[0].stem}" in err

    resumed = _cli("run", "slow.yaml", "--mock", "--resume", found[0].stem, "--json", cwd=project, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert calls(project) == ["first"]
    assert json.loads(resumed.stdout)["steps"]["last"]["text"] == "Mock reply to: End"


def test_a_step_error_is_reported_with_the_resume_hint(project: Path) -> None:
    text = textwrap.dedent(THREE_STEPS).replace(
        '- {id: draft, prompt: "Write', '- {id: draft, provider: mock, options: {error_after: 1}, prompt: "Write'
    )
    (project / "broken.yaml").write_text(text, encoding="utf-8")
    failed = _cli("run", "broken.yaml", "--mock", "-i", "topic=x", cwd=project)
    assert failed.returncode == 1, failed.stderr
    assert "step 'draft' failed" in failed.stderr and "--resume" in failed.stderr


async def test_a_failed_llm_step_restarts_as_attempt_two(project: Path) -> None:
    text = textwrap.dedent(THREE_STEPS).replace(
        '- {id: draft, prompt: "Write', '- {id: draft, provider: mock, options: {error_after: 1}, prompt: "Write'
    )
    (project / "broken.yaml").write_text(text, encoding="utf-8")
    store = FileCheckpoints(project / "out")
    with pytest.raises(StepError):
        await arun(project / "broken.yaml", {"topic": "x"}, mock=True, run_id="b", checkpoints=store)
    saved = await store.load("b")
    assert saved is not None and saved.attempts == {"first": 1, "draft": 1}


def test_a_folder_that_cannot_hold_checkpoints_warns_and_the_run_goes_on(project: Path) -> None:
    (project / "gate-open").touch()
    (project / "taken").write_text("a file", encoding="utf-8")
    result = _cli("run", "three.yaml", "--mock", "-i", "topic=ice", "--output-dir", "taken", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "warning: cannot keep a checkpoint in taken/.checkpoints (Not a directory)" in result.stderr
    assert "cannot be resumed: pass a writable --output-dir" in result.stderr
    assert result.stderr.count("cannot keep a checkpoint") == 1
