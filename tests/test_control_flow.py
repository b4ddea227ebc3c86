"""Control flow: parallel groups, for_each, loops, conditions and nested workflows, with lifecycle events.

Every run here is on the mock provider, and a `StreamingRecorder` given to the run checks the invariants
per LLM step instance (one Done, joined deltas equal its text, `seq` increasing over the whole run).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_ex import (
    Done,
    RunFinished,
    StepError,
    StepFinished,
    StepStarted,
    StreamingRecorder,
    WorkflowError,
    arun,
    astream,
    run,
)
from pipeline_ex.events import EVENT_ADAPTER
from pipeline_ex.workflow.loader import parse_workflow
from pipeline_ex.workflow.results import FailedResult, ForEachResult, LoopResult, NestedResult, SkippedResult

pytestmark = pytest.mark.streaming


def workflow(tmp_path: Path, body: str, name: str = "flow.yaml") -> Path:
    """Write a workflow file (the YAML under `steps:`, dedented) into `tmp_path`."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def starts(recorder: StreamingRecorder, kind: str | None = None) -> list[str]:
    return [e.step for e in recorder.lifecycle_events if isinstance(e, StepStarted) and kind in (None, e.kind)]


def finished(recorder: StreamingRecorder) -> dict[str, str]:
    return {e.step: e.status for e in recorder.lifecycle_events if isinstance(e, StepFinished)}


FAN_OUT = """\
workflow:
  name: fan
  inputs: {topics: {type: list, default: [alpha, beta, gamma]}}
  defaults: {provider: mock}
  steps:
    - id: outline
      prompt: Outline
      mock_response: [out, line]
    - id: views
      parallel:
        - {id: pros, prompt: "Pros of {{ steps.outline.text }}", mock_response: ["p1 ", p2], options: {delay_ms: 5}}
        - {id: cons, prompt: Cons, mock_response: ["c1 ", risk], options: {delay_ms: 5}}
    - id: sections
      for_each: "{{ inputs.topics }}"
      as: topic
      max_parallel: 2
      steps:
        - {id: draft, prompt: "Write about {{ topic }}", options: {delay_ms: 2}}
        - {id: title, prompt: "Title for {{ steps.draft.text }}"}
    - id: verdict
      when: "{{ 'risk' in steps.cons.text }}"
      prompt: "{{ steps.pros.text }} {{ steps.sections.items[1].draft.text | replace('Mock reply to: ', '') }}"
    - id: never
      when: "{{ 'nope' in steps.cons.text }}"
      prompt: never
    - id: after
      prompt: "{{ 'skipped' if steps.never.skipped else 'ran' }}"
"""


