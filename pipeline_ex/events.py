"""Typed stream events: what a step emits while it runs, and once when it ends.

Every step stream is a run of `Delta` events closed by exactly one `Done`. The models are frozen pydantic
v2 models, so they can be pattern matched, serialised to JSON and compared by value::

    match event:
        case Delta(content=text):
            print(text, end="")
        case Done(response=response):
            print(response.usage)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "error", "cancelled", "other"]
"""Why a step's generation ended, normalised across providers (the raw value stays in `Response.meta`)."""

ErrorType = Literal["provider", "truncated", "timeout", "handler", "cancelled", "step", "schema", "tool_rounds"]
"""The kind of failure recorded in `ErrorInfo.type`.

`step`: a python step, a template or a nested input failed; `schema`: the reply never matched the step's
`output_schema`; `tool_rounds`: the model still asked for tools after `max_tool_rounds` rounds.
"""

DeltaKind = Literal["text", "reasoning", "tool_call"]
"""What a Delta carries: reply text, reasoning text, or a fragment of a tool call's JSON arguments."""


def _none(value: Any) -> bool:
    return value is None


def _empty(value: Any) -> bool:
    return not value


# Fields that only some events use are left out of their JSON when unset, so a text Delta's SSE frame
# and a plain step's Done stay as small as they were before tool calls and structured output existed.


class _FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(_FrozenModel):
    """Token counts for one step, as the provider reported them; a count the provider omitted is None."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class ErrorInfo(_FrozenModel):
    """What went wrong in a step that did not finish normally."""

    type: ErrorType
    message: str
    exception: str | None = None
    """Qualified class name of the underlying exception, when there was one."""


class ToolCallInfo(_FrozenModel):
    """One tool call a step made, and what the tool returned (`Response.tool_calls`)."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str | None = None
    """The tool's result as the model saw it; None for a call left to the caller (a declared tool)."""
    error: bool = False
    """The tool raised (or did not exist): `result` is the error message the model was shown."""


class Response(_FrozenModel):
    """The final result of one step: the full text plus model, finish reason, usage and provider metadata."""

    text: str
    model: str | None = None
    provider: str
    finish_reason: FinishReason
    usage: Usage | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[ToolCallInfo] = Field(default_factory=list, exclude_if=_empty)
    """Every tool call of the step, in the order the model made them, over all its tool rounds."""
    data: Any = Field(default=None, exclude_if=_none)
    """The validated value of a step with an `output_schema` (None without one, or when it failed)."""


class Delta(_FrozenModel):
    """A piece of streamed output. `content` is never empty."""

    type: Literal["delta"] = "delta"
    content: str = Field(min_length=1)
    step: str
    run_id: str
    seq: int
    index: int = 0
    """For `tool_call` deltas, the call's position in its round (parallel calls stream side by side)."""
    kind: DeltaKind = "text"
    tool_call_id: str | None = Field(default=None, exclude_if=_none)
    """For `tool_call` deltas: the id of the call the fragment belongs to."""
    tool_name: str | None = Field(default=None, exclude_if=_none)
    """For `tool_call` deltas: the name of the tool being called."""


class ToolCall(_FrozenModel):
    """The model called a tool; its arguments are complete. Sent before the tool runs."""

    type: Literal["tool_call"] = "tool_call"
    step: str
    run_id: str
    seq: int
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResult(_FrozenModel):
    """A tool returned (or raised): what the model is shown next."""

    type: Literal["tool_result"] = "tool_result"
    step: str
    run_id: str
    seq: int
    id: str
    name: str
    result: str
    error: bool = False
    """The tool raised, or the model named a tool that does not exist; `result` is the message it sees."""


class Partial(_FrozenModel):
    """The structured reply of a step with an `output_schema`, parsed as far as it has streamed."""

    type: Literal["partial"] = "partial"
    step: str
    run_id: str
    seq: int
    data: Any
    attempt: int = 1
    """Which attempt the object belongs to: a repair attempt (`schema_retries`) starts a new object."""


class Done(_FrozenModel):
    """The last event of every step stream, on success, failure and cancellation alike."""

    type: Literal["done"] = "done"
    response: Response
    step: str
    run_id: str
    seq: int
    error: ErrorInfo | None = None
    streamed: bool = True
    ttft_ms: float | None = None
    duration_ms: float


Event = Delta | Done
"""The two events every step stream is made of (the guide's handlers need no others)."""

StepEvent = Delta | ToolCall | ToolResult | Partial | Done
"""Any event an LLM step emits: tool steps add `ToolCall`/`ToolResult`, `output_schema` steps `Partial`."""

StepKind = Literal["llm", "python", "set", "parallel", "for_each", "loop", "workflow"]
"""What kind of step a lifecycle event is about."""

StepStatus = Literal["ok", "skipped", "failed", "cancelled"]
"""How a step ended: `skipped` is a step whose `when:` was false."""

