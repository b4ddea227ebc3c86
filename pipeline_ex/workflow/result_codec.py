"""Step results as JSON and back, so a checkpoint can hold them and a resumed run can read them.

Every kind of result in `pipeline_ex.workflow.results` round-trips, groups with their children: an LLM
step's `StepResult` is kept as its whole `Done` (text, usage, tool calls, data), so what templates see in
a resumed run is what they saw before. A python step's value or a variable round-trips when it is JSON
(text, numbers, booleans, None, and lists and mappings with text keys of those); anything else raises
`NotStorable`, naming the value's type, because a lossy copy (its repr) would change what later steps see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import Done
from pipeline_ex.workflow.results import (
    FailedResult,
    ForEachResult,
    LoopResult,
    NestedResult,
    ParallelResult,
    SkippedResult,
)

_KIND = "$result"
"""The key that marks an encoded result (a python value that is a mapping is kept under `$value`)."""


class NotStorable(PipelineError):
    """A value that JSON cannot hold as it is (a python step returned an object, say)."""


def encode_result(value: Any) -> Any:
    """A step's result (or a python value) as JSON data.

    :raises NotStorable: for a value JSON cannot hold exactly.
    """
    from pipeline_ex.llm.step import StepResult

    if isinstance(value, StepResult):
        return {_KIND: "llm", "done": value.done.model_dump(mode="json")}
    if isinstance(value, SkippedResult):
        return {_KIND: "skipped", "step": value.step}
    if isinstance(value, FailedResult):
        return {_KIND: "failed", "step": value.step, "error": value.error, "type": value.error_type, "text": value.text}
    if isinstance(value, ParallelResult):
        return {_KIND: "parallel", "steps": _encode_map(value.steps)}
    if isinstance(value, ForEachResult):
        return {_KIND: "for_each", "items": [_encode_map(item) for item in value.items]}
    if isinstance(value, LoopResult):
        iterations = [_encode_map(iteration) for iteration in value.iterations]
        return {_KIND: "loop", "iterations": iterations, "stopped_by": value.stopped_by}
    if isinstance(value, NestedResult):
        return {_KIND: "workflow", "workflow": value.workflow, "steps": _encode_map(value.steps)}
    return {_KIND: "value", "value": encode_value(value)}


def encode_value(value: Any) -> Any:
    """A python value as JSON, exactly.

    :raises NotStorable: for anything but text, finite numbers, booleans, None, lists and text-keyed mappings.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotStorable(f"the number {value} is not JSON")
        return value
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise NotStorable("a mapping whose keys are not all text is not JSON")
        return {key: encode_value(item) for key, item in value.items()}
    raise NotStorable(f"a {type(value).__module__}.{type(value).__qualname__} is not JSON")


def _encode_map(results: Mapping[str, Any]) -> dict[str, Any]:
    return {key: encode_result(value) for key, value in results.items()}


def decode_result(data: Any) -> Any:
    """The result `encode_result` encoded."""
    from pipeline_ex.llm.step import StepResult

    kind = data[_KIND]
    if kind == "llm":
        return StepResult(Done.model_validate(data["done"]))
    if kind == "skipped":
        return SkippedResult(data["step"])
    if kind == "failed":
        return FailedResult(data["step"], data["error"], data["type"], data["text"])
    if kind == "parallel":
        return ParallelResult(steps=_decode_map(data["steps"]))
    if kind == "for_each":
        return ForEachResult(items=[_decode_map(item) for item in data["items"]])
    if kind == "loop":
        return LoopResult(iterations=[_decode_map(it) for it in data["iterations"]], stopped_by=data["stopped_by"])
    if kind == "workflow":
        return NestedResult(data["workflow"], steps=_decode_map(data["steps"]))
    if kind == "value":
        return data["value"]
    raise ValueError(f"unknown result kind {kind!r}")


def _decode_map(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: decode_result(value) for key, value in data.items()}