def test_results_of_every_kind_are_readable_in_templates_and_the_run_result(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    result = run(workflow(tmp_path, FAN_OUT), on_event=recorder)
    recorder.assert_complete()
    assert result.steps["pros"].text == "p1 p2"  # a parallel child keeps its own id
    assert result.steps["cons"].text == "c1 risk"
    sections = result.steps["sections"]
    assert isinstance(sections, ForEachResult)
    assert [item["draft"].text for item in sections.items] == [
        f"Mock reply to: Write about {t}" for t in ("alpha", "beta", "gamma")
    ]
    # inside the body, steps.draft is the current item's draft
    assert sections.items[2]["title"].text == "Mock reply to: Title for Mock reply to: Write about gamma"
    assert result.steps["verdict"].text == "Mock reply to: p1 p2 Write about beta"
    assert isinstance(result.steps["never"], SkippedResult) and not result.steps["never"]
    assert result.steps["after"].text == "Mock reply to: skipped"
    summary = result.to_json()
    assert summary["steps"]["sections"]["items"][0]["draft"]["text"] == "Mock reply to: Write about alpha"
    assert summary["steps"]["never"] == {"status": "skipped"}


def test_events_carry_step_paths_and_lifecycle_events_bracket_every_step(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    run(workflow(tmp_path, FAN_OUT), on_event=recorder)
    assert starts(recorder) == [
        "outline",
        "views",
        "pros",
        "cons",
        "sections",
        *starts(recorder)[5:11],  # items interleave with max_parallel 2; checked below
        "verdict",
        "never",
        "after",
    ]
    instance_paths = {e.step for e in recorder.events}
    assert {f"sections[{i}].{child}" for i in range(3) for child in ("draft", "title")} <= instance_paths
    assert sorted(starts(recorder)[5:11]) == sorted(f"sections[{i}].{c}" for i in range(3) for c in ("draft", "title"))
    statuses = finished(recorder)
    assert statuses["never"] == "skipped" and statuses["views"] == "ok" and statuses["sections"] == "ok"
    last = recorder.timeline[-1]
    assert isinstance(last, RunFinished) and last.status == "ok"
    assert last.usage is not None and last.usage.output_tokens == sum(
        d.response.usage.output_tokens
        for d in recorder.dones
        if d.response.usage  # type: ignore[misc]
    )
    # the group's StepFinished comes after every child's Done
    group_end = next(i for i, e in enumerate(recorder.timeline) if isinstance(e, StepFinished) and e.step == "views")
    child_dones = [i for i, e in enumerate(recorder.timeline) if isinstance(e, Done) and e.step in ("pros", "cons")]
    assert max(child_dones) < group_end
    seqs = [e.seq for e in recorder.timeline]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_steps_own_handler_gets_only_its_delta_and_done(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    body = """\
    - id: views
      parallel:
        - {id: a, provider: mock, prompt: A, stream_handler: recorder}
        - {id: b, provider: mock, prompt: B}
    """
    loaded = parse_workflow(textwrap.dedent(body), str(tmp_path / "own.yaml"), mock=True)
    seen: list[Any] = []
    run(loaded, mock=True, on_event=seen.append)  # a plain callable: no lifecycle events
    assert seen and all(e.type in ("delta", "done") for e in seen)
    run(loaded, mock=True, on_event=recorder)
    assert recorder.lifecycle_events  # a recorder asks for them


def test_lifecycle_true_gives_plain_callables_the_lifecycle_events(tmp_path: Path) -> None:
    seen: list[Any] = []
    run(workflow(tmp_path, FAN_OUT), on_event=seen.append, lifecycle=True)
    assert seen[0] == StepStarted(step="outline", run_id=seen[0].run_id, seq=1, kind="llm")
    assert isinstance(seen[-1], RunFinished)


async def test_astream_with_lifecycle_yields_them_in_order(tmp_path: Path) -> None:
    kinds = [event.type async for event in astream(workflow(tmp_path, FAN_OUT), lifecycle=True)]
    assert kinds[0] == "step_started" and kinds[-1] == "run_finished"
    assert kinds.count("run_finished") == 1


# -- failures --------------------------------------------------------------------------------------


def _failing_group(kind: str, on_error: str) -> str:
    """A group with one step that fails after its first chunk while its siblings are still streaming."""
    if kind == "parallel":
        return f"""\
        workflow:
          name: failing
          defaults: {{provider: mock}}
          steps:
            - id: group
              on_error: {on_error}
              parallel:
                - {{id: slow, prompt: slow, mock_response: [a, b, c, d, e, f, g, h], options: {{delay_ms: 40}}}}
                - {{id: broken, prompt: broken, mock_response: [x, y, z], options: {{error_after: 1, delay_ms: 5}}}}
            - {{id: later, prompt: later}}
        """
    return f"""\
    workflow:
      name: failing
      inputs: {{items: {{type: list, default: [0, 1, 2, 3]}}}}
      defaults: {{provider: mock}}
      steps:
        - id: group
          for_each: "{{{{ inputs.items }}}}"
          max_parallel: 4
          on_error: {on_error}
          steps:
            - id: work
              when: "{{{{ item != 1 }}}}"
              prompt: "item {{{{ item }}}}"
              mock_response: [a, b, c, d, e, f]
              options: {{delay_ms: 30}}
            - id: broken
              when: "{{{{ item == 1 }}}}"
              prompt: broken
              mock_response: [x, y, z]
              options: {{error_after: 1, delay_ms: 5}}
            - id: check
              prompt: "check {{{{ item }}}}"
        - {{id: later, prompt: later}}
    """


@pytest.mark.parametrize("kind", ["parallel", "for_each"])
def test_fail_fast_cancels_the_running_siblings_and_fails_the_run(tmp_path: Path, kind: str) -> None:
    path = workflow(tmp_path, _failing_group(kind, "fail_fast"))
    recorder = StreamingRecorder()
    with pytest.raises(StepError):
        run(path, on_event=recorder)
    recorder.assert_complete()
    reasons = sorted(d.response.finish_reason for d in recorder.dones)
    assert reasons.count("error") == 1 and "cancelled" in reasons  # the failure, and the siblings it stopped
    assert "later" not in {d.step for d in recorder.dones}
    run_end = recorder.timeline[-1]
    assert isinstance(run_end, RunFinished) and run_end.status == "failed"
    assert finished(recorder)["group"] == "failed"


@pytest.mark.parametrize("kind", ["parallel", "for_each"])
def test_continue_records_the_failure_and_finishes_the_others(tmp_path: Path, kind: str) -> None:
    path = workflow(tmp_path, _failing_group(kind, "continue"))
    recorder = StreamingRecorder()
    result = run(path, on_event=recorder)
    recorder.assert_complete()
    reasons = [d.response.finish_reason for d in recorder.dones]
    assert reasons.count("error") == 1 and "cancelled" not in reasons
    assert result.steps["later"].text == "Mock reply to: later"
    if kind == "parallel":
        broken = result.steps["broken"]
        assert isinstance(broken, FailedResult) and broken.text == "x" and broken.error_type == "provider"
        assert result.steps["slow"].text == "abcdefgh"
        assert result.steps["group"].failed == ["broken"]
    else:
        group = result.steps["group"]
        assert group.failed == [1]
        assert isinstance(group.items[1]["broken"], FailedResult)
        assert "check" not in group.items[1]  # the rest of a failed item does not run
        assert all("check" in group.items[i] for i in (0, 2, 3))
    assert isinstance(recorder.timeline[-1], RunFinished) and recorder.timeline[-1].status == "ok"


# -- concurrency -----------------------------------------------------------------------------------


class InFlight:
    """Counts LLM step instances between their StepStarted and StepFinished."""

    lifecycle = True

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.most = 0

    def handle_event(self, event: Any) -> None:
        if isinstance(event, StepStarted) and event.kind == "llm":
            self.running.add(event.step)
            self.most = max(self.most, len(self.running))
        elif isinstance(event, StepFinished):
            self.running.discard(event.step)


@pytest.mark.parametrize("max_parallel", [1, 3, 7])
def test_max_parallel_bounds_the_instances_in_flight(tmp_path: Path, max_parallel: int) -> None:
    body = f"""\
    workflow:
      name: bounded
      inputs: {{n: {{type: list, default: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}}}
      defaults: {{provider: mock}}
      steps:
        - id: each
          for_each: "{{{{ inputs.n }}}}"
          max_parallel: {max_parallel}
          steps:
            - {{id: work, prompt: "n {{{{ item }}}}", mock_response: [a, b, c], options: {{delay_ms: 10}}}}
    """
    counter = InFlight()
    recorder = StreamingRecorder()
    run(workflow(tmp_path, body), on_event=[counter, recorder])
    recorder.assert_complete()
    assert counter.most == max_parallel
    assert len(recorder.dones) == 10


HANDLERS = '''\
instances = []


class Tracker:
    """Remembers every instance that saw a Done, and the steps it saw."""

    def __init__(self):
        self.steps = set()

    def handle_event(self, event):
        self.steps.add(event.step)
        if event.type == "done":
            instances.append(self)
'''


def test_every_step_instance_gets_a_fresh_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tracking.py").write_text(HANDLERS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    body = """\
    workflow:
      name: fresh
      defaults: {provider: mock, stream_handler: tracking.Tracker}
      steps:
        - id: each
          for_each: [1, 2, 3]
          max_parallel: 3
          steps:
            - {id: work, prompt: "n {{ item }}"}
        - id: again
          loop: {max_iterations: 2}
          steps:
            - {id: step, prompt: again}
    """
    run(workflow(tmp_path, body))
    import tracking  # type: ignore[import-not-found]

    assert len(tracking.instances) == 5
    assert len({id(handler) for handler in tracking.instances}) == 5
    assert sorted(next(iter(h.steps)) for h in tracking.instances) == [
        "again[0].step",
        "again[1].step",
        "each[0].work",
        "each[1].work",
        "each[2].work",
    ]
    assert all(len(h.steps) == 1 for h in tracking.instances)


async def test_cancelling_mid_fan_out_gives_every_started_instance_one_cancelled_done(tmp_path: Path) -> None:
    body = """\
    workflow:
      name: cancel
      defaults: {provider: mock}
      steps:
        - id: each
          for_each: [1, 2, 3, 4, 5, 6]
          max_parallel: 3
          steps:
            - {id: work, prompt: "n {{ item }}", mock_response: [a, b, c, d, e, f, g, h], options: {delay_ms: 20}}
        - {id: later, prompt: later}
    """
    recorder = StreamingRecorder()
    before = asyncio.all_tasks()
    stream = astream(workflow(tmp_path, body), on_event=recorder)
    deltas = 0
    async for event in stream:
        deltas += event.type == "delta"
        if deltas == 5:
            break
    await stream.aclose()
    recorder.assert_complete()
    started = starts(recorder, "llm")
    assert len(started) == 3  # the other items never started
    assert sorted(d.step for d in recorder.dones) == sorted(started)
    assert {d.response.finish_reason for d in recorder.dones} == {"cancelled"}
    assert finished(recorder)["each"] == "cancelled"
    assert isinstance(recorder.timeline[-1], RunFinished) and recorder.timeline[-1].status == "cancelled"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()  # nothing leaked


def test_seq_strictly_increases_across_many_concurrent_instances(tmp_path: Path) -> None:
    body = """\
    workflow:
      name: many
      inputs: {n: {type: list}}
      defaults: {provider: mock}
      steps:
        - id: each
          for_each: "{{ inputs.n }}"
          max_parallel: 50
          steps:
            - id: views
              parallel:
                - {id: left, prompt: "left {{ item }}", options: {delay_ms: 1}}
                - {id: right, prompt: "right {{ item }}"}
    """
    recorder = StreamingRecorder()
    run(workflow(tmp_path, body), {"n": list(range(200))}, on_event=recorder)
    recorder.assert_complete()
    assert len(recorder.dones) == 400
    seqs = [e.seq for e in recorder.timeline]
    assert all(a < b for a, b in itertools.pairwise(seqs))


# -- loops and nested workflows --------------------------------------------------------------------

LOOP = """\
workflow:
  name: refine
  defaults: {provider: mock}
  steps:
    - {id: outline, prompt: outline}
    - id: refine
      loop: {until: "{{ 'APPROVED' in steps.refine.last.critique.text }}", max_iterations: 5}
      steps:
        - id: rewrite
          prompt: "Improve {{ steps.refine.last.rewrite.text if steps.refine.last else steps.outline.text }}"
        - id: critique
          prompt: "{{ 'APPROVED' if steps.refine.iterations | length >= 2 else 'again' }}"
    - {id: final, prompt: "Final {{ steps.refine.last.rewrite.text }}"}
"""


def test_a_loop_repeats_until_its_condition_holds(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    result = run(workflow(tmp_path, LOOP), on_event=recorder)
    recorder.assert_complete()
    refine = result.steps["refine"]
    assert isinstance(refine, LoopResult)
    assert len(refine.iterations) == 3 and refine.stopped_by == "until"
    assert [it["critique"].text for it in refine.iterations] == ["Mock reply to: again"] * 2 + [
        "Mock reply to: APPROVED"
    ]
    # iteration 1 read iteration 0's rewrite through steps.refine.last
    assert refine.iterations[1]["rewrite"].text.startswith("Mock reply to: Improve Mock reply to: Improve Mock")
    assert result.steps["final"].text.startswith("Mock reply to: Final Mock reply to: Improve")
    assert "refine[2].critique" in {d.step for d in recorder.dones}


def test_a_loop_stops_at_max_iterations(tmp_path: Path) -> None:
    result = run(workflow(tmp_path, LOOP.replace("max_iterations: 5", "max_iterations: 2")))
    assert len(result.steps["refine"].iterations) == 2
    assert result.steps["refine"].stopped_by == "max_iterations"


def test_a_nested_workflow_runs_as_one_step_with_its_own_inputs(tmp_path: Path) -> None:
    workflow(
        tmp_path,
        """\
        workflow:
          name: appendix
          inputs: {topic: {}, points: {type: list, default: []}}
          defaults: {provider: mock}
          steps:
            - {id: poem, prompt: "{{ inputs.topic }} {{ inputs.points | length }}"}
        """,
        "appendix.yaml",
    )
    main = workflow(
        tmp_path,
        """\
        workflow:
          name: main
          inputs: {topic: {default: rivers}}
          defaults: {provider: mock}
          steps:
            - {id: intro, prompt: "Intro {{ inputs.topic }}"}
            - id: appendix
              workflow: appendix.yaml
              inputs: {topic: "{{ inputs.topic }}!", points: "{{ [1, 2, 3] }}"}
            - {id: outro, prompt: "After {{ steps.appendix.steps.poem.text }}"}
        """,
    )
    recorder = StreamingRecorder()
    result = run(main, on_event=recorder)
    recorder.assert_complete()
    nested = result.steps["appendix"]
    assert isinstance(nested, NestedResult)
    assert nested.steps["poem"].text == "Mock reply to: rivers! 3"
    assert result.steps["outro"].text == "Mock reply to: After Mock reply to: rivers! 3"
    assert "appendix.poem" in {d.step for d in recorder.dones}
    assert finished(recorder)["appendix"] == "ok"


# -- loading checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "- id: g\n  parallel:\n    - {id: a, prompt: x}\n    - {id: b, prompt: '{{ steps.a.text }}'}\n",
            "template reads steps.a, but step 'a' runs at the same time (both are in parallel group 'g')",
        ),
        (
            (
                "- id: e\n"
                "  for_each: [1]\n"
                "  steps:\n"
                "    - {id: d, prompt: x}\n"
                "- {id: after, prompt: '{{ steps.d.text }}'}\n"
            ),
            "'d' runs once per item of for_each 'e': read steps.e.items[i].d",
        ),
        (
            (
                "- id: r\n"
                "  loop: {max_iterations: 2}\n"
                "  steps:\n"
                "    - {id: c, prompt: x}\n"
                "- {id: z, prompt: '{{ steps.c.text }}'}\n"
            ),
            "'c' runs once per iteration of loop 'r': read steps.r.last.c",
        ),
        (
            "- id: e\n  for_each: [1]\n  steps:\n    - {id: d, prompt: '{{ steps.e.items }}'}\n",
            "for_each 'e' is still running",
        ),
        ("- {id: a, prompt: x, when: 'maybe {{ 1 }}'}\n", "when: must be one expression"),
        ("- id: e\n  for_each: [1]\n  max_parallel: 0\n  steps: [{id: d, prompt: x}]\n", "max_parallel"),
        ("- id: e\n  for_each: [1]\n  max_parallel: 5000\n  steps: [{id: d, prompt: x}]\n", "max_parallel"),
        (
            "- id: e\n  for_each: [1]\n  steps: [{id: d, prompt: x, output_to_file: d.md}]\n",
            "would be written by every run of for_each 'e'",
        ),
        (
            "- id: e\n  for_each: [1]\n  steps: [{id: d, prompt: '{{ topic }}'}]\n",
            "template reads 'topic'; templates can use inputs, steps and vars, and here item",
        ),
        (
            "- id: g\n  parallel:\n    - {id: a, prompt: x}\n- {id: a, prompt: y}\n",
            "duplicate step id 'a' (first used by steps[0].parallel[0])",
        ),
        ("- id: g\n  parallel:\n    - {id: a, promt: x}\n", "unknown key 'promt' (did you mean 'prompt'?)"),
    ],
    ids=[
        "sibling",
        "body-outside",
        "loop-body-outside",
        "own-group",
        "when-text",
        "max-parallel-0",
        "max-parallel-huge",
        "same-file-per-item",
        "item-name",
        "duplicate-nested-id",
        "nested-typo",
    ],
)
def test_loading_checks_groups_before_any_call(body: str, message: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(body, "groups.yaml", mock=True)
    assert message in str(caught.value)
    assert "groups.yaml:" in str(caught.value)


def test_for_each_over_an_input_that_is_not_a_list_is_caught_at_load() -> None:
    text = (
        "workflow:\n"
        "  name: x\n"
        "  inputs: {topics: {}}\n"
        "  steps:\n"
        "    - id: e\n"
        "      for_each: '{{ inputs.topics }}'\n"
        "      steps: [{id: d, prompt: x}]\n"
    )
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "list.yaml", mock=True)
    assert "list.yaml:6" in str(caught.value)
    assert "input 'topics' is string; declare it with 'type: list'" in str(caught.value)


def test_for_each_over_a_value_that_is_not_a_list_fails_with_its_location(tmp_path: Path) -> None:
    body = (
        "workflow:\n"
        "  name: x\n"
        "  inputs: {n: {type: object, default: {a: 1}}}\n"
        "  defaults: {provider: mock}\n"
        "  steps:\n"
        "    - id: e\n"
        "      for_each: '{{ inputs.n.a }}'\n"
        "      steps: [{id: d, prompt: x}]\n"
    )
    with pytest.raises(WorkflowError) as caught:
        run(workflow(tmp_path, body))
    assert "flow.yaml:7" in str(caught.value) and "for_each needs a list, but it gave a number: 1" in str(caught.value)


def test_nested_workflows_are_checked_at_load(tmp_path: Path) -> None:
    workflow(
        tmp_path,
        "workflow:\n  name: child\n  inputs: {topic: {}}\n  steps:\n    - {id: poem, prompt: x}\n",
        "child.yaml",
    )
    workflow(tmp_path, "workflow:\n  name: bad\n  steps:\n    - {id: poem, prompt: '{{ inputs.topc }}'}\n", "bad.yaml")
    workflow(tmp_path, "- {id: back, workflow: parent.yaml}\n", "loop_b.yaml")
    parent = workflow(
        tmp_path,
        "- {id: a, workflow: child.yaml, inputs: {topik: x}}\n- {id: b, workflow: missing.yaml}\n"
        "- {id: c, workflow: loop_b.yaml}\n- {id: d, workflow: bad.yaml}\n",
        "parent.yaml",
    )
    with pytest.raises(WorkflowError) as caught:
        from pipeline_ex import load_workflow

        load_workflow(parent, mock=True)
    text = str(caught.value)
    assert "'child.yaml' has no input 'topik' (did you mean 'topic'?)" in text
    assert "needs the input 'topic', which is not given" in text
    assert "bad.yaml:4" in text and "inputs.topc" in text  # the nested file's own problem, at its own line
    assert "'bad.yaml' has 1 problem(s), listed below" in text
    assert "'missing.yaml' is not a file" in text
    assert "workflow files include each other in a loop (parent.yaml -> loop_b.yaml -> parent.yaml)" in text


def test_list_and_object_inputs_are_checked_when_the_run_starts(tmp_path: Path) -> None:
    from pipeline_ex.workflow.runner import InputError

    body = (
        "workflow:\n"
        "  name: x\n"
        "  inputs: {n: {type: list}, o: {type: object, default: {}}}\n"
        "  defaults: {provider: mock}\n"
        "  steps:\n"
        "    - {id: a, prompt: '{{ inputs.n | length }} {{ inputs.o }}'}\n"
    )
    path = workflow(tmp_path, body)
    assert run(path, {"n": '["a", "b"]', "o": {"k": [1]}}).steps["a"].text == "Mock reply to: 2 {'k': [1]}"
    with pytest.raises(InputError, match="input 'n' must be a list written as JSON"):
        run(path, {"n": "a, b"})
    with pytest.raises(InputError, match="input 'o' must be an object"):
        run(path, {"n": [], "o": [1]})


async def test_arun_with_a_default_handler_uses_it_for_steps_without_one(tmp_path: Path) -> None:
    recorder = StreamingRecorder()
    await arun(workflow(tmp_path, FAN_OUT), default_handler=recorder)
    assert {d.step for d in recorder.dones} >= {"outline", "pros", "sections[0].draft"}
    assert not recorder.lifecycle_events  # a step's handler sees only Delta and Done


def test_a_for_each_over_a_thousand_items_a_hundred_at_a_time_ends_with_a_thousand_dones(tmp_path: Path) -> None:
    body = """\
    workflow:
      name: thousand
      inputs: {n: {type: list}}
      steps:
        - id: each
          for_each: "{{ inputs.n }}"
          max_parallel: 100
          steps:
            - {id: draft, provider: mock, prompt: "n {{ item }}", mock_response: [a, b, c]}
    """
    recorder = StreamingRecorder()
    counter = InFlight()
    result = run(workflow(tmp_path, body), {"n": list(range(1000))}, on_event=[recorder, counter])
    recorder.assert_complete()
    assert len(recorder.dones) == 1000
    assert {d.step for d in recorder.dones} == {f"each[{i}].draft" for i in range(1000)}
    assert counter.most == 100
    assert [item["draft"].text for item in result.steps["each"].items] == ["abc"] * 1000


def test_ctrl_c_in_the_cli_gives_every_running_instance_its_cancelled_done(tmp_path: Path) -> None:

    events_file = tmp_path / "events.jsonl"
    body = f"""\
    workflow:
      name: interrupted
      defaults:
        provider: mock
        stream_handler: jsonl
        stream_handler_options: {{path: "{events_file}"}}
      steps:
        - id: views
          parallel:
            - {{id: left, prompt: l, mock_response: [a, b, c, d, e, f, g, h, i, j], options: {{delay_ms: 200}}}}
            - {{id: right, prompt: r, mock_response: [k, l, m, n, o, p, q, r, s, t], options: {{delay_ms: 200}}}}
        - id: each
          for_each: [1, 2]
          steps:
            - {{id: later, prompt: later}}
    """
    path = workflow(tmp_path, body)
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline_ex", "run", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both parallel steps have streamed something: interrupt them
        lines = events_file.read_text().splitlines() if events_file.exists() else []
        if {"left", "right"} <= {EVENT_ADAPTER.validate_json(line).step for line in lines}:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    events = [EVENT_ADAPTER.validate_json(line) for line in events_file.read_text().splitlines()]
    dones = [e for e in events if isinstance(e, Done)]
    assert sorted(d.step for d in dones) == ["left", "right"]  # one each; the for_each never started
    assert {d.response.finish_reason for d in dones} == {"cancelled"}
    for done in dones:
        text = "".join(e.content for e in events if e.type == "delta" and e.step == done.step)
        assert text and done.response.text == text
    assert "interrupted" in err


def test_the_cli_prints_each_concurrent_steps_text_whole_under_its_path(tmp_path: Path) -> None:

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_ex", "run", str(repo / "workflows" / "fan_out_report.yaml"), "--mock"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for path in ("pros", "cons", "sections[0].section", "sections[1].section", "sections[2].section"):
        header = f"── {path} ──\n"
        assert out.count(header) == 1, out
        body = out.split(header, 1)[1].split("\n", 1)[0]
        assert body.startswith("Mock reply to: "), body  # the whole reply on the line after its header
    assert "── outline ──" not in out and "── summary ──" not in out  # sequential steps stream as before
    assert (tmp_path / "outputs" / "sections" / "plants.md").is_file()
    assert "[sections[2].section] stop" in result.stderr


# -- every kind: skipped, cancelled mid-way, fresh handlers -------------------------------------------

SLOW = "mock_response: [a, b, c, d, e, f, g, h], options: {delay_ms: 25}"
KIND_BODIES = {
    "parallel": """\
- id: group
  WHEN
  parallel:
    - {id: one, prompt: one, SLOW}
    - {id: two, prompt: two, SLOW}
    - {id: three, prompt: three, SLOW}
""",
    "for_each": """\
- id: group
  WHEN
  for_each: [1, 2, 3]
  max_parallel: 2
  steps:
    - {id: one, prompt: "n {{ item }}", SLOW}
""",
    "loop": """\
- id: group
  WHEN
  loop: {max_iterations: 3}
  steps:
    - {id: one, prompt: again, SLOW}
""",
    "workflow": """\
- id: group
  WHEN
  workflow: child.yaml
""",
}
CHILD = f"- {{id: one, provider: mock, prompt: one, {SLOW}}}\n- {{id: two, provider: mock, prompt: two}}\n"


def _kind_workflow(tmp_path: Path, kind: str, when: str = "") -> Path:
    workflow(tmp_path, CHILD, "child.yaml")
    body = "workflow:\n  name: kinds\n  defaults: {provider: mock}\n  steps:\n"
    body += textwrap.indent(KIND_BODIES[kind].replace("WHEN", when or "type: " + kind).replace("SLOW", SLOW), "    ")
    body += "    - {id: after, prompt: after}\n"
    return workflow(tmp_path, body)


@pytest.mark.parametrize("kind", list(KIND_BODIES))
def test_a_group_whose_condition_is_false_is_skipped_whole(tmp_path: Path, kind: str) -> None:
    recorder = StreamingRecorder()
    result = run(_kind_workflow(tmp_path, kind, "when: false"), on_event=recorder)
    recorder.assert_complete()
    assert isinstance(result.steps["group"], SkippedResult) and result.steps["group"].skipped
    assert starts(recorder) == ["group", "after"]  # nothing inside it started
    assert finished(recorder)["group"] == "skipped"
    assert [d.step for d in recorder.dones] == ["after"]


@pytest.mark.parametrize("kind", list(KIND_BODIES))
async def test_cancelling_inside_any_kind_of_group_gives_every_started_instance_one_cancelled_done(
    tmp_path: Path, kind: str
) -> None:
    recorder = StreamingRecorder()
    before = asyncio.all_tasks()
    streaming = asyncio.Event()

    def on_event(event: Any) -> None:
        if len(recorder.deltas) >= 4:
            streaming.set()

    task = asyncio.ensure_future(arun(_kind_workflow(tmp_path, kind), on_event=[recorder, on_event]))
    await asyncio.wait_for(streaming.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorder.assert_complete()
    started = starts(recorder, "llm")
    assert started and sorted(d.step for d in recorder.dones) == sorted(started)
    assert all(d.response.finish_reason == "cancelled" for d in recorder.dones if d.step in started[-1:])
    assert "after" not in started
    assert finished(recorder)["group"] == "cancelled"
    assert isinstance(recorder.timeline[-1], RunFinished) and recorder.timeline[-1].status == "cancelled"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()


def test_max_parallel_bounds_a_parallel_group_too(tmp_path: Path) -> None:
    children = "\n".join(f"    - {{id: c{i}, provider: mock, prompt: c{i}, {SLOW}}}" for i in range(6))
    path = workflow(tmp_path, f"- id: group\n  max_parallel: 2\n  parallel:\n{children}\n")
    counter = InFlight()
    counter_steps = StreamingRecorder()
    run(path, mock=True, on_event=[counter, counter_steps])
    counter_steps.assert_complete()
    assert len(counter_steps.dones) == 6
    assert counter.most == 2


def test_parallel_children_and_nested_steps_get_fresh_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tracking2.py").write_text(HANDLERS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    workflow(
        tmp_path,
        "workflow:\n  name: child\n  defaults: {provider: mock, stream_handler: tracking2.Tracker}\n"
        "  steps:\n    - {id: poem, prompt: p}\n",
        "child.yaml",
    )
    body = """\
    workflow:
      name: fresh2
      defaults: {provider: mock, stream_handler: tracking2.Tracker}
      steps:
        - id: views
          parallel:
            - {id: a, prompt: a}
            - {id: b, prompt: b}
        - {id: nested, workflow: child.yaml}
    """
    run(workflow(tmp_path, body))
    import tracking2  # type: ignore[import-not-found]

    assert sorted(next(iter(h.steps)) for h in tracking2.instances) == ["a", "b", "nested.poem"]
    assert len({id(h) for h in tracking2.instances}) == 3


# -- edges ------------------------------------------------------------------------------------------


def test_an_observer_that_raises_at_the_end_does_not_replace_the_steps_own_failure(tmp_path: Path) -> None:
    class Breaks:
        lifecycle = True

        def handle_event(self, event: Any) -> None:
            if isinstance(event, StepFinished | RunFinished) and event.status == "failed":
                raise RuntimeError("observer broke")

    path = workflow(tmp_path, _failing_group("parallel", "fail_fast"))
    with pytest.raises(StepError) as caught:  # the provider's failure, not the observer's
        run(path, on_event=Breaks())
    assert caught.value.step == "broken"


async def test_an_async_observer_sees_seq_in_order_while_steps_run_at_once(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def observe(event: Any) -> None:
        seen.append(event)
        await asyncio.sleep(0)

    await arun(workflow(tmp_path, FAN_OUT), on_event=observe, lifecycle=True)
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert isinstance(seen[-1], RunFinished)


async def test_astream_gives_its_on_event_handlers_the_lifecycle_events_it_asks_for(tmp_path: Path) -> None:
    extra: list[Any] = []
    async for _ in astream(workflow(tmp_path, FAN_OUT), on_event=extra.append, lifecycle=True):
        pass
    assert extra[0].type == "step_started" and extra[-1].type == "run_finished"


def test_a_nested_workflow_in_a_for_each_writes_each_items_files_apart(tmp_path: Path) -> None:
    workflow(
        tmp_path,
        "workflow:\n  name: child\n  inputs: {t: {}}\n  defaults: {provider: mock}\n"
        "  steps:\n    - {id: poem, prompt: '{{ inputs.t }}', output_to_file: poem.md}\n",
        "child.yaml",
    )
    body = """\
    workflow:
      name: parent
      defaults: {provider: mock}
      steps:
        - id: each
          for_each: [rain, snow]
          max_parallel: 2
          steps:
            - {id: nested, workflow: child.yaml, inputs: {t: "{{ item }}"}}
    """
    out = tmp_path / "out"
    result = run(workflow(tmp_path, body), output_dir=out)
    assert (out / "each" / "0" / "nested" / "poem.md").read_text() == "Mock reply to: rain"
    assert (out / "each" / "1" / "nested" / "poem.md").read_text() == "Mock reply to: snow"
    assert set(result.outputs) == {"each[0].nested.poem", "each[1].nested.poem"}


def test_each_items_vars_are_its_own(tmp_path: Path) -> None:
    body = """\
    workflow:
      name: vars
      defaults: {provider: mock}
      steps:
        - id: each
          for_each: [a, b, c]
          max_parallel: 3
          steps:
            - {id: mine, type: set, vars: {name: "{{ item }}"}}
            - {id: slow, prompt: "{{ vars.name }}", options: {delay_ms: 5}}
            - {id: again, prompt: "{{ vars.name }}"}
    """
    result = run(workflow(tmp_path, body))
    assert [item["again"].text for item in result.steps["each"].items] == [f"Mock reply to: {t}" for t in "abc"]


def test_a_condition_written_as_a_block_scalar_is_one_expression(tmp_path: Path) -> None:
    body = (
        "workflow:\n  name: block\n  defaults: {provider: mock}\n  steps:\n"
        "    - id: a\n      when: |\n        {{ 1 == 1 }}\n      prompt: sure\n"
    )
    assert run(workflow(tmp_path, body)).steps["a"].text == "Mock reply to: sure"


def test_an_item_name_that_would_hide_a_template_root_is_refused() -> None:
    with pytest.raises(WorkflowError, match="as: 'steps' would hide the templates' own 'steps'"):
        parse_workflow("- id: e\n  for_each: [1]\n  as: steps\n  steps: [{id: d, prompt: x}]\n", "as.yaml", mock=True)
