"""What `pipeline-ex run --json` prints on stdout: one JSON object, whether the run succeeded or not.

Every key is always there, so a script can read the object without checking which case it has:

- `ok`: true when the run succeeded;
- `run_id`, `workflow`: the run's id and workflow name (null when the run did not start, or the workflow
  did not load);
- `steps`, `values`, `vars`, `outputs`: as `RunResult.to_json()` gives them; after a failure, those of the
  top-level steps that finished (what `--resume` does not run again), from the run's checkpoint;
- `error`: null on success, else `type`, `message`, `step` (the failed step's id, or null), `run_id`,
  `resume` (the command that continues the run, or null) and `issues` (a workflow's problems, each with
  `file`, `line`, `column`, `key` and `message`; empty for other errors).

`error.type` is the failed step's kind of failure (`provider`, `truncated`, `timeout`, `handler`, `schema`,
`tool_rounds`, `step`), `cancelled` for a run interrupted or terminated, or, for a run that did not start:
`usage` (a bad argument), `workflow` (the file is not valid), `input` (an input is missing or has the wrong
type), `resume` (the run cannot be continued) or `provider` (a provider cannot be used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline_ex.errors import Issue
    from pipeline_ex.workflow.checkpoints import Checkpoint
    from pipeline_ex.workflow.runner import RunResult

_EMPTY_RESULTS: dict[str, Any] = {"steps": {}, "values": {}, "vars": {}, "outputs": {}}


def success_document(result: RunResult) -> dict[str, Any]:
    """The object for a run that succeeded: its results, `ok: true` and `error: null`."""
    return {"ok": True, **result.to_json(), "error": None}


def issues_json(issues: Sequence[Issue]) -> list[dict[str, Any]]:
    """A workflow's problems as JSON: where each is (file, line, column, key path) and what it is."""
    return [
        {
            "file": issue.location.file,
            "line": issue.location.line,
            "column": issue.location.column,
            "key": issue.location.key,
            "message": issue.message,
        }
        for issue in issues
    ]


def finished_results(checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The results of the top-level steps a checkpoint holds, as `RunResult.to_json()` gives them."""
    if checkpoint is None:
        return dict(_EMPTY_RESULTS)
    from pipeline_ex.workflow.result_codec import decode_result
    from pipeline_ex.workflow.runner import RunResult

    steps = {step_id: decode_result(data) for step_id, data in checkpoint.steps.items()}
    result = RunResult(
        checkpoint.run_id,
        checkpoint.workflow,
        steps={step_id: steps[step_id] for step_id in checkpoint.shown if step_id in steps},
        values={step_id: steps[step_id] for step_id in checkpoint.values if step_id in steps},
        vars=dict(checkpoint.vars),
    )
    found = result.to_json()
    found["outputs"] = dict(checkpoint.outputs)
    return {key: found[key] for key in _EMPTY_RESULTS}


def failure_document(
    kind: str,
    message: str,
    *,
    step: str | None = None,
    run_id: str | None = None,
    workflow: str | None = None,
    resume: str | None = None,
    issues: Sequence[Issue] = (),
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """The object for a run that failed or did not start; `checkpoint` gives the finished steps' results."""
    from pipeline_ex.redaction import redact_text

    return {
        "ok": False,
        "run_id": run_id,
        "workflow": workflow,
        **finished_results(checkpoint),
        "error": {
            "type": kind,
            "message": redact_text(message),
            "step": step,
            "run_id": run_id,
            "resume": resume,
            "issues": issues_json(issues),
        },
    }


def unfinished_step(checkpoint: Checkpoint | None) -> str | None:
    """The top-level step a checkpoint has started but not finished (the one a failure stopped), if any."""
    if checkpoint is None:
        return None
    return next((step for step in reversed(checkpoint.attempts) if step not in checkpoint.finished), None)


__all__ = ["failure_document", "finished_results", "issues_json", "success_document", "unfinished_step"]
