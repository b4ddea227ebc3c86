"""What steps produce, as templates and `RunResult.steps` see it.

- an LLM step: its `StepResult` (`.text`, `.response`, `.done`);
- a python step: the value its callable returned;
- a skipped step (`when:` was false): `SkippedResult`, which is false-y and has `.skipped`;
- a failed step under `on_error: continue`: `FailedResult`, with the error and any partial text;
- `parallel`: `ParallelResult` (its children also keep their own ids: `steps.<child>`);
- `for_each`: `ForEachResult`, `.items[i].<child>`;
- `loop`: `LoopResult`, `.iterations[i].<child>` and `.last.<child>`;
- a nested workflow: `NestedResult`, `.steps.<child>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SkippedResult:
    """A step whose `when:` was false. It is false-y, its text is empty, and `.skipped` is true."""

    step: str
    skipped: bool = True
    text: str = ""
    status: str = "skipped"

    def __bool__(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"status": "skipped"}


@dataclass(frozen=True)
class FailedResult:
    """A step that failed inside a group with `on_error: continue`; the group went on without it."""

    step: str
    error: str
    """The failure, as the error message reads."""
    error_type: str
    text: str = ""
    """The partial text of an LLM step."""
    skipped: bool = False
    status: str = "failed"

    def __bool__(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"status": "failed", "error": {"type": self.error_type, "message": self.error}, "text": self.text}


@dataclass
class ParallelResult:
    """The children of a `parallel` group, by id (each is also `steps.<child>`)."""

    steps: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def failed(self) -> list[str]:
        """The ids of the children that failed (with `on_error: continue`)."""
        return [key for key, value in self.steps.items() if isinstance(value, FailedResult)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: the children's ids (their results are listed under their own ids)."""
        return {"children": list(self.steps), "failed": self.failed}


@dataclass
class ForEachResult:
    """One mapping of child id -> result per item, in the items' order."""

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    @property
    def failed(self) -> list[int]:
        """The indexes of the items with a failed step (with `on_error: continue`)."""
        return [i for i, item in enumerate(self.items) if any(isinstance(v, FailedResult) for v in item.values())]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"items": [{key: result_json(value) for key, value in item.items()} for item in self.items]}


@dataclass
class LoopResult:
    """One mapping of child id -> result per iteration that ran; `last` is the latest one."""

    iterations: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""
    """`until` when the condition held, `max_iterations` when the loop ran out of iterations."""
    skipped: bool = False

    @property
    def last(self) -> dict[str, Any] | None:
        """The latest finished iteration's results (None before the first one finished)."""
        return self.iterations[-1] if self.iterations else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "iterations": [{key: result_json(value) for key, value in it.items()} for it in self.iterations],
            "stopped_by": self.stopped_by,
        }


@dataclass
class NestedResult:
    """The results of a nested workflow's steps, by id."""

    workflow: str
    steps: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def text(self) -> str:
        """The text of the nested workflow's last LLM step."""
        texts = [value.text for value in self.steps.values() if hasattr(value, "done")]
        return texts[-1] if texts else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"workflow": self.workflow, "steps": {key: result_json(value) for key, value in self.steps.items()}}


def result_json(value: Any) -> Any:
    """Any step's result as JSON: an LLM step's text, finish reason, usage and timing; a group's children.

    An LLM step's tool calls and validated `data` are included when it has them.
    """
    done = getattr(value, "done", None)
    if done is not None and hasattr(done, "response"):
        response = done.response
        summary = {
            "text": response.text,
            "finish_reason": response.finish_reason,
            "model": response.model,
            "provider": response.provider,
            "usage": response.usage.model_dump() if response.usage else None,
            "streamed": done.streamed,
            "ttft_ms": done.ttft_ms,
            "duration_ms": done.duration_ms,
        }
        if response.tool_calls:
            summary["tool_calls"] = [call.model_dump(mode="json") for call in response.tool_calls]
        if response.data is not None:
            summary["data"] = response.data
        return summary
    if isinstance(value, SkippedResult | FailedResult | ParallelResult | ForEachResult | LoopResult | NestedResult):
        return value.to_json()
    return jsonable(value)


def jsonable(value: Any) -> Any:
    """A python step's value (or a variable) as JSON; what JSON cannot hold is shown by its repr."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)