RunStatus = Literal["ok", "failed", "cancelled"]
"""How a run ended."""


class StepStarted(_FrozenModel):
    """A step of any kind (groups included) started; its `step` is the path its events carry."""

    type: Literal["step_started"] = "step_started"
    step: str
    run_id: str
    seq: int
    kind: StepKind
    attempt: int = 1
    """1 for the first run of the step; later attempts follow a redelivery."""


class StepFinished(_FrozenModel):
    """A step of any kind ended: after its `Done` for an LLM step, after all its children for a group."""

    type: Literal["step_finished"] = "step_finished"
    step: str
    run_id: str
    seq: int
    status: StepStatus
    duration_ms: float
    error: ErrorInfo | None = None
    """Why the step failed or was cancelled."""


class RunFinished(_FrozenModel):
    """The last event of a run, on success, failure and cancellation alike."""

    type: Literal["run_finished"] = "run_finished"
    run_id: str
    seq: int
    status: RunStatus
    usage: Usage | None = None
    """The tokens of every LLM step instance added up; None when no provider reported usage."""
    duration_ms: float = 0.0
    error: ErrorInfo | None = None
    """Why the run failed or was cancelled."""


LifecycleEvent = StepStarted | StepFinished | RunFinished
"""An event about a run's structure, which run-level observers receive when they ask for it."""

RunEvent = Delta | ToolCall | ToolResult | Partial | Done | StepStarted | StepFinished | RunFinished
"""Any event a run emits: its steps' events and its lifecycle events."""

EVENT_ADAPTER: TypeAdapter[RunEvent] = TypeAdapter(Annotated[RunEvent, Field(discriminator="type")])
"""Validates and parses events (lifecycle events too) from dicts or JSON, dispatching on the `type` field."""

LIFECYCLE_TYPES = (StepStarted, StepFinished, RunFinished)
"""The lifecycle event classes, for `isinstance` checks."""


class _SharedFieldsSet(set[str]):
    """The fields set every fast-path `Delta` shares, so building a Delta allocates no set.

    It is a `set` (pydantic's serializer requires one for `exclude_unset`), but mutating it would change
    every streamed Delta at once, so its mutators raise. Copies are plain sets: `copy.copy`,
    `copy.deepcopy`, `model_copy` (which adds the updated names to the copy's set) and pickle each give
    the copy a fields set of its own, as they do for any pydantic model.
    """

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "the fields set of a streamed Delta is shared by every streamed Delta; "
            "copy it first (set(delta.model_fields_set)) or copy the Delta (delta.model_copy())"
        )

    add = discard = remove = pop = clear = update = _refuse  # type: ignore[assignment]
    intersection_update = difference_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse  # type: ignore[assignment]

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, object]) -> set[str]:
        return set(self)

    def __reduce__(self) -> tuple[type[set[str]], tuple[list[str]]]:
        return set, (list(self),)


_DELTA_FIELDS_SET = _SharedFieldsSet(("content", "step", "run_id", "seq", "kind"))
"""What `Delta(content=..., step=..., run_id=..., seq=..., kind=...)` reports as explicitly set."""
_DELTA_TEMPLATE: dict[str, Any] = {
    "type": "delta",
    "content": "",
    "step": "",
    "run_id": "",
    "seq": 0,
    "index": 0,
    "kind": "text",
    "tool_call_id": None,
    "tool_name": None,
}
"""A streamed Delta's `__dict__`, in field order, that `new_delta` copies and fills in."""
_copy_dict = dict.copy
_new_object = object.__new__
_set = object.__setattr__
# pydantic keeps these in __slots__; their descriptors' __set__ skips the attribute lookup per call.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def new_delta(content: str, step: str, run_id: str, seq: int, kind: DeltaKind = "text") -> Delta:
    """Build a `Delta` from parts the framework already checked, without re-validating them.

    The bridge creates one Delta per streamed chunk; validation (or `model_construct`, which is slower
    still) would cost more than the rest of the delivery. The result behaves as
    `Delta(content=..., step=..., run_id=..., seq=..., kind=...)` does: equal, same hash, same
    `model_fields_set`, and the same results from `model_copy`, `model_dump(exclude_unset=...)`,
    `model_dump_json`, copying and pickling. The one difference: its `model_fields_set` is shared by
    every streamed Delta and cannot be changed in place (copy it first). Callers must pass a non-empty
    `content`.
    """
    delta = _new_object(Delta)
    fields = _copy_dict(_DELTA_TEMPLATE)  # a copy keeps the template's layout: faster than a 9-key literal
    fields["content"] = content
    fields["step"] = step
    fields["run_id"] = run_id
    fields["seq"] = seq
    if kind != "text":
        fields["kind"] = kind
    _set(delta, "__dict__", fields)
    _set_fields_set(delta, _DELTA_FIELDS_SET)
    _set_extra(delta, None)
    _set_private(delta, None)
    return delta
